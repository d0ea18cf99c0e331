"""A run never replaces another run: new folders by default, an occupied --out refused (exit 2)."""

from __future__ import annotations

import os

import pytest
from _tiny import recipe

from torchsmith.cli.main import main
from torchsmith.errors import InputError
from torchsmith.training import train
from torchsmith.training.api import _choose_out
from torchsmith.training.run_folder import check_out_folder, latest_run_folder, new_run_folder

# What an earlier run (or a user) may have left in a folder: each one makes it occupied.
OCCUPANTS = [
    "last.pt",
    "recipe.yaml",
    "metrics.jsonl",
    "notes.txt",
    "checkpoints/",
    "tensorboard/",
    ".hidden",
]


def _occupy(folder, what: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if what.endswith("/"):
        (folder / what).mkdir()
        (folder / what / "x").write_bytes(b"x")
    else:
        (folder / what).write_bytes(b"earlier run")


@pytest.mark.parametrize("what", OCCUPANTS)
def test_an_occupied_out_is_refused_unless_resume_or_overwrite(tmp_path, what):
    _occupy(tmp_path / "run", what)
    with pytest.raises(InputError, match=r"--out .*run.*--resume.*--overwrite"):
        check_out_folder(tmp_path / "run", resume=False, overwrite=False)
    check_out_folder(tmp_path / "run", resume=True, overwrite=False)
    check_out_folder(tmp_path / "run", resume=False, overwrite=True)


@pytest.mark.parametrize(
    "leftover",
    [".last.pt.999999.0123abcd.tmp", ".best.pt.4.89abcdef.ckpt.tmp", ".metrics.csv.77.deadbeef.tmp"],
)
def test_an_empty_folder_or_one_with_only_temp_files_is_free(tmp_path, leftover):
    check_out_folder(tmp_path / "absent", resume=False, overwrite=False)
    (tmp_path / "run").mkdir()
    check_out_folder(tmp_path / "run", resume=False, overwrite=False)
    (tmp_path / "run" / leftover).write_bytes(b"torn")
    check_out_folder(tmp_path / "run", resume=False, overwrite=False)


@pytest.mark.parametrize("taken", [0, 1, 2, 5])
def test_default_folders_count_up_and_a_resume_takes_the_newest(tmp_path, monkeypatch, taken):
    monkeypatch.chdir(tmp_path)
    base = tmp_path / "runs" / "digits"
    for n in range(1, taken + 1):
        folder = base if n == 1 else base.with_name(f"digits-{n}")
        _occupy(folder, "last.pt")
    (tmp_path / "runs").mkdir(exist_ok=True)
    (tmp_path / "runs" / "digits-x").mkdir()  # other names are not numbered runs
    (tmp_path / "runs" / "digitsfoo").mkdir()
    expected = "digits" if taken == 0 else f"digits-{taken + 1}"
    assert new_run_folder(base).name == expected
    out, resume = _choose_out("digits", None, False, False)
    assert out.name == expected and resume is False
    newest = None if taken == 0 else ("digits" if taken == 1 else f"digits-{taken}")
    assert (latest_run_folder(base).name if latest_run_folder(base) else None) == newest
    if newest:
        assert _choose_out("digits", None, True, False)[0].name == newest
        assert _choose_out("digits", None, "auto", False) == (
            base.with_name(newest).relative_to(tmp_path),
            True,
        )
    else:
        assert _choose_out("digits", None, "auto", False) == (base.relative_to(tmp_path), False)


def test_cli_refuses_an_occupied_out_with_exit_2_before_building(tmp_path, capsys):
    _occupy(tmp_path / "run", "last.pt")
    before = (tmp_path / "run" / "last.pt").read_bytes()
    assert main(["train", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err and "internal error" not in err
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def test_overwrite_replaces_the_earlier_run_and_keeps_other_files(tmp_path):
    r = recipe(data={"limit": 64}, train={"epochs": 1, "progress": False, "plot": False, "threads": 1})
    out = tmp_path / "run"
    train(r, out=out, log=None)
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "epoch-0009-step-00000099.pt").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError):
        train(r, out=out, log=None)
    lines: list[str] = []
    second = train(r, out=out, overwrite=True, log=lines.append)
    assert second.resumed_from is None and (out / "last.pt").is_file()
    assert not (out / "checkpoints").exists()  # the earlier run's kept checkpoints went with it
    assert (out / "notes.txt").read_text() == "mine"
    assert any(s.startswith("overwrite: removed") for s in lines)


def test_two_default_runs_get_two_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = recipe(data={"limit": 64}, train={"epochs": 1, "progress": False, "plot": False, "threads": 1})
    a = train(r, log=None)
    b = train(r, log=None)
    assert (os.fspath(a.out_dir), os.fspath(b.out_dir)) == ("runs/tiny", "runs/tiny-2")
    assert (tmp_path / "runs" / "tiny" / "last.pt").is_file() and (
        tmp_path / "runs" / "tiny-2" / "last.pt"
    ).is_file()
