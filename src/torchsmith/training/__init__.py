"""Training recipes: one YAML file from a laptop CPU to many GPUs through torch.distributed.

>>> import torchsmith
>>> result = torchsmith.train()                      # the built-in digits finetune   # doctest: +SKIP
>>> torchsmith.evaluate(None, result.checkpoint)["val_acc"]                          # doctest: +SKIP
"""

from torchsmith.training.api import TrainResult, check_recipe, evaluate, predict, train
from torchsmith.training.callbacks import Callback, CheckpointInfo
from torchsmith.training.recipe import Recipe, default_recipe_path, load_recipe

__all__ = [
    "Callback",
    "CheckpointInfo",
    "Recipe",
    "TrainResult",
    "check_recipe",
    "default_recipe_path",
    "evaluate",
    "load_recipe",
    "predict",
    "train",
]
