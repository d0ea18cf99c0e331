"""``train.mixup``: MixUp and CutMix as batch transforms with soft targets (timm's semantics).

Per training micro-batch, with probability ``prob``: MixUp (``x = lam * x + (1 - lam) * x.flip(0)``,
``lam ~ Beta(mixup_alpha, mixup_alpha)``) or CutMix (a box of ``x.flip(0)`` pasted into ``x``,
``lam ~ Beta(cutmix_alpha, cutmix_alpha)`` then corrected to the box's true area); with both alphas
set, CutMix is chosen with probability ``switch_prob``. Targets become
``lam * smooth(y) + (1 - lam) * smooth(y.flip(0))`` with ``label_smoothing`` folded in
(``smooth``: ``1 - s + s / C`` on the label, ``s / C`` elsewhere), and the loss is the soft-target
cross-entropy ``mean(sum(-target * log_softmax(output)))``. Accuracy is still measured on the hard
labels. Validation never mixes.

Why batch transforms and not entries of ``data.train_transforms``: they combine two samples and
their labels, and a dataset item is one sample with an integer label (torchvision's ``MixUp`` in a
per-sample pipeline crashes at the first batch).

The draws come from a generator seeded by ``(seed, epoch, batch index, rank)``, not from the global
RNG: a resumed run mixes exactly the batches an unbroken one does, and the mixing neither moves nor
depends on the other random draws of the run.

>>> import torch
>>> mixer = BatchMixer(mixup_alpha=1.0, cutmix_alpha=0.0, prob=1.0, switch_prob=0.5,
...                    label_smoothing=0.0, seed=0)
>>> x, y = torch.ones(4, 1, 2, 2), torch.tensor([0, 1, 2, 3])
>>> mixed, lam = mixer(x, epoch=0, index=0)
>>> mixer.targets(y, 4, lam).sum(dim=1)
tensor([1., 1., 1., 1.])
"""

from __future__ import annotations

import math
from typing import Any

from torchsmith.errors import RecipeError

__all__ = ["BatchMixer", "check_mixup", "soft_target_cross_entropy"]


def check_mixup(recipe: dict) -> None:
    """Refuse a ``train.mixup`` section the loop cannot honour, naming the field."""
    m = recipe["train"].get("mixup")
    if m is None:
        return
    for key in ("mixup_alpha", "cutmix_alpha"):
        if not (isinstance(m[key], (int, float)) and m[key] >= 0 and math.isfinite(m[key])):
            raise RecipeError(f"recipe field 'train.mixup.{key}': expected a number >= 0, got {m[key]!r}")
    if m["mixup_alpha"] == 0 and m["cutmix_alpha"] == 0:
        raise RecipeError(
            "recipe field 'train.mixup': mixup_alpha and cutmix_alpha are both 0, so nothing would be "
            "mixed; set one above 0 (timm: mixup_alpha 0.8, cutmix_alpha 1.0) or drop train.mixup"
        )
    for key in ("prob", "switch_prob"):
        if not 0.0 <= m[key] <= 1.0:
            raise RecipeError(f"recipe field 'train.mixup.{key}': must be in [0, 1], got {m[key]!r}")
    if not 0.0 <= m["label_smoothing"] < 1.0:
        raise RecipeError(
            f"recipe field 'train.mixup.label_smoothing': must be in [0, 1), got {m['label_smoothing']!r}"
        )
    loss = recipe["loss"]
    if loss["name"] != "CrossEntropyLoss" or loss["adapter"] != "classification":
        raise RecipeError(
            f"recipe field 'train.mixup': mixed batches have soft targets, trained with a soft-target "
            f"cross-entropy; loss.name must be CrossEntropyLoss (with the classification adapter), "
            f"got {loss['name']!r}"
        )
    if "label_smoothing" in loss["args"]:
        raise RecipeError(
            "recipe field 'loss.args.label_smoothing': with train.mixup the smoothing is folded into the "
            "mixed targets; set train.mixup.label_smoothing instead"
        )
    if recipe["optimizer"]["name"] == "LBFGS":
        raise RecipeError("recipe field 'train.mixup': LBFGS re-evaluates one fixed batch; drop train.mixup")


def soft_target_cross_entropy(output: Any, target: Any) -> Any:
    """``mean over the batch of sum(-target * log_softmax(output))`` (timm's SoftTargetCrossEntropy)."""
    import torch

    return torch.sum(-target * torch.log_softmax(output, dim=-1), dim=-1).mean()


class BatchMixer:
    """Mixes a batch and makes its soft targets; see the module docstring for what and why."""

    def __init__(
        self,
        *,
        mixup_alpha: float,
        cutmix_alpha: float,
        prob: float,
        switch_prob: float,
        label_smoothing: float,
        seed: int,
        rank: int = 0,
    ):
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.prob, self.switch_prob = float(prob), float(switch_prob)
        self.smoothing = float(label_smoothing)
        self.seed, self.rank = int(seed), int(rank)

    def _draw(self, epoch: int, index: int) -> tuple[float, bool, Any]:
        import numpy as np

        rng = np.random.default_rng([self.seed, epoch, index, self.rank, 0x6D69])
        lam, cutmix = 1.0, False
        if rng.random() < self.prob:
            if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
                cutmix = bool(rng.random() < self.switch_prob)
                alpha = self.cutmix_alpha if cutmix else self.mixup_alpha
            elif self.mixup_alpha > 0:
                alpha = self.mixup_alpha
            else:
                cutmix, alpha = True, self.cutmix_alpha
            lam = float(rng.beta(alpha, alpha))
        return lam, cutmix, rng

    def targets(self, y: Any, num_classes: int, lam: float) -> Any:
        """``lam * smooth(y) + (1 - lam) * smooth(y.flip(0))`` as float32 rows that sum to 1."""
        import torch

        off = self.smoothing / num_classes
        on = 1.0 - self.smoothing + off
        one = torch.full((y.shape[0], num_classes), off, dtype=torch.float32, device=y.device)
        one.scatter_(1, y.long().view(-1, 1), on)
        return one * lam + one.flip(0) * (1.0 - lam)

    def __call__(self, x: Any, *, epoch: int, index: int) -> tuple[Any, float]:
        """The mixed batch (a new tensor; ``x`` is not changed) and ``lam``, the weight of the
        batch's own labels (:meth:`targets` makes the soft targets once the class count is known)."""
        lam, cutmix, rng = self._draw(epoch, index)
        if lam == 1.0:
            return x, 1.0
        if cutmix:
            h, w = x.shape[-2], x.shape[-1]
            ratio = math.sqrt(1.0 - lam)
            ch, cw = int(h * ratio), int(w * ratio)
            cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
            y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
            x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
            mixed = x.clone()
            mixed[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)  # the box's true area (timm: correct_lam)
        else:
            mixed = x * lam + x.flip(0) * (1.0 - lam)
        return mixed, lam
