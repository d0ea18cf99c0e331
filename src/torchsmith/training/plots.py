"""curves.png: loss, accuracy and learning rate per epoch, the best epoch marked."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torchsmith._io import atomic_path

__all__ = ["plot_curves"]


def plot_curves(
    history: list[dict], path: str | Path, *, title: str | None = None, best_epoch: int | None = None
) -> Path | None:
    """Write a PNG of loss, accuracy and learning rate per epoch (matplotlib, Agg) atomically.

    Epoch ticks are integers; ``best_epoch`` (the epoch ``best.pt`` holds) gets a dashed line and a
    star on each curve; ``title`` (the run name) heads the figure.
    """
    if not history:
        return None
    import matplotlib.pyplot as plt

    fig = _curves_figure(history, title=title, best_epoch=best_epoch)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def _curves_figure(history: list[dict], *, title: str | None, best_epoch: int | None) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    panels = (("loss", "loss", axes[0]), ("acc", "accuracy", axes[1]))
    for key, label, ax in panels:
        for split in ("train", "val"):
            values = [h.get(f"{split}_{key}") for h in history]
            if any(v is not None for v in values):
                ys = [math.nan if v is None else v for v in values]
                (line,) = ax.plot(epochs, ys, marker="o", label=split)
                if best_epoch in epochs:
                    y = ys[epochs.index(best_epoch)]
                    ax.plot([best_epoch], [y], marker="*", markersize=14, color=line.get_color())
        ax.set_ylabel(label)
    lr = [h.get("lr") for h in history]
    if any(v is not None for v in lr):
        axes[2].plot(epochs, [math.nan if v is None else v for v in lr], marker="o", label="lr (epoch end)")
        if all(v is None or v > 0 for v in lr):
            axes[2].set_yscale("log")
    axes[2].set_ylabel("learning rate")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if best_epoch in epochs:
            ax.axvline(
                best_epoch, color="0.5", linestyle="--", linewidth=1, label=f"best (epoch {best_epoch})"
            )
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
