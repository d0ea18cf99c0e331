"""``torchsmith convert SRC DST``: rewrite a checkpoint in another format, safely and atomically."""

from __future__ import annotations

import argparse

HELP = "convert a checkpoint (any format) to safetensors or a torch zip, optionally sharded"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="checkpoint to read (any format)")
    parser.add_argument("dst", help="file to write; .safetensors (recommended) or .pt/.pth/.bin/.ckpt")
    parser.add_argument("--trust-pickle", action="store_true", help="allow full unpickling if needed")
    parser.add_argument(
        "--max-shard-size",
        default=None,
        help="split into shards plus an index, e.g. 2GB (weights that fit one shard: one file DST)",
    )
    parser.add_argument(
        "--strip-wrappers",
        action="store_true",
        help="remove module./_orig_mod. (DDP, DataParallel, torch.compile) and a Lightning model. prefix",
    )
    parser.add_argument(
        "--rename",
        action="append",
        default=[],
        metavar="REGEX=REPL",
        help="rename keys (re.sub on the keys as written in SRC, before --strip-wrappers); repeatable",
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="KEY",
        help="leave out this entry of the weights (a sparse/quantized tensor, a non-tensor; a name or "
        "glob as written in SRC); without it such entries are refused by name; repeatable",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="convert even when SRC fails its recorded checksums or CRCs (what 'verify' reports)",
    )
    parser.add_argument(
        "--allow-expand",
        action="store_true",
        help="allow a result far larger than SRC (broadcast/stride-0 views materialised in full)",
    )
    parser.add_argument(
        "--dedupe-tied",
        action="store_true",
        help="store tied tensors once (smaller; plain safetensors.load_file then misses their other names)",
    )


def run(args: argparse.Namespace) -> int:
    from torchsmith.checkpoint.convert import convert_checkpoint

    notes: list[str] = []
    out = convert_checkpoint(
        args.src,
        args.dst,
        trust_pickle=args.trust_pickle,
        max_shard_size=args.max_shard_size,
        strip_wrappers=args.strip_wrappers,
        rename=args.rename,
        dedupe_tied=args.dedupe_tied,
        skip=args.skip,
        ignore_checksums=args.force,
        allow_expand=args.allow_expand,
        notes=notes,
    )
    print(f"wrote {out}")
    for note in notes:
        print(f"note: {note}")
    return 0
