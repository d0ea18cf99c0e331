"""``torchsmith inspect CKPT``: what a checkpoint holds, without loading it or running its pickle."""

from __future__ import annotations

import argparse

HELP = "explain a checkpoint: format, container, tensors, parameters, prefixes, metadata"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a file or directory (any format; detected from the bytes)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--trust-pickle", action="store_true", help="allow full unpickling if needed")
    parser.add_argument("--limit", type=int, default=40, help="tensor rows to show (0: all)")


def run(args: argparse.Namespace) -> int:
    from torchsmith.checkpoint.inspect import inspect_checkpoint
    from torchsmith.cli._output import format_table, human_bytes, print_json
    from torchsmith.errors import CheckpointError

    try:
        info = inspect_checkpoint(args.checkpoint, trust_pickle=args.trust_pickle)
    except CheckpointError as e:
        safety = getattr(e, "safety", None)
        if safety and not args.json:
            # Refused, but still explained: every global the pickles name, and what each would do.
            print(f"{args.checkpoint}: refused; safety {safety['verdict']}")
            rows = [(c["name"], c["class"], c.get("danger", "")) for c in safety["calls"]]
            print(format_table(["global", "class", "danger"], rows))
        raise
    if args.json:
        print_json(info)
        return 0
    for part in info.get("parts", []):
        if "error" in part:
            print(f"{part['path']}: refused: {part['error']}")
    lines = [
        f"{info['path']}: {info['format']}"
        + (f" ({len(info['files'])} files)" if len(info["files"]) > 1 else ""),
        f"  tensors     {info['tensors']}",
        f"  parameters  {info['parameters']:,}",
        f"  size        {human_bytes(info['bytes'])}",
        f"  dtypes      {', '.join(f'{k} x{v}' for k, v in info['dtypes'].items())}",
        f"  prefixes    {', '.join(f'{k!r} x{v}' for k, v in info['prefixes'].items()) or '(none)'}",
    ]
    safety = info.get("safety") or {"verdict": "known-safe", "calls": []}
    odd = [c["name"] for c in safety["calls"] if c["class"] != "known-safe"]
    lines.append(
        f"  safety      {safety['verdict']}"
        + (f": {', '.join(odd[:4])}{' ...' if len(odd) > 4 else ''} (not run here; torch.load would run them)"
           if odd else f" ({len(safety['calls'])} names, all on the reader's allowlist)")
    )  # fmt: skip
    if info["container_key"]:
        lines.append(f"  weights in  {info['container_key']!r}")
    for k, v in info["other_keys"].items():
        lines.append(f"  also        {k}: {v}")
    for k, v in info["metadata"].items():
        lines.append(f"  metadata    {k} = {v if len(v) < 100 else v[:97] + '...'}")
    for note in info["notes"]:
        lines.append(f"  note        {note}")
    print("\n".join(lines) + "\n")
    rows = info["entries"] if args.limit <= 0 else info["entries"][: args.limit]
    print(
        format_table(["tensor", "dtype", "shape"], [(e["name"], e["dtype"], tuple(e["shape"])) for e in rows])
    )
    if len(rows) < len(info["entries"]):
        print(f"... {len(info['entries']) - len(rows)} more (--limit 0 shows all)")
    return 0
