"""The class activation map (CAM) family: heat maps at a convolutional layer.

Every map here is ``ReLU(sum_k weight_k * A_k)`` (or an element-wise variant) over the layer's
channels ``A_k``; the methods differ only in the weights. ``g = d score / d A`` is the gradient
of the explained logit (the sum of a group's logits). At a layer followed only by global average
pooling and the linear classifier ``g`` is known in closed form (``W[target] / (H * W)``), so the
gradient methods run without a backward pass there (see :mod:`belka.explain.base`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .base import Context, Explainer, register, target_probabilities

_EPS = 1e-7


class GradientCAM(Explainer):
    """Shared body of the gradient CAMs: override :meth:`weights`."""

    gradients = "layer"
    fast_path = True

    def weights(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """N x C channel weights, or N x C x h x w element-wise weights."""
        raise NotImplementedError

    def channel_weights(self, acts: np.ndarray, g: np.ndarray) -> np.ndarray | None:
        """N x C weights when the gradient is the same at every position (``g``: N x C, the
        fast path), in NumPy; None to use :meth:`weights` on the expanded gradient."""
        return None

    def compute(self, ctx: Context) -> torch.Tensor:
        on_cpu = ctx.activations.device.type == "cpu"
        w = None
        if ctx.channel_gradient is not None and on_cpu:
            a = ctx.activations.detach().float().numpy()
            w = self.channel_weights(a, ctx.channel_gradient.float().numpy())
        if w is None:
            acts, grads = ctx.activations.float(), ctx.gradients.float()
            w = self.weights(acts, grads)
            if w.dim() != 2 or not on_cpu:
                cam = (torch.einsum("nc,nchw->nhw", w, acts) if w.dim() == 2
                       else (w * acts).sum(dim=1))
                return F.relu(cam)
            w = w.detach().numpy()
        # Channel weights on the CPU: NumPy's einsum (plain C loops: no BLAS or OpenMP threads
        # to wake beside ONNX Runtime's), the same call for the fast path and autograd, so
        # both sum in the same order (maps made of cancelling terms keep agreeing).
        a = ctx.activations.detach().float().numpy()
        cam = np.einsum("nc,nchw->nhw", np.ascontiguousarray(w, dtype=np.float32), a)
        return torch.from_numpy(np.maximum(cam, 0.0, dtype=np.float32))


@register("grad-cam")
class GradCAM(GradientCAM):
    """Grad-CAM: channel weights are the spatial mean of the gradient.

    Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
    Localization", ICCV 2017. ``ReLU(sum_k mean_ij(g_k) A_k)``.
    """

    name = "gradcam"
    title = "Grad-CAM"
    paper = "Selvaraju et al., ICCV 2017"

    def weights(self, acts, grads):
        return grads.mean(dim=(2, 3))

    def channel_weights(self, acts, g):
        return g


@register("grad-cam++", "gradcampp", "gradcamplusplus")
class GradCAMPlusPlus(GradientCAM):
    """Grad-CAM++: pixel-wise weighted positive gradients.

    Chattopadhay et al., "Grad-CAM++: Generalized Gradient-based Visual Explanations for Deep
    Convolutional Networks", WACV 2018. With the exponential of the score the second and third
    derivatives become powers of ``g``:
    ``alpha = g^2 / (2 g^2 + sum_ab(A_ab) g^3)`` (0 where ``g = 0``), and
    ``weight_k = sum_ij alpha_ij ReLU(g_ij)``. The common factor ``exp(score)`` is left out: it
    scales the whole map and normalisation removes it.
    """

    name = "gradcam++"
    title = "Grad-CAM++"
    paper = "Chattopadhay et al., WACV 2018"

    def weights(self, acts, grads):
        g2, g3 = grads.pow(2), grads.pow(3)
        denom = 2.0 * g2 + acts.sum(dim=(2, 3), keepdim=True) * g3
        alpha = torch.where(grads != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)),
                            torch.zeros_like(grads))
        return (alpha * F.relu(grads)).sum(dim=(2, 3))


@register("xgrad-cam", "axiom")
class XGradCAM(GradientCAM):
    """XGrad-CAM: gradients weighted by the normalised activations.

    Fu et al., "Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation of CNNs",
    BMVC 2020. ``weight_k = sum_ij(g_k A_k) / (sum_ij(A_k) + eps)``.
    """

    name = "xgradcam"
    title = "XGrad-CAM"
    paper = "Fu et al., BMVC 2020"

    def weights(self, acts, grads):
        return (grads * acts).sum(dim=(2, 3)) / (acts.sum(dim=(2, 3)) + _EPS)

    def channel_weights(self, acts, g):
        total = acts.sum(axis=(2, 3))
        return g * total / (total + _EPS)


@register("layer-cam")
class LayerCAM(GradientCAM):
    """LayerCAM: element-wise positive gradients times activations.

    Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for Localization",
    IEEE TIP 2021. ``ReLU(sum_k ReLU(g_k) * A_k)``.
    """

    name = "layercam"
    title = "LayerCAM"
    paper = "Jiang et al., IEEE TIP 2021"

    def weights(self, acts, grads):
        return F.relu(grads)

    def channel_weights(self, acts, g):
        return np.maximum(g, 0.0)


@register("hires-cam", "hirescam")
class HiResCAM(GradientCAM):
    """HiResCAM: element-wise gradient times activation, summed over channels.

    Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations of
    convolutional neural networks", arXiv:2011.08891, 2020. ``ReLU(sum_k g_k * A_k)``. At a
    layer followed only by global average pooling it equals Grad-CAM.
    """

    name = "hirescam"
    title = "HiResCAM"
    paper = "Draelos & Carin, arXiv:2011.08891"

    def weights(self, acts, grads):
        return grads

    def channel_weights(self, acts, g):
        return g


@register("score-cam")
class ScoreCAM(Explainer):
    """Score-CAM: channel weights from how well each channel alone, used as a mask, keeps the
    target's probability.

    Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural
    Networks", CVPR Workshops 2020. Each channel ``A_k`` is upsampled to the input grid and
    scaled to [0, 1] (``H_k``); the model sees ``x * H_k`` (in the model's units, so masked-out
    pixels become its zero input, mid-grey for belka's models); ``weight_k`` is the target's
    softmax probability on it (summed over a group), as in the authors' implementation; the map
    is ``ReLU(sum_k weight_k A_k)``. Channels that are zero everywhere are skipped (they add
    nothing). Costs one forward per active channel: ``internal_batch_size`` at a time, with a
    progress bar.
    """

    name = "scorecam"
    slow = True
    title = "Score-CAM"
    paper = "Wang et al., CVPR Workshops 2020"

    def compute(self, ctx: Context) -> torch.Tensor:
        acts = ctx.activations.float()
        n, c = acts.shape[:2]
        size = tuple(ctx.x.shape[-2:])
        weights = torch.zeros(n, c, device=acts.device)
        active = [torch.nonzero(acts[i].flatten(1).abs().amax(dim=1) > 0).flatten() for i in range(n)]
        step = self.internal_batch_size
        with self.bar(sum(len(a) for a in active), f"Score-CAM {n} image(s)") as bar:
            for i in range(n):
                channels = active[i]
                for start in range(0, len(channels), step):
                    chunk = channels[start:start + step]
                    up = F.interpolate(acts[i, chunk][:, None], size=size, mode="bilinear",
                                       align_corners=False)
                    lo = up.amin(dim=(2, 3), keepdim=True)
                    hi = up.amax(dim=(2, 3), keepdim=True)
                    span = hi - lo
                    masks = torch.where(span > 0, (up - lo) / torch.where(span > 0, span, 1.0),
                                        torch.zeros_like(up))
                    logits = self.logits(ctx.x[i:i + 1] * masks)
                    probs = target_probabilities(logits, [ctx.targets[i]] * len(chunk))
                    weights[i, chunk] = probs.to(weights.dtype)
                    bar.update(len(chunk))
        return F.relu(torch.einsum("nc,nchw->nhw", weights, acts))


@register("eigen-cam")
class EigenCAM(Explainer):
    """Eigen-CAM: the activations projected on their first principal component.

    Muhammad & Yeasin, "Eigen-CAM: Class Activation Map using Principal Components", IJCNN
    2020. The h*w x C matrix of activations is decomposed by SVD (not centred, as in the paper)
    and projected on its first right singular vector; the sign is chosen so the map sums to a
    positive value, then ReLU. Class-agnostic: the target only sets the reported label.
    """

    name = "eigencam"
    title = "Eigen-CAM"
    paper = "Muhammad & Yeasin, IJCNN 2020"

    def compute(self, ctx: Context) -> torch.Tensor:
        acts = ctx.activations.float()
        n, c, h, w = acts.shape
        maps = []
        for i in range(n):
            matrix = acts[i].reshape(c, h * w).T              # positions x channels
            _, _, vh = torch.linalg.svd(matrix, full_matrices=False)
            projection = matrix @ vh[0]
            if projection.sum() < 0:
                projection = -projection
            maps.append(F.relu(projection).reshape(h, w))
        return torch.stack(maps)
