"""Pictures of a training run: the out-of-fold confusion matrix."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np


def plot_confusion(confusion: np.ndarray, labels: Sequence[str], path: str | os.PathLike,
                   title: str = "out-of-fold confusion (whole image)") -> Path:
    """The confusion matrix as a PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(labels)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2.5, 1.2 * k + 2))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(k), labels, rotation=30, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    top = confusion.max() if confusion.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(confusion[i, j]), ha="center", va="center",
                    color="white" if confusion[i, j] > top / 2 else "black")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
