"""Importing this package registers every built-in zoo model (each module's ``@register_model`` runs)."""

from torchsmith.zoo.models import fpn, mlp, resnet, seed_resnet, simple_cnn, unet

__all__ = ["fpn", "mlp", "resnet", "seed_resnet", "simple_cnn", "unet"]
