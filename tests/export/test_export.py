"""export: the written file is run (ONNX Runtime, the reloaded .pt2) and compared with PyTorch before
it gets its name; refusals leave nothing behind; what a deployment needs travels inside the file."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import torchsmith
from torchsmith.cli.main import main
from torchsmith.errors import InputError
from torchsmith.export import ExportError, export
from torchsmith.zoo import register_model

onnx = pytest.importorskip("onnx")  # the [export] extra (in dev)
ort = pytest.importorskip("onnxruntime")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "specs"

# two inputs, a module run twice (shared weights), a dict of outputs
SIAMESE_DICT = {
    "input_shape": {"a": [2, 1, 12, 12], "b": [2, 1, 12, 12]},
    "graph": {
        "inputs": ["a", "b"],
        "nodes": {
            "enc": {
                "inputs": "a",
                "chain": [{"type": "Conv2d", "out_channels": 4, "kernel_size": 3, "stride": 2}, "ReLU",
                          "Flatten", {"type": "Linear", "out_features": 8}],
            },
            "enc_b": {"call": "enc", "inputs": "b"},
            "diff": {"op": "subtract", "inputs": ["enc", "enc_b"]},
            "head": {"type": "Linear", "out_features": 1},
        },
        "outputs": {"score": "head", "embedding": "enc"},
    },
}  # fmt: skip


def _onnx_meta(path: Path) -> dict:
    return {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}


@pytest.mark.parametrize("suffix", [".pt2", ".onnx"])
def test_multi_input_dict_output_spec_is_proven_at_several_batch_sizes(tmp_path, suffix):
    model = torchsmith.build_model(SIAMESE_DICT)
    out = tmp_path / f"siamese{suffix}"
    report = export(model, out, dynamic_batch=True)
    assert report.ok and out.is_file()
    assert report.batch_sizes == [1, 2, 3]
    assert report.outputs == ["score", "embedding"]
    assert set(report.inputs) == {"a", "b"} and report.inputs["a"]["shape"] == ["batch", 1, 12, 12]
    assert {c.name for c in report.checks} == {"score", "embedding"}
    assert all(c.max_abs <= 1e-4 for c in report.checks)
    # the file itself, run independently of the report, at a batch size the check did not use
    a, b = torch.randn(5, 1, 12, 12), torch.randn(5, 1, 12, 12)
    with torch.no_grad():
        want = model(a, b)
    if suffix == ".onnx":
        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == ["a", "b"]
        assert [o.name for o in sess.get_outputs()] == ["score", "embedding"]
        assert sess.get_inputs()[0].shape[0] == "batch"
        score, emb = sess.run(None, {"a": a.numpy(), "b": b.numpy()})
        meta = _onnx_meta(out)
        assert meta["torchsmith.outputs"] == ["score", "embedding"]
        assert "spec" in meta["torchsmith.provenance"]
    else:
        files = {"torchsmith.json": ""}
        program = torch.export.load(io.BytesIO(out.read_bytes()), extra_files=files).module()
        got = program(a, b)
        score, emb = got["score"].detach().numpy(), got["embedding"].detach().numpy()
        assert json.loads(files["torchsmith.json"])["inputs"]["b"]["dtype"] == "float32"
    assert torch.allclose(torch.from_numpy(score), want["score"], atol=1e-5)
    assert torch.allclose(torch.from_numpy(emb), want["embedding"], atol=1e-5)


def test_fixed_batch_is_recorded_and_a_spec_file_is_a_source(tmp_path):
    out = tmp_path / "s.pt2"
    report = export(EXAMPLES / "siamese.yaml", out)
    assert report.ok and not report.dynamic_batch
    assert report.inputs["a"]["shape"] == [1, 1, 28, 28] and report.batch_sizes == [1]
    assert "fixed" in report.summary()


class _DiffersWhenExported(nn.Module):
    """Computes something else under export than eagerly: what a bad export looks like."""

    def forward(self, x):
        if torch.compiler.is_exporting():
            return x + 1e-2
        return x


class _DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # a branch on values: torch.export cannot keep it
            return x * 2
        return x


@pytest.mark.parametrize("suffix", [".pt2", ".onnx"])
def test_a_file_that_computes_something_else_is_refused_and_not_left(tmp_path, suffix):
    out = tmp_path / f"m{suffix}"
    with pytest.raises(ExportError, match="does not compute what the model computes"):
        export(_DiffersWhenExported(), out, input_shape=(2, 4))
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary


def test_tolerance_is_the_users(tmp_path):
    report = export(_DiffersWhenExported(), tmp_path / "m.pt2", input_shape=(2, 4), atol=0.02)
    assert report.ok and 0.009 < report.checks[0].max_abs < 0.011


def test_data_dependent_control_flow_is_refused_naming_the_line(tmp_path):
    with pytest.raises(ExportError) as e:
        export(_DataDependent(), tmp_path / "m.onnx", input_shape=(2, 4))
    assert "if x.sum() > 0" in str(e.value) and "test_export.py" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_existing_file_is_kept_unless_overwrite(tmp_path):
    out = tmp_path / "m.pt2"
    out.write_bytes(b"earlier export")
    model = nn.Linear(4, 2)
    with pytest.raises(InputError, match="exists"):
        export(model, out, input_shape=(1, 4))
    assert out.read_bytes() == b"earlier export"
    export(model, out, input_shape=(1, 4), overwrite=True)
    assert out.read_bytes() != b"earlier export"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "input shape of model is not recorded"),
        ({"input_shape": "1,x,y"}, "expected integers"),
        ({"input_shape": (1, 4), "format": "tflite"}, "unknown format"),
    ],
)
def test_bad_calls_say_what_to_give(tmp_path, kwargs, match):
    with pytest.raises(InputError, match=match):
        export(nn.Linear(4, 2), tmp_path / "m.pt2", **kwargs)


def test_saved_model_keeps_provenance_and_the_cli_reports_json(tmp_path, capsys):
    model = torchsmith.build_model(
        {"input_shape": [1, 3, 16, 16], "chain": [{"type": "Conv2d", "out_channels": 4, "kernel_size": 3},
                                                  {"type": "AdaptiveAvgPool2d", "output_size": 1}, "Flatten"]}
    )  # fmt: skip
    saved = tmp_path / "m.safetensors"
    torchsmith.save(model, saved)
    out = tmp_path / "m.onnx"
    assert main(["export", str(saved), "-o", str(out), "--dynamic-batch", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["format"] == "onnx"
    assert report["inputs"]["x"]["shape"] == ["batch", 3, 16, 16]
    assert _onnx_meta(out)["torchsmith.origin"].startswith("saved model")
    # bad input: exit 2 with a message, no traceback
    assert main(["export", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "no such file" in capsys.readouterr().err


@register_model("test_export_mlp", input_shape=(1, 1, 8, 8), overwrite=True)
def _export_mlp(num_classes: int = 10):
    """Flatten -> Linear -> ReLU -> Linear: a digits classifier for the export tests."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, num_classes))


def test_a_training_checkpoint_exports_and_predicts_without_torch(tmp_path):
    """The run's classes and preprocessing travel in the file; the ONNX file classifies image files
    in a process that never imports torch, as ``predict --checkpoint`` does."""
    import subprocess
    import sys

    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    recipe = {
        "name": "tiny",
        "seed": 0,
        "model": {"name": "test_export_mlp", "kwargs": {}},
        "data": {"kind": "digits", "channels": 1, "batch_size": 64, "val_fraction": 0.2, "image_size": 8,
                 "val_transforms": [{"Normalize": {"mean": [0.3], "std": [0.4]}}]},
        "optimizer": {"name": "Adam", "lr": 0.01},
        "train": {"epochs": 2, "progress": False, "threads": 1},
    }  # fmt: skip
    torchsmith.train(recipe, out=tmp_path / "run", log=None)
    out = tmp_path / "digits.onnx"
    report = export(tmp_path / "run" / "best.pt", out, dynamic_batch=True)
    assert report.ok and report.inputs["x"]["shape"] == ["batch", 1, 8, 8]
    meta = _onnx_meta(out)
    assert meta["torchsmith.classes"] == [str(i) for i in range(10)]
    assert meta["torchsmith.preprocessing"]["channels"] == 1
    digits = load_digits()
    files = []
    for i in range(8):  # 16x16 files: both paths resize them to the run's 8x8
        img = Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).resize((16, 16), Image.NEAREST)
        files.append(str(tmp_path / f"d{i}.png"))
        img.save(files[-1])
    want = torchsmith.predict(tmp_path / "run" / "best.pt", files, top_k=3)
    code = (
        "import json, sys\n"
        "from torchsmith.export.onnx_predict import predict_onnx\n"
        "r = predict_onnx(sys.argv[1], sys.argv[2:], top_k=3)\n"
        "assert 'torch' not in sys.modules, 'predict_onnx imported torch'\n"
        "print(json.dumps(r))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(out), *files], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout)
    if isinstance(want, dict):  # predict's --json object holds the list
        want = want.get("predictions", want)
    assert [r["class"] for r in got] == [r["class"] for r in want]
    assert max(abs(a["probability"] - b["probability"]) for a, b in zip(got, want)) < 1e-4
    # the installed command, as a user runs it
    cli = Path(sys.executable).with_name("torchsmith")
    args = [str(cli), "predict", "--model", str(out), *files[:2], "--json"]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shown = json.loads(proc.stdout)
    assert shown["model"] == str(out)
    assert [r["class"] for r in shown["predictions"]] == [r["class"] for r in got[:2]]
