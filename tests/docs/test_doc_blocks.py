"""Every code block of README.md and docs/*.md runs as the user runs it: fresh processes, installed CLI.

One test per block (id ``docs/zoo.md:6``); see ``_docblocks.py`` for how a block is read and the
``<!-- docs-test: ... -->`` directives. Each block runs in its own temp folder holding the files
it names (made once per session by ``_MAKERS``: small real checkpoints in every format, a tiny
recipe, PNG digits, ``examples/``), with the network off (``TORCHSMITH_OFFLINE=1``, an empty
``TORCH_HOME``). Blocks run in a few background workers as soon as the first test needs them, so
the wall time is about the slowest blocks', not their sum.

Speed: a ``torchsmith train`` line gets ``--set train.epochs=1 --set data.limit=128`` appended
(``TRAIN_OVERRIDES``): the same command on fewer samples, not a different one. The
``recipe.yaml`` the blocks name is ``_TINY_RECIPE`` (the default's model on 128 digits).
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from _docblocks import ROOT, Block, all_blocks, expected_line, options_in, shell_steps

VENV_BIN = Path(sys.executable).parent
TRAIN_OVERRIDES = ["--set", "train.epochs=1", "--set", "data.limit=128"]
TIMEOUT_S = 300
BLOCKS = all_blocks()

_TINY_RECIPE = """\
name: digits
seed: 0
model: {name: torchvision:resnet18}
surgery:
  - {op: set_in_channels, in_channels: 1}
  - {op: set_num_classes, num_classes: 10}
data: {kind: digits, image_size: 16, channels: 1, val_fraction: 0.25, batch_size: 32, limit: 128}
optimizer: {name: AdamW, lr: 0.002}
train: {epochs: 1}
"""


def _state_dict(name: str):
    import torchvision

    return getattr(torchvision.models, name)().state_dict()


def _mlp():
    import torchsmith

    # the zoo's mlp with its registered input (784 features), so commands that run a sample forward
    # on a saved file (doctor, summary) fit it; small layers keep the files tiny
    return torchsmith.create_model("mlp", hidden=8, num_classes=3)


def _make(name: str, path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    import torchsmith

    path.parent.mkdir(parents=True, exist_ok=True)
    if name == "weights.pth":
        torch.save(_state_dict("resnet50"), path)
    elif name == "resnet50_imagenet.safetensors":
        save_file(_state_dict("resnet50"), path)
    elif name == "resnet18.safetensors":
        save_file(_state_dict("resnet18"), path)
    elif name == "r50.safetensors":
        torchsmith.save(torchsmith.create_model("torchvision:resnet50"), path)
    elif name.endswith((".pt", ".pth")):
        torch.save(_mlp().state_dict(), path)
    elif name.endswith(".ckpt"):
        torch.save({"state_dict": _mlp().state_dict(), "epoch": 3}, path)
    elif name.endswith(".safetensors"):
        torchsmith.save(_mlp(), path)
    elif name in ("recipe.yaml", "my_recipe.yaml"):
        path.write_text(_TINY_RECIPE)
    elif name == "my.yaml":
        shutil.copy(ROOT / "examples" / "specs" / "s1_mlp.yaml", path)
    elif name.endswith(".png") or name == "images":
        from PIL import Image
        from sklearn.datasets import load_digits

        digits = load_digits()
        targets = [path / f"{i}.png" for i in range(3)] if name == "images" else [path]
        for i, target in enumerate(targets):
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((digits.images[i] * 16).astype("uint8")).resize((32, 32)).save(target)
    else:  # pragma: no cover - a name in _MAKERS without a maker
        raise AssertionError(name)


# Files a block may name -> where it finds them (relative path in its folder). Names are matched
# as whole words in the block's text (and its directive).
_MAKERS = {
    "old_run/weights.pth": "weights.pth",
    "resnet50_imagenet.safetensors": "resnet50_imagenet.safetensors",
    "resnet18.safetensors": "resnet18.safetensors",
    "r50.safetensors": "r50.safetensors",
    "anything.pth": "anything.pth",
    "model.pth": "model.pth",
    "model.pt": "model.pt",
    "a.pt": "a.pt",
    "last.ckpt": "last.ckpt",
    "b.safetensors": "b.safetensors",
    "model.safetensors": "model.safetensors",
    "net.safetensors": "net.safetensors",
    "recipe.yaml": "recipe.yaml",
    "my_recipe.yaml": "my_recipe.yaml",
    "my.yaml": "my.yaml",
    "digit.png": "digit.png",
    "a.png": "a.png",
    "b.png": "b.png",
    "images": "images",
}
_MADE_LOCK = threading.Lock()


def _needs(block: Block) -> list[str]:
    text = block.text + (block.directive or "")
    return [n for n in _MAKERS if re.search(rf"(?<![\w.-]){re.escape(n)}(?![\w])", text)]


def _prepare(block: Block, cache: Path, folder: Path) -> None:
    folder.mkdir(parents=True)
    # the docs' commands run from the repository root: its examples/, bench/ and .venv/ (for
    # `.venv/bin/torchsmith ...` lines) are there, read-only
    for name in ("examples", "bench", ".venv"):
        if (ROOT / name).exists():
            (folder / name).symlink_to(ROOT / name)
    for rel in _needs(block):
        made = cache / _MAKERS[rel]
        with _MADE_LOCK:  # made once per session, by whichever block needs it first
            if not made.exists():
                _make(_MAKERS[rel], made)
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if made.is_dir():
            shutil.copytree(made, target)
        else:
            shutil.copy(made, target)  # a copy: a block may overwrite its files


def _env(folder: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        TORCH_HOME=str(folder / ".torch"),
        HF_HOME=str(folder / ".hf"),
        TORCHSMITH_OFFLINE="1",
        HF_HUB_OFFLINE="1",
        MPLBACKEND="Agg",
        OMP_NUM_THREADS="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.pop("PYTHONPATH", None)
    return env


def _shell(command: str, folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", command],
        cwd=folder,
        env=_env(folder),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def _with_overrides(command: str) -> str:
    words = command.split("#")[0].split()
    if len(words) > 1 and words[0].endswith("torchsmith") and words[1] == "train":
        return command.split("#")[0].rstrip() + " " + " ".join(TRAIN_OVERRIDES)
    return command


def _report(what: str, proc: subprocess.CompletedProcess) -> str:
    out, err = proc.stdout[-3000:], proc.stderr[-3000:]
    return f"{what}\nexit {proc.returncode}\n--- stdout\n{out}\n--- stderr\n{err}"


def run_block(block: Block, cache: Path, folder: Path) -> tuple[str, str]:
    """Run ``block`` in ``folder``; ``("ok", notes)``, ``("fail", why)`` or ``("skip", why)``."""
    if block.skip_reason:
        return "skip", block.skip_reason
    _prepare(block, cache, folder)
    if block.save_as:
        name, command = block.save_as
        (folder / name).write_text(block.text)
        proc = _shell(command, folder)
        return ("ok", "") if proc.returncode == 0 else ("fail", _report(command, proc))
    if block.lang == "python":
        (folder / "block.py").write_text(block.text)
        proc = subprocess.run(
            [sys.executable, "block.py"], cwd=folder, env=_env(folder), capture_output=True, text=True,
            timeout=TIMEOUT_S,
        )  # fmt: skip
        return ("ok", "") if proc.returncode == 0 else ("fail", _report(block.text, proc))
    if block.lang not in ("", "bash", "sh", "shell", "console"):
        return "fail", (
            f"{block.id}: a {block.lang!r} block with no directive; add '<!-- docs-test: save-as NAME; run "
            "COMMAND -->' or '<!-- docs-test: skip (why) -->' on the line before it"
        )
    notes = []
    for step in shell_steps(block):
        if step.kind == "skip":
            notes.append(f"line {step.line} not run: {step.skip}")
            continue
        if step.kind == "syntax":
            sub, opts = options_in(step.command)
            if sub is None:
                return "fail", (
                    f"{block.id}:{step.line}: looks like output or syntax, not a command; mark the block "
                    "'<!-- docs-test: skip (why) -->'"
                )
            proc = _shell(f"torchsmith {sub} --help", folder)
            if proc.returncode != 0:
                return "fail", _report(f"{block.id}:{step.line}: torchsmith {sub} --help", proc)
            missing = [o for o in opts if o not in proc.stdout]
            if missing:
                return (
                    "fail",
                    f"{block.id}:{step.line}: `torchsmith {sub} --help` has no {', '.join(missing)}",
                )
            continue
        command = _with_overrides(step.command)
        proc = _shell(command, folder)
        if proc.returncode != 0:
            return "fail", _report(f"{block.id}:{step.line}: {command}", proc)
        for shown in step.expect:
            want = expected_line(shown)
            if want and want not in proc.stdout + proc.stderr:
                return "fail", _report(f"{block.id}:{step.line}: output lacks {want!r}", proc)
    return "ok", "; ".join(notes)


@pytest.fixture(scope="session")
def doc_runs(request, tmp_path_factory):
    """Blocks collected for this session, started in background workers on first use."""
    cache = tmp_path_factory.mktemp("doc_files")
    root = tmp_path_factory.mktemp("doc_blocks")
    wanted = {item.callspec.id for item in request.session.items if hasattr(item, "callspec")}
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=3)
    futures = {
        b.id: pool.submit(run_block, b, cache, root / re.sub(r"\W", "_", b.id))
        for b in BLOCKS
        if b.id in wanted
    }
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_doc_block_runs_as_the_user_runs_it(doc_runs, block):
    status, detail = doc_runs[block.id].result()  # each command has its own TIMEOUT_S
    if status == "skip":
        pytest.skip(detail)
    assert status == "ok", detail
