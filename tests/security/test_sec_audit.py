"""The adversarial corpus, read in a fresh process under an audit hook installed before torchsmith is
imported: 0 executions, 0 network attempts, 0 imports of modules a file names, every read bounded
(<= 10 s, <= 512 MiB above the baseline) and ending in a clean TorchsmithError or a clean result."""

from __future__ import annotations

import builtins
import json
import os
import pickle
import struct
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import torch
from _sec_corpus import Reduce, dcp_folder, named_call_pickle, poison_dcp
from safetensors.torch import save_file

NAMED_MODULES = {"tsevil_pkg", "cProfile", "timeit", "pydoc", "webbrowser", "torch.fx.graph_module"}


def _build_corpus(root: Path, marker: Path) -> Path:
    c = root / "corpus"
    c.mkdir()
    cmd = f"touch {marker}"
    (c / "os_system.pkl").write_bytes(pickle.dumps({"w": Reduce(os.system, cmd)}))
    (c / "exec.pkl").write_bytes(pickle.dumps(Reduce(builtins.exec, f"open({str(marker)!r},'w')")))
    torch.save(
        {"w": torch.zeros(2), "x": Reduce(builtins.eval, f"open({str(marker)!r},'w')")}, c / "eval_zip.pt"
    )
    for q in ("cProfile.run", "timeit.timeit", "pydoc.pipepager", "torch.fx.graph_module._exec_with_source",
              "tsevil_pkg.payload.run", "webbrowser.open"):  # fmt: skip
        (c / f"named_{q}.pkl").write_bytes(named_call_pickle(q, f"__import__('os').system({cmd!r})"))
    (c / "bomb_bytearray.pkl").write_bytes(b"\x80\x02c__builtin__\nbytearray\nJ\x00\x00\x00@\x85R.")
    (c / "bomb_list_range.pkl").write_bytes(
        b"\x80\x02c__builtin__\nlist\nc__builtin__\nrange\nJ\x00\xca\x9a;\x85R\x85R."
    )
    torch.save({"w": torch.zeros(2)}, root / "ok.pt")
    with zipfile.ZipFile(root / "ok.pt") as src, zipfile.ZipFile(c / "zipbomb.pt", "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):
                data += b"\0" * (40 << 20)
            dst.writestr(info.filename, data, compress_type=zipfile.ZIP_DEFLATED)
    level = {"w": torch.zeros(1)}
    for _ in range(4):
        level = {f"k{i}": level for i in range(100)}
    torch.save(level, c / "shared_dicts.pt")
    poison_dcp(
        dcp_folder(c / "dcp_exec"), "planner_data", Reduce(builtins.exec, f"open({str(marker)!r},'w')")
    )
    d = dcp_folder(c / "dcp_traversal")
    with open(d / ".metadata", "rb") as f:
        meta = pickle.load(f)
    for info in meta.storage_data.values():
        info.relative_path = "../../ok.pt"
    with open(d / ".metadata", "wb") as f:
        pickle.dump(meta, f)
    (root / "secret").write_bytes(b"root:x:0:0:root")
    sh = c / "sharded_escape"
    sh.mkdir()
    (sh / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../../secret"}}))
    for name, arch, ops in [
        ("arch_backbone", {"name": "torchvision:fasterrcnn_mobilenet_v3_large_fpn",
                           "kwargs": {"weights_backbone": "DEFAULT"}}, []),
        ("arch_timm_ckpt", {"name": "timm:resnet18", "kwargs": {"checkpoint_path": str(root / "ok.pt")}}, []),
        ("arch_pretrained", {"name": "timm:resnet18", "kwargs": {"pretrained": True}}, []),
        ("arch_regex", {"name": "torchvision:resnet18", "kwargs": {"num_classes": 2}},
         [{"op": "freeze", "patterns": ["re:(a+)+b|" + "a" * 30]}]),
        ("arch_bad_types", {"name": 5, "kwargs": []}, "x"),
    ]:  # fmt: skip
        meta = {"torchsmith.arch": json.dumps(arch), "torchsmith.surgery": json.dumps(ops)}
        save_file({"w": torch.zeros(1)}, c / f"{name}.safetensors", metadata=meta)
    save_file(
        {"w": torch.zeros(1)}, c / "spec_path.safetensors", metadata={"torchsmith.spec": '"/etc/passwd"'}
    )
    h = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                    "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode()  # fmt: skip
    (c / "st_overlap.safetensors").write_bytes(struct.pack("<Q", len(h)) + h + b"\0" * 12)
    # Issue 28's classes: a storage record rewritten to name another file, a nested load, a zip holding
    # its pickle twice (torch and a second reader would take different ones).
    torch.save({"w": torch.zeros(4)}, root / "four.pt")
    with zipfile.ZipFile(root / "four.pt") as src:
        pkl_name = next(n for n in src.namelist() if n.endswith("data.pkl"))
        members = {n: src.read(n) for n in src.namelist()}

    def text(t: str) -> bytes:
        return b"X" + struct.pack("<I", len(t.encode())) + t.encode()

    pid = b"(" + text("storage") + b"ctorch\nFloatStorage\n" + text("0") + text("cpu") + b"K\x04tQq\x00"
    tensor = (b"ctorch._utils\n_rebuild_tensor_v2\n(h\x00K\x00K\x04\x85K\x01\x85\x89"
              b"ccollections\nOrderedDict\n)RtR")  # fmt: skip
    build = b"h\x00}" + text("file") + text(str(root / "secret")) + b"sb0"  # BUILD on the storage record
    rewritten = b"\x80\x02" + pid + b"0" + build + b"}" + text("w") + tensor + b"s."
    with zipfile.ZipFile(c / "rewrite_storage.pt", "w") as dst:
        for n, data in members.items():
            dst.writestr(n, rewritten if n == pkl_name else data)
    (c / "nested_torch_load.pkl").write_bytes(
        named_call_pickle("torch.serialization.load", str(root / "ok.pt"))
    )
    with zipfile.ZipFile(c / "dup_member.pt", "w") as dst, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for n, data in members.items():
            dst.writestr(n, data)
        dst.writestr(pkl_name, pickle.dumps({"w": Reduce(os.system, cmd)}, protocol=2))
    return c


def _poisoned_hub(root: Path, marker: Path) -> Path:
    home = root / "torch_home"
    ck = home / "hub" / "checkpoints"
    ck.mkdir(parents=True)
    for name in ("resnet50-0676ba61.pth", "mobilenet_v3_large-8738ca79.pth", "resnet18-f37072fd.pth"):
        (ck / name).write_bytes(pickle.dumps({"x": Reduce(os.system, f"touch {marker}")}))
    return home


def test_corpus_under_audit_hook(tmp_path):
    marker = tmp_path / "PWNED"
    corpus = _build_corpus(tmp_path, marker)
    env = {**os.environ, "TORCH_HOME": str(_poisoned_hub(tmp_path, marker)), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(Path(__file__).parents[2] / "src"), "OMP_NUM_THREADS": "1"}  # fmt: skip
    runner = Path(__file__).with_name("_audit_runner.py")
    proc = subprocess.run(
        [sys.executable, str(runner), str(corpus)], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 4 * len(os.listdir(corpus))
    bad = []
    for r in rows:
        kinds = [e for e in r["events"] if e[0] != "import"]
        imports = [e[1] for e in r["events"] if e[0] == "import" and e[1].split(".")[0] in
                   {m.split(".")[0] for m in NAMED_MODULES} | {"tsevil_pkg"}]  # fmt: skip
        if kinds or imports or r["outcome"].startswith(("escape", "timeout")) or r["seconds"] > 10:
            bad.append(r)
        if r["rss_growth_mib"] > 512:
            bad.append(r)
    assert not bad, json.dumps(bad, indent=1)[:4000]
    assert not marker.exists()
    # Every hostile entry is refused (the shared-dicts file is a real, tiny state dict).
    refused = {r["file"] for r in rows if r["outcome"].startswith("error")}
    assert refused >= {n for n in os.listdir(corpus) if n != "shared_dicts.pt"} - {"arch_regex.safetensors"}
