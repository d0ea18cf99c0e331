"""MixUp/CutMix as batch transforms with soft targets (timm semantics), and the refusals around them."""

from __future__ import annotations

import math

import pytest
import torch
from _tiny import recipe

from torchsmith.errors import RecipeError
from torchsmith.training import train
from torchsmith.training.mixup import BatchMixer, soft_target_cross_entropy
from torchsmith.training.recipe import load_recipe

_BASE = {"name": "x", "model": {"name": "torchvision:resnet18"}}


@pytest.mark.parametrize(
    "item", ["MixUp", "CutMix", {"MixUp": {"alpha": 0.4}}, {"name": "CutMix", "alpha": 1.0}]
)
def test_mixup_in_per_sample_transforms_is_refused_with_the_way_to_do_it(item):
    with pytest.raises(RecipeError, match=r"data\.train_transforms\[0\].*batch transform.*train\.mixup"):
        load_recipe({**_BASE, "data": {"train_transforms": [item]}})


@pytest.mark.parametrize(
    ("mixup", "loss", "optimizer", "match"),
    [
        ({"mixup_alpha": 0, "cutmix_alpha": 0}, {}, {}, "both 0"),
        ({"prob": 1.5}, {}, {}, r"train\.mixup\.prob"),
        ({"label_smoothing": 1.0}, {}, {}, r"train\.mixup\.label_smoothing"),
        (True, {"name": "MSELoss"}, {}, "CrossEntropyLoss"),
        (True, {"args": {"label_smoothing": 0.1}}, {}, r"loss\.args\.label_smoothing"),
        (True, {}, {"name": "LBFGS"}, "LBFGS"),
    ],
)
def test_a_mixup_the_loop_cannot_honour_is_refused(mixup, loss, optimizer, match):
    r = {**_BASE, "train": {"mixup": mixup}, "loss": loss, "optimizer": optimizer}
    with pytest.raises(RecipeError, match=match):
        load_recipe(r)


def _mixer(**kw) -> BatchMixer:
    args = {"mixup_alpha": 1.0, "cutmix_alpha": 0.0, "prob": 1.0, "switch_prob": 0.5, "label_smoothing": 0.0}
    seed = kw.pop("seed", 0)
    return BatchMixer(**{**args, **kw}, seed=seed)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("alphas", [(1.0, 0.0), (0.0, 1.0), (0.8, 1.0), (0.2, 0.0)])
@pytest.mark.parametrize("shape", [(4, 3, 16, 16), (5, 1, 8, 12), (2, 3, 7, 5)])
def test_mixed_batches_and_soft_targets_agree(seed, alphas, shape):
    torch.manual_seed(seed)
    mixer = _mixer(mixup_alpha=alphas[0], cutmix_alpha=alphas[1], label_smoothing=0.1 * (seed % 3), seed=seed)
    x = torch.rand(shape)
    y = torch.randint(0, 7, (shape[0],))
    before = x.clone()
    mixed, lam = mixer(x, epoch=seed, index=3)
    assert torch.equal(x, before)  # the loader's batch is not changed in place
    assert 0.0 <= lam <= 1.0
    again, lam2 = mixer(x, epoch=seed, index=3)
    assert lam2 == lam and torch.equal(again, mixed)  # the same draw at the same place: resumable
    soft = mixer.targets(y, 7, lam)
    assert torch.allclose(soft.sum(dim=1), torch.ones(shape[0]))
    own = (x == mixed).flatten(1).float().mean(1)
    if alphas[1] > 0 and not torch.allclose(mixed, x * lam + x.flip(0) * (1 - lam)):
        # CutMix: lam is the share of each image's own pixels (where the partner's pixel differs)
        differs = (x != x.flip(0)).flatten(1).all(1)
        assert torch.allclose(own[differs], torch.full_like(own[differs], lam), atol=1e-6)
    else:
        assert torch.allclose(mixed, x * lam + x.flip(0) * (1 - lam), atol=1e-6)
    s = mixer.smoothing
    expect = torch.full((shape[0], 7), s / 7)
    expect[torch.arange(shape[0]), y] += 1 - s
    assert torch.allclose(soft, expect * lam + expect.flip(0) * (1 - lam), atol=1e-6)


def test_prob_zero_never_mixes_and_prob_one_always_does():
    x = torch.rand(4, 1, 8, 8)
    assert all(_mixer(prob=0.0)(x, epoch=0, index=i)[1] == 1.0 for i in range(20))
    assert all(_mixer(prob=1.0)(x, epoch=0, index=i)[1] < 1.0 for i in range(20))


@pytest.mark.parametrize("seed", range(4))
def test_soft_target_cross_entropy_is_torch_cross_entropy_on_probabilities(seed):
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(6, 5, generator=g)
    target = torch.softmax(torch.randn(6, 5, generator=g), 1)
    assert torch.allclose(
        soft_target_cross_entropy(out, target), torch.nn.functional.cross_entropy(out, target)
    )
    y = torch.randint(0, 5, (6,), generator=g)
    hard = _mixer(label_smoothing=0.0).targets(y, 5, 1.0)
    assert torch.allclose(soft_target_cross_entropy(out, hard), torch.nn.functional.cross_entropy(out, y))


@pytest.mark.parametrize("mixup", [{"mixup_alpha": 0.8}, {"mixup_alpha": 0.0, "cutmix_alpha": 1.0}])
def test_a_run_with_mixup_trains_and_measures_accuracy_on_hard_labels(tmp_path, mixup):
    r = recipe(
        data={"limit": 160, "batch_size": 32},
        train={"epochs": 2, "progress": False, "plot": False, "threads": 1, "mixup": mixup},
    )
    result = train(r, out=tmp_path / "run", log=None)  # was a crash with a tensor dump at step one
    last = result.history[-1]
    assert math.isfinite(last["train_loss"]) and 0.0 <= last["train_acc"] <= 1.0
    assert result.val_acc is not None and result.reloaded_acc == result.val_acc
