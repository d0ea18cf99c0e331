"""``torchsmith convert SRC DST``: rewrite a checkpoint in another format, safely and atomically."""

from __future__ import annotations

import argparse

HELP = "convert a checkpoint (any format) to safetensors or a torch zip, optionally sharded"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="checkpoint to read (any format)")
    parser.add_argument("dst", help="file to write; .safetensors (recommended) or .pt/.pth/.bin/.ckpt")
    parser.add_argument("--trust-pickle", action="store_true", help="allow full unpickling if needed")
    parser.add_argument("--max-shard-size", default=None, help="split into shards, e.g. 2GB")
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
        "--dedupe-tied",
        action="store_true",
        help="store tied tensors once (smaller; plain safetensors.load_file then misses their other names)",
    )


def run(args: argparse.Namespace) -> int:
    from torchsmith.checkpoint.convert import convert_checkpoint

    out = convert_checkpoint(
        args.src,
        args.dst,
        trust_pickle=args.trust_pickle,
        max_shard_size=args.max_shard_size,
        strip_wrappers=args.strip_wrappers,
        rename=args.rename,
        dedupe_tied=args.dedupe_tied,
    )
    print(f"wrote {out}")
    return 0
