"""Run the torchsmith CLI with the tests' tiny models registered (for subprocess and torchrun tests)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _tiny  # noqa: F401  (registers the test models)

from torchsmith.cli.main import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
