"""Declarative model specs: YAML, JSON or a dict in, an ordinary ``nn.Module`` out.

>>> import torchsmith
>>> model = torchsmith.build_model("examples/specs/s1_mlp.yaml")          # doctest: +SKIP
>>> report = torchsmith.validate_spec("examples/specs/s10_unet.yaml")     # doctest: +SKIP

See ``docs/spec.md`` for the format.
"""

from torchsmith.spec.builder import build_model, build_with_report, validate_spec
from torchsmith.spec.graph import OPS, SpecDict, SpecGraph, SpecList
from torchsmith.spec.loader import Spec, load_spec
from torchsmith.spec.resolve import register_module, registered_modules

__all__ = [
    "OPS",
    "Spec",
    "SpecDict",
    "SpecGraph",
    "SpecList",
    "build_model",
    "build_with_report",
    "load_spec",
    "register_module",
    "registered_modules",
    "validate_spec",
]
