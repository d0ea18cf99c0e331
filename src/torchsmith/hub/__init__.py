"""Pretrained weights from the hubs users already use: explicit, cached, verified, read safely.

``create_model("torchvision:resnet50", weights="IMAGENET1K_V2")`` and
``create_model("timm:resnet50.a1_in1k", pretrained=True)`` come here; so do recipes'
``model: {name: ..., weights: ...}``. Files are downloaded to the standard caches
(``$TORCH_HOME/hub/checkpoints``, the Hugging Face cache) atomically and hash-checked, then read by
torchsmith's restricted reader. Nothing else in torchsmith downloads.
"""

from torchsmith.hub._fetch import (
    OfflineError,
    check_hash,
    download,
    is_offline,
    torch_hub_dir,
    weights_off,
)
from torchsmith.hub.pretrained import (
    create_pretrained,
    fetch_weights,
    rebuild_structure,
    verify_cache,
    weights_categories,
    weights_preprocessing,
)
from torchsmith.hub.sources import WeightsSource, list_weights, resolve_weights

__all__ = [
    "OfflineError",
    "WeightsSource",
    "check_hash",
    "create_pretrained",
    "download",
    "fetch_weights",
    "is_offline",
    "list_weights",
    "rebuild_structure",
    "resolve_weights",
    "torch_hub_dir",
    "verify_cache",
    "weights_categories",
    "weights_off",
    "weights_preprocessing",
]
