"""``python -m torchsmith``, the same as the ``torchsmith`` command; what torchrun launches::

torchrun --standalone --nproc_per_node=2 -m torchsmith train recipe.yaml
torchrun --standalone --nproc_per_node=2 --no-python torchsmith train recipe.yaml   # same
"""

import sys

from torchsmith.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
