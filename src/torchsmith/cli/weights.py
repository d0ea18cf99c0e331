"""``torchsmith weights list|fetch|verify``: pretrained weights by name, in the standard caches."""

from __future__ import annotations

import argparse

HELP = "list, fetch (download and verify) and re-verify pretrained weights"
DESCRIPTION = (
    "Pretrained weights by the names torchvision and timm use. 'list [GLOB]' shows the weights of "
    "the models whose name matches GLOB the way 'zoo' matches (resnet50, 'resnet*', "
    "torchvision:resnet50, timm:resnet50; case ignored) and whether each is cached; 'fetch MODEL "
    "[WEIGHTS]' downloads one file to $TORCH_HOME/hub/checkpoints or the Hugging Face cache and "
    "checks its SHA-256 (MODEL like torchvision:resnet50 with WEIGHTS like IMAGENET1K_V2 or DEFAULT, "
    "or timm:resnet50.a1_in1k); 'verify' re-hashes the torch hub cache. Offline "
    "(TORCHSMITH_OFFLINE=1 or HF_HUB_OFFLINE=1) nothing is downloaded."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["list", "fetch", "verify"], help="what to do")
    parser.add_argument("name", nargs="?", help="list: a glob; fetch: the model name")
    parser.add_argument("weights", nargs="?", default=None, help="fetch: the weights name (default DEFAULT)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def run(args: argparse.Namespace) -> int:
    from torchsmith.cli._output import format_table, print_json
    from torchsmith.errors import InputError
    from torchsmith.hub import fetch_weights, list_weights, resolve_weights, verify_cache
    from torchsmith.hub.sources import no_weights_message

    if args.action == "list":
        rows = list_weights(args.name)
        if not rows:  # an empty table with exit 0 reads as "this model has no weights"
            raise InputError(no_weights_message(args.name))
        if args.json:
            print_json(rows)
        else:
            cached = {True: "yes", False: "no", None: "?"}
            table = [(r["name"], "*" if r["default"] else "", cached[r["cached"]], r["file"]) for r in rows]
            print(format_table(["name", "default", "cached", "file"], table, "llll"))
        return 0
    if args.action == "fetch":
        if not args.name:
            raise InputError("weights fetch needs a MODEL name, e.g. torchvision:resnet50 DEFAULT")
        weights = (
            args.weights
            if args.weights is not None
            else ("DEFAULT" if args.name.startswith("torchvision:") else True)
        )
        source = resolve_weights(args.name, weights)
        path = fetch_weights(source, progress=not args.json)
        if args.json:
            print_json({"path": str(path), **source.describe()})
        else:
            print(f"{source.name}: {path} (verified)")
        return 0
    rows = verify_cache()
    bad = [r for r in rows if r["ok"] is False]
    if args.json:
        print_json({"files": rows, "ok": not bad})
    else:
        for r in rows:
            state = {True: "ok", False: "SHA-256 MISMATCH", None: "no hash in name"}[r["ok"]]
            print(f"{r['file']}: {state}")
        if not rows:
            print("the torch hub cache holds no weights")
    return 1 if bad else 0
