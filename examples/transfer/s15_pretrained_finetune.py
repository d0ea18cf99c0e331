"""S11/S15 with real pretrained weights: ImageNet ResNet-18, a new 10-class head, a short finetune.

The seeds start from ``models.resnet50(pretrained=True)`` and replace ``fc`` (S11), then train the
new head (S15). Here torchvision's weights are asked for by name (``weights="DEFAULT"``; the seeds'
``pretrained=True`` means the same), downloaded once into ``$TORCH_HOME/hub/checkpoints``, SHA-256
checked and read by torchsmith's own reader (no pickle code runs). The backbone is frozen with its
BatchNorm statistics, the new head is trained for one epoch on scikit-learn's bundled digits,
prepared with the weights' own normalization, and the model is saved and reloaded from the file
alone.

Run: ``python examples/transfer/s15_pretrained_finetune.py`` (needs a network the first time;
with ``TORCHSMITH_OFFLINE=1`` the cached file is used or its expected place is named).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch


def digits(image_size: int, mean: list[float], std: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1,797 8x8 digits as 3-channel images of ``image_size``, normalized as the weights expect."""
    import numpy as np
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(np.asarray(d.images, dtype=np.float32) / 16.0).unsqueeze(1)
    x = torch.nn.functional.interpolate(
        x, size=(image_size, image_size), mode="bilinear", align_corners=False
    )
    x = (x.expand(-1, 3, -1, -1) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return x.contiguous(), torch.as_tensor(d.target, dtype=torch.long)


def main(weights: str = "DEFAULT", image_size: int = 64, epochs: int = 1, out: str | None = None) -> dict:
    import torchsmith
    from torchsmith.hub import weights_preprocessing

    torch.manual_seed(0)
    model = torchsmith.create_model("torchvision:resnet18", weights=weights)  # fetched once, verified
    pretrained = {k: v.clone() for k, v in model.state_dict().items()}
    source, pre = weights_preprocessing("torchvision:resnet18", weights)
    print(f"weights: {source} ({pre})")

    torchsmith.set_num_classes(model, 10)  # S11: a new head for the new task
    torchsmith.freeze(model, exclude="fc", bn_stats=True)  # S15: train the head, keep the features
    # The weights' resize/crop (256/224) suit photos; 8x8 digits are upsampled to image_size instead
    # (small, so this runs in seconds on a CPU). The normalization is the weights' own.
    x, y = digits(image_size, pre["mean"], pre["std"])
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, val = perm[360:], perm[:360]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(epochs):
        for i in range(0, len(train), 64):
            idx = train[i : i + 64]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        logits = model(x[val])
    val_acc = (logits.argmax(1) == y[val]).float().mean().item()
    print(f"held-out accuracy after {epochs} epoch(s) of the new head: {100 * val_acc:.1f}%")

    state = model.state_dict()
    unchanged = all(torch.equal(state[k], v) for k, v in pretrained.items() if not k.startswith("fc."))
    with tempfile.TemporaryDirectory() as tmp:
        path = torchsmith.save(model, Path(out or tmp) / "finetuned.safetensors")
        again = torchsmith.load_model(path).eval()  # rebuilt from the file: no download, no pickle
        with torch.no_grad():
            same = torch.equal(again(x[val]), logits)
    print(f"backbone bit-identical to the pretrained weights: {unchanged}; reloaded outputs equal: {same}")
    return {
        "source": source,
        "val_acc": val_acc,
        "backbone_unchanged": unchanged,
        "reloaded_equal": same,
        "model": model,
    }


if __name__ == "__main__":
    main()
