"""Benchmark: checkpoint save/load speed and memory on ResNet-152 (~240 MB), against plain PyTorch.

Run:  .venv/bin/python bench/bench_checkpoint.py [--workdir DIR] [--repeat 3]

Measured in this one run, each load variant in a fresh subprocess (so the page cache is warm for
all of them alike, and every process pays the same imports before its clock starts):

* "file -> model ready for its first forward", first forward (1x3x224x224) included:
    seeds      torchvision.models.resnet152() + torch.load + load_state_dict   (the seeds' recipe)
    st         torchvision.models.resnet152() + safetensors.load_file + load_state_dict
    expert     resnet152() built under torch.device("meta") + safetensors.torch.load_file
               + load_state_dict(assign=True)                  (what an expert writes today)
    ts         torchsmith.load_model("r152.safetensors")   (meta-device build, mmap + assign,
               every byte checked against its recorded xxh3-128 before the model is returned)
    ts-pt      torchsmith.load_model("r152.pt")            (same, from a torch zip written by torchsmith.save)
    floor      reading every byte of the file once (open + read), no model: the floor
    floor-pt   the same for r152.pt
    ts-cuda    torchsmith.load_model(..., map_location="cuda")   (only where a GPU is present)
  with the peak RSS above the process's RSS after imports, as a multiple of the weights' size.
* save: torchsmith.save (atomic, fsync, xxh3-128 hashed while writing) to .safetensors and .pt vs
  plain torch.save.
* whole-process time of ``torchsmith inspect`` on both files and of ``torchsmith --help``.

Goals (issue 26): load_model ready + first forward >= 1.15x the expert recipe and ready <= 1.5x the
floor, for .safetensors and .pt; save .safetensors >= 2x torch.save; peak RSS at ready <= 1.05x the
weights. (Earlier: load >= 4x the seeds' recipe; inspect and --help <= 0.5 s.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
CLI = [PY, "-m", "torchsmith.cli.main"]

_CHILD = r"""
import json, resource, sys, time
import torch, torchvision, torchsmith, safetensors.torch
torch.set_num_threads(int(sys.argv[3]))
def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
variant, path = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
x = torch.randn(1, 3, 224, 224)
base = rss_kib()
t0 = time.perf_counter()
if variant == "seeds":
    model = torchvision.models.resnet152()
    model.load_state_dict(torch.load(path))
elif variant == "st":
    model = torchvision.models.resnet152()
    model.load_state_dict(safetensors.torch.load_file(path))
elif variant == "expert":
    with torch.device("meta"):
        model = torchvision.models.resnet152()
    model.load_state_dict(safetensors.torch.load_file(path), assign=True)
elif variant.startswith("floor"):
    with open(path, "rb") as f:
        data = f.read()
    ready = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": ready, "ready": ready, "peak_above_base_kib": peak - base,
                      "peak_ready_kib": peak - base, "checksum": None, "bytes": len(data)}))
    sys.exit(0)
elif variant == "ts-cuda":
    model = torchsmith.load_model(path, map_location="cuda")
    x = x.cuda()
else:
    model = torchsmith.load_model(path)
model.eval()
if variant == "ts-cuda":
    torch.cuda.synchronize()
ready = time.perf_counter() - t0
peak_ready = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.no_grad():
    y = model(x)
    if variant == "ts-cuda":
        torch.cuda.synchronize()
elapsed = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": elapsed, "ready": ready, "peak_above_base_kib": peak - base,
                  "peak_ready_kib": peak_ready - base, "checksum": float(y.sum())}))
"""


def run_child(variant: str, path: Path, threads: int = 2) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [PY, "-c", _CHILD, variant, str(path), str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default=None, help="where to write the checkpoints (default: a temp dir)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement (the median is kept)")
    ap.add_argument(
        "--tools", action="store_true", help="only convert / diff / verify against plain-library baselines"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch threads in each load process (1 keeps oneDNN from spinning on an oversubscribed machine)",
    )
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_ckpt_"))
    work.mkdir(parents=True, exist_ok=True)

    import torch

    import torchsmith

    torch.manual_seed(0)
    model = torchsmith.create_model("torchvision:resnet152").eval()
    sd = model.state_dict()
    weights = sum(t.numel() * t.element_size() for t in sd.values())
    print(f"ResNet-152: {len(sd)} tensors, {weights / 1e6:.1f} MB of weights; files in {work}")
    if args.tools:
        _bench_tools(torch, torchsmith, model, sd, work, args.repeat)
        return

    import safetensors.torch

    safetensors.torch.save_file(sd, work / "r152_st.safetensors")
    r = args.repeat
    save_times = _bench_save(torch, torchsmith, model, sd, work, r)
    del model, sd

    variants = [
        ("seeds", work / "r152_seeds.pth", "torchvision + torch.load + load_state_dict (seeds)"),
        ("st", work / "r152_st.safetensors", "torchvision + safetensors.load_file + load_state_dict"),
        ("expert", work / "r152_st.safetensors", "expert: meta build + load_file + assign=True"),
        ("ts", work / "r152.safetensors", "torchsmith.load_model(.safetensors), all verified"),
        ("ts-pt", work / "r152.pt", "torchsmith.load_model(.pt), all verified"),
        ("floor", work / "r152.safetensors", "floor: read every byte of r152.safetensors once"),
        ("floor-pt", work / "r152.pt", "floor: read every byte of r152.pt once"),
    ]
    if torch.cuda.is_available():
        variants.append(("ts-cuda", work / "r152.safetensors", 'torchsmith.load_model(map_location="cuda")'))
    all_runs: dict[str, list[dict]] = {name: [] for name, _, _ in variants}
    for _ in range(r):
        for name, path, _ in variants:
            all_runs[name].append(run_child(name, path, args.threads))
    results = {}
    for name, _, _ in variants:
        runs = all_runs[name]
        results[name] = {
            "seconds": statistics.median(x["seconds"] for x in runs),
            "ready": statistics.median(x["ready"] for x in runs),
            "peak": statistics.median(x["peak_above_base_kib"] for x in runs) * 1024,
            "peak_ready": statistics.median(x["peak_ready_kib"] for x in runs) * 1024,
            "checksum": runs[0]["checksum"],
        }
    base = results["seeds"]["seconds"]
    base_ready = results["seeds"]["ready"]
    print(f"\nfile -> model ready (+ first forward), median of {r} fresh processes ({args.threads} threads)")
    print(f"  {'variant':55s} {'ready':>7s} {'ratio':>6s} {'+fwd':>7s} {'ratio':>6s}  peak RSS above imports")
    for name, _, label in variants:
        res = results[name]
        fwd = "     -        -" if name.startswith("floor") else (
            f" {res['seconds']:6.3f}s {base / res['seconds']:5.2f}x")  # fmt: skip
        print(
            f"  {label:55s} {res['ready']:6.3f}s {base_ready / res['ready']:5.2f}x{fwd}"
            f"  ready {res['peak_ready'] / weights:4.2f}x,"
            f" after forward {res['peak'] / weights:4.2f}x weights"
        )
    sums = [v["checksum"] for k, v in results.items() if v["checksum"] is not None]
    same = max(sums) - min(sums) <= 1e-5 * max(abs(s) for s in sums)
    print(f"  all variants give the same output (rel. 1e-5): {same}")
    ts = results["ts"]
    print(
        f"  goal ts >= 4x vs seeds: {base / ts['seconds']:.2f}x with the forward,"
        f" {base_ready / ts['ready']:.2f}x to model ready;"
        f" goal peak <= 1.1x weights: {ts['peak'] / weights:.2f}x after the forward,"
        f" {ts['peak_ready'] / weights:.2f}x at model ready"
    )
    _print_goals(results, weights, save_times)

    print(f"\nwhole-process CLI time (median of {r})")
    for label, cmd in [
        ("torchsmith inspect r152.safetensors", [*CLI, "inspect", str(work / "r152.safetensors")]),
        ("torchsmith inspect r152.pt", [*CLI, "inspect", str(work / "r152.pt")]),
        (
            "torchsmith inspect r152_seeds.pth (plain torch.save)",
            [*CLI, "inspect", str(work / "r152_seeds.pth")],
        ),
        ("torchsmith --help", [*CLI, "--help"]),
        ("python -c 'import torch' (for scale)", [PY, "-c", "import torch"]),
    ]:
        t = statistics.median(wall(cmd) for _ in range(r))
        print(f"  {label:55s} {t:6.3f} s" + ("" if "import torch" in label else "   (goal <= 0.5 s)"))


def _print_goals(results: dict, weights: int, save_times: dict[str, float]) -> None:
    """The issue-26 ratios, each with its goal and whether this run met it."""
    expert = results["expert"]["seconds"]
    rows = []
    for name, floor, fmt in (("ts", "floor", ".safetensors"), ("ts-pt", "floor-pt", ".pt")):
        res = results[name]
        rows.append((f"load_model({fmt}) ready+fwd vs expert", expert / res["seconds"], ">=", 1.15))
        rows.append((f"load_model({fmt}) ready / floor", res["ready"] / results[floor]["ready"], "<=", 1.5))
        rows.append(
            (f"load_model({fmt}) peak RSS at ready / weights", res["peak_ready"] / weights, "<=", 1.05)
        )
    rows.append(("save .safetensors speed vs torch.save", save_times["torch"] / save_times["st"], ">=", 2.0))
    rows.append(("save .pt speed vs torch.save (no goal)", save_times["torch"] / save_times["pt"], "", 0.0))
    print("\ngoals (issue 26), medians of this run")
    for label, value, op, goal in rows:
        if not op:
            print(f"  {label:52s} {value:6.2f}x")
            continue
        ok = value >= goal if op == ">=" else value <= goal
        print(f"  {label:52s} {value:6.2f}x   goal {op} {goal:.2f}x   {'met' if ok else 'NOT met'}")


def _bench_save(torch, torchsmith, model, sd, work: Path, r: int) -> dict[str, float]:
    # Interleaved, so that a burst of load on the machine hits every variant alike.
    times: dict[str, list[float]] = {"torch": [], "durable": [], "st": [], "pt": []}

    def durable_torch_save() -> None:  # plain torch.save made durable (no atomic rename, no hashes)
        torch.save(sd, work / "r152_durable.pth")
        with open(work / "r152_durable.pth", "rb+") as f:
            os.fsync(f.fileno())

    for _ in range(r):
        times["torch"].append(_timed(lambda: torch.save(sd, work / "r152_seeds.pth")))
        times["durable"].append(_timed(durable_torch_save))
        times["st"].append(_timed(lambda: torchsmith.save(model, work / "r152.safetensors")))
        times["pt"].append(_timed(lambda: torchsmith.save(model, work / "r152.pt")))
    t_torch, t_durable, t_st, t_pt = (statistics.median(times[k]) for k in ("torch", "durable", "st", "pt"))
    print(f"\nsave (median of {r}; torchsmith: atomic + fsync of file and folder + xxh3-128 per tensor)")
    print(f"  {'variant':35s} {'time':>9s}   {'vs torch.save':>13s}   vs torch.save + fsync (extra)")
    print(f"  {'torch.save .pth':35s} {t_torch:7.3f} s   {1:12.2f}x")
    print(f"  {'torch.save .pth + fsync of file':35s} {t_durable:7.3f} s   {t_torch / t_durable:12.2f}x")
    for label, t in (("torchsmith.save .safetensors", t_st), ("torchsmith.save .pt", t_pt)):
        print(f"  {label:35s} {t:7.3f} s   {t_torch / t:12.2f}x   {t_durable / t:5.2f}x")
    return {"torch": t_torch, "durable": t_durable, "st": t_st, "pt": t_pt}


def _bench_tools(torch, torchsmith, model, sd, work: Path, r: int) -> None:
    """convert, diff and verify, each against the plain-library code a user would write instead.

    convert's refusals (checksums, the output budget, entries it cannot write) are checked before it
    writes; the "no checksum check" row (ignore_checksums=True) shows what the xxh3-128/CRC check costs.
    """
    import safetensors.torch

    from torchsmith.checkpoint import convert_checkpoint, diff_checkpoints, verify_checkpoint

    torch.save(sd, work / "r152_seeds.pth")
    torchsmith.save(model, work / "r152.pt")
    safetensors.torch.save_file(sd, work / "r152_st.safetensors")
    other = {k: v.clone() for k, v in sd.items()}
    other["fc.bias"][0] += 1
    safetensors.torch.save_file(other, work / "r152_other.safetensors")
    del other

    def plain_convert() -> None:  # what a script does: torch.load then safetensors' save_file
        loaded = torch.load(work / "r152_seeds.pth", weights_only=True, mmap=True)
        safetensors.torch.save_file(loaded, work / "plain_out.safetensors")

    def plain_diff() -> None:  # load both; the largest difference of every tensor that differs
        a = safetensors.torch.load_file(work / "r152_st.safetensors")
        b = safetensors.torch.load_file(work / "r152_other.safetensors")
        {k: float((a[k].double() - b[k].double()).abs().max()) for k in a if not torch.equal(a[k], b[k])}

    rows = [
        ("convert .pth -> .safetensors", plain_convert, "torch.load + save_file",
         lambda: convert_checkpoint(work / "r152_seeds.pth", work / "ts_out.safetensors")),
        ("convert .pt (xxh3-128 recorded) -> .safetensors", plain_convert, "torch.load + save_file",
         lambda: convert_checkpoint(work / "r152.pt", work / "ts_out.safetensors")),
        ("  ... no checksum check (ignore_checksums)", plain_convert, "torch.load + save_file",
         lambda: convert_checkpoint(work / "r152.pt", work / "ts_out.safetensors", ignore_checksums=True)),
        ("diff two .safetensors (values and bytes)", plain_diff, "load_file x2 + equal/max",
         lambda: diff_checkpoints(work / "r152_st.safetensors", work / "r152_other.safetensors")),
        ("verify .pt (CRC-32 + xxh3-128)", None, "", lambda: verify_checkpoint(work / "r152.pt")),
    ]  # fmt: skip
    print(f"\nconvert / diff / verify (median of {r}, interleaved with their baselines)")
    for label, base, base_label, ours in rows:
        t_ours, t_base = [], []
        for _ in range(r):
            t_ours.append(_timed(ours))
            if base is not None:
                t_base.append(_timed(base))
        mine = statistics.median(t_ours)
        if base is None:
            print(f"  {label:48s} {mine:7.3f} s")
            continue
        ref = statistics.median(t_base)
        print(f"  {label:48s} {mine:7.3f} s   {base_label:24s} {ref:7.3f} s   ratio {ref / mine:5.2f}x")


def _timed(fn) -> float:
    # torchsmith.save releases a replaced file's blocks in a background thread: let that finish so
    # it does not slow the next measurement.
    for thread in threading.enumerate():
        if thread.name.startswith("torchsmith-release"):
            thread.join()
    os.sync()  # start with no dirty pages left by the previous save (writeback would blur the timing)
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
