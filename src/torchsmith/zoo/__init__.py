"""The model zoo: every architecture the seeds describe, built from :mod:`torchsmith.blocks`."""

from torchsmith.zoo.registry import ModelEntry, create_model, get_entry, list_models, register_model

__all__ = ["ModelEntry", "create_model", "get_entry", "list_models", "register_model"]
