"""curves.png: loss, accuracy and learning rate per epoch, the best epoch marked.

The LR panel draws the LR of every optimizer step when the run recorded it (``lr_steps``, the
Trainer's ``lr_trace``: a warmup inside the first epoch shows), on the same epoch axis (step ``s``
runs from ``(s - 1) / steps_per_epoch``), and the LR set at each epoch's end (the next epoch's) as
points.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torchsmith._io import atomic_path

__all__ = ["plot_curves"]


def plot_curves(
    history: list[dict],
    path: str | Path,
    *,
    title: str | None = None,
    best_epoch: int | None = None,
    lr_steps: list | None = None,
    steps_per_epoch: int | None = None,
) -> Path | None:
    """Write a PNG of loss, accuracy and learning rate per epoch (matplotlib, Agg) atomically.

    Epoch ticks are integers; ``best_epoch`` (the epoch ``best.pt`` holds) gets a dashed line and a
    star on each curve; ``title`` (the run name) heads the figure. ``lr_steps`` (``[step, lr]``
    pairs) with ``steps_per_epoch`` adds the per-step LR line to the LR panel.
    """
    if not history:
        return None
    import matplotlib.pyplot as plt

    fig = _curves_figure(
        history, title=title, best_epoch=best_epoch, lr_steps=lr_steps, steps_per_epoch=steps_per_epoch
    )
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def _curves_figure(
    history: list[dict],
    *,
    title: str | None,
    best_epoch: int | None,
    lr_steps: list | None = None,
    steps_per_epoch: int | None = None,
) -> Any:
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
    per_step = bool(lr_steps) and bool(steps_per_epoch)
    if per_step:
        xs = [(s - 1) / steps_per_epoch for s, _ in lr_steps]  # step s runs from (s - 1) / spe on
        axes[2].plot(xs, [v for _, v in lr_steps], label="lr (per step)")
    if any(v is not None for v in lr):
        axes[2].plot(
            epochs,
            [math.nan if v is None else v for v in lr],
            marker="o",
            linestyle="none" if per_step else "-",
            label="lr (epoch end)",
        )
    shown = [v for v in lr if v is not None] + ([v for _, v in lr_steps] if per_step else [])
    if shown and all(v > 0 for v in shown):
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
