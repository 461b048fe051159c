"""The optimisation loop both features share: Adam on a picture's parameters against an
objective, with a progress callback that can stop the work (by raising) and look at the
picture so far."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from .param import Picture

# progress(done, total, preview): called after every step; preview() gives the current
# picture(s) as N x H x W x 3 uint8. Raising from it stops the loop (the server's cancel).
Progress = Callable[[int, int, Callable[[], np.ndarray]], None]


def optimize(picture: Picture, loss_fn: Callable[[int, torch.Tensor], torch.Tensor], steps: int,
             *, lr: float, progress: Optional[Progress] = None, offset: int = 0,
             total: int | None = None) -> Picture:
    """``steps`` Adam steps on ``picture``'s parameters, minimising ``loss_fn(step, pixels)``.

    Gradients are taken with respect to the picture only (``backward(inputs=...)``), so the
    model's own parameters never accumulate gradients and the model can be shared. ``offset``
    and ``total`` place these steps in a longer run (multi-scale) for ``progress``.
    """
    params = [p for p in picture.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    total = total if total is not None else steps
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(step, picture())
        loss.backward(inputs=params)
        opt.step()
        picture.project()
        if progress is not None:
            progress(offset + step + 1, total, picture.to_uint8)
    return picture

