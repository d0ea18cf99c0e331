"""Import-time truth: the first build in a FRESH interpreter works, for every kind of model name.

pytest imports torch before any test runs, which hid that importing torch inside the build sandbox
starts a program (a CUDA library probe) and was refused as the model's doing. These tests start
new interpreters, the way a user's first ``python -c`` does, and build each kind of name there
(zoo, ``torchvision:``, ``timm:``, ``hf:``, a spec, and a ``load_model`` rebuild), all at once in
parallel processes to keep the wall time near one interpreter's start-up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# name -> the program a user writes first; each prints the built module's class name.
_PROGRAMS = {
    "zoo": "m = torchsmith.create_model('resnet18', num_classes=3)",
    "torchvision": "m = torchsmith.create_model('torchvision:resnet50')",
    "timm": "m = torchsmith.create_model('timm:resnet18', num_classes=4)",
    "hf": "m = torchsmith.create_model('hf:vit-tiny/image-classification', num_hidden_layers=1)",
    "spec": (
        "m = torchsmith.build_model({'input_shape': [1, 3, 16, 16], 'chain': ["
        "{'type': 'torchvision:resnet18', 'num_classes': 5}]})"
    ),
    # the file is written by the pytest process (torch already imported there), read by a fresh one
    "load_model": "m = torchsmith.load_model(sys.argv[1] + '/m.safetensors')",
}


_CLASSES = {"hf": "ViTForImageClassification", "spec": "Sequential"}
_CLASSES = {kind: _CLASSES.get(kind, "ResNet") for kind in _PROGRAMS}


def _program(body: str) -> str:
    return "\n".join(
        [
            "import sys",
            "import torchsmith",
            "assert 'torch' not in sys.modules, 'import torchsmith must not import torch'",
            body,
            "print(type(m).__name__)",
        ]
    )


@pytest.fixture(scope="module")
def fresh_runs(tmp_path_factory):
    """Every program started at once in its own interpreter; name -> (exit code, stdout, stderr)."""
    env = {**os.environ, "TORCHSMITH_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    procs = {}
    for name, body in _PROGRAMS.items():
        folder = tmp_path_factory.mktemp(name)
        if name == "load_model":
            import torchsmith

            torchsmith.save(
                torchsmith.create_model("torchvision:resnet18", num_classes=3), folder / "m.safetensors"
            )
        procs[name] = subprocess.Popen(
            [sys.executable, "-c", _program(body), str(folder)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=folder,
        )
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=240)
        results[name] = (proc.returncode, out, err)
    return results


@pytest.mark.parametrize("kind", sorted(_PROGRAMS))
def test_first_build_in_a_fresh_interpreter(fresh_runs, kind):
    code, out, err = fresh_runs[kind]
    assert code == 0, f"{kind}: exit {code}\n{err[-3000:]}"
    assert "tried to" not in err
    assert out.strip().splitlines()[-1] == _CLASSES[kind], json.dumps(out)
