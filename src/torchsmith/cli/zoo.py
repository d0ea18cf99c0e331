"""``torchsmith zoo [--json]``: the built-in models, what they are and how many parameters they have."""

from __future__ import annotations

import argparse

HELP = "list the zoo's models with their parameter counts"
DESCRIPTION = (
    "List the built-in zoo models: name, parameters, sample input shape and description. "
    "Any 'torchvision:NAME' or 'timm:NAME' model can be used wherever a zoo name can."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", help="only names matching this glob pattern, e.g. 'resnet*'")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def run(args: argparse.Namespace) -> int:
    from torchsmith.cli._output import format_table, print_json
    from torchsmith.errors import InputError
    from torchsmith.summary import parameter_count
    from torchsmith.zoo import get_entry, list_models

    names = list_models(args.pattern)
    if not names:
        raise InputError(f"no zoo model matches {args.pattern!r}; the zoo holds: {', '.join(list_models())}")
    items = []
    for name in names:
        entry = get_entry(name)
        items.append(
            {
                "name": name,
                "params": parameter_count(name),  # built on the meta device: fast, no memory
                "input_shape": list(entry.input_shape),
                "description": entry.description,
            }
        )
    if args.json:
        print_json(items)
        return 0
    rows = [
        (i["name"], f"{i['params']:,}", ",".join(map(str, i["input_shape"])), i["description"]) for i in items
    ]
    print(format_table(["model", "params", "input", "description"], rows, "lrll"))
    return 0
