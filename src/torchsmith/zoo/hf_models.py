"""``hf:`` model names: Hugging Face transformers models built from a config, with random weights.

``hf:MODEL_TYPE`` builds ``transformers.AutoModel`` from ``AutoConfig.for_model(MODEL_TYPE, **kwargs)``
(``hf:vit``, ``hf:gpt2``, ``hf:bert``); ``hf:MODEL_TYPE/TASK`` picks the task head
(``hf:vit/image-classification``, ``hf:gpt2/causal-lm``). A few presets name small configs that
mirror timm/torchvision variants (``hf:vit-tiny`` is timm's ``vit_tiny_patch16_224``). Keyword
arguments override config fields. Nothing is downloaded: no ``from_pretrained`` is ever called.

>>> m = create_hf_model("vit-tiny/image-classification", {"num_hidden_layers": 1, "num_labels": 10})
>>> type(m).__name__, m.config.hidden_size, m.classifier.out_features
('ViTForImageClassification', 192, 10)
"""

from __future__ import annotations

from typing import Any

from torchsmith.errors import InputError

__all__ = ["HF_PRESETS", "HF_TASKS", "create_hf_model"]

#: task suffix -> the transformers Auto class that builds it
HF_TASKS = {
    "": "AutoModel",
    "image-classification": "AutoModelForImageClassification",
    "causal-lm": "AutoModelForCausalLM",
    "masked-lm": "AutoModelForMaskedLM",
    "sequence-classification": "AutoModelForSequenceClassification",
}

#: preset name -> (model_type, config fields). The ViT presets use timm's layer-norm eps (1e-6) so
#: the same weights compute the same function in both libraries.
HF_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "vit-tiny": (
        "vit",
        {
            "hidden_size": 192,
            "num_hidden_layers": 12,
            "num_attention_heads": 3,
            "intermediate_size": 768,
            "image_size": 224,
            "patch_size": 16,
            "layer_norm_eps": 1e-6,
            "num_labels": 1000,
        },
    ),
    "vit-small": (
        "vit",
        {
            "hidden_size": 384,
            "num_hidden_layers": 12,
            "num_attention_heads": 6,
            "intermediate_size": 1536,
            "layer_norm_eps": 1e-6,
            "num_labels": 1000,
        },
    ),
    "vit-base": ("vit", {"layer_norm_eps": 1e-6, "num_labels": 1000}),
}


def create_hf_model(name: str, kwargs: dict[str, Any] | None = None) -> Any:
    """Build ``hf:NAME`` (without the ``hf:`` prefix) with random weights; see the module doc."""
    try:
        import transformers
    except ImportError:  # pragma: no cover - transformers is an optional dependency
        raise InputError(f"hf:{name}: needs the transformers package (pip install transformers)") from None
    base, _, task = name.partition("/")
    if task not in HF_TASKS:
        raise InputError(
            f"hf:{name}: unknown task {task!r}; expected one of " + ", ".join(repr(t) for t in HF_TASKS if t)
        )
    model_type, fields = HF_PRESETS.get(base, (base, {}))
    fields = {**fields, **(kwargs or {})}
    try:
        config = transformers.AutoConfig.for_model(model_type, **fields)
    except ValueError:
        raise InputError(
            f"hf:{name}: {model_type!r} is not a transformers model type; use one such as 'vit', "
            f"'bert', 'gpt2', or a preset ({', '.join(HF_PRESETS)})"
        ) from None
    auto = getattr(transformers, HF_TASKS[task])
    try:
        return auto.from_config(config)
    except ValueError as e:
        raise InputError(f"hf:{name}: transformers cannot build this task for {model_type!r} ({e})") from None
