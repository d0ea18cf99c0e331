"""Read a spec from YAML or JSON (a file or text) or a dict, safely, remembering each value's line.

Why not ``yaml.safe_load``: it gives no line numbers, expands anchor/alias "billion laughs" bombs
into exponential structures when they are walked, and silently keeps the last of two duplicate keys.
Here the YAML is composed into its node graph (no object is constructed from tags, so no code can
run), then converted by a walker that counts every value it produces, bounds the nesting depth,
rejects recursive aliases and duplicate keys, and records the line of every spec path.

>>> spec = load_spec("chain: [{type: Linear, in_features: 4, out_features: 2}, ReLU]")
>>> spec["chain"][1]
'ReLU'
>>> spec.source.line(("chain", 1))
1
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchsmith.errors import SpecError

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_NUMBER_CHARS",
    "MAX_VALUES",
    "Source",
    "Spec",
    "envelope",
    "format_path",
    "load_spec",
    "read_yaml",
]

MAX_BYTES = 2_000_000  # a spec file larger than this is not a model description
MAX_DEPTH = 64  # nesting of mappings/lists
MAX_VALUES = 200_000  # values after alias expansion
# A number written with more characters than this is refused before it is converted: Python's int()
# of 100,000 digits raises its own ValueError (and takes quadratic time below its limit).
MAX_NUMBER_CHARS = 400

PathT = tuple  # of str (mapping keys) and int (list indices)


def format_path(path: PathT) -> str:
    """``("graph", "nodes", "up2", "inputs", 1)`` -> ``graph.nodes.up2.inputs[1]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


@dataclass
class Source:
    """Where a spec came from: a file name (or ``<spec>`` for text) and the line of each path."""

    name: str | None = None
    lines: dict[PathT, int] = field(default_factory=dict)
    what: str = "spec"  # what the document is, for messages: "spec" or "recipe"

    def line(self, path: PathT) -> int | None:
        """The line of ``path``, or of its nearest ancestor that has one."""
        path = tuple(path)
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = path[:-1]

    def where(self, path: PathT) -> str:
        """``spec.yaml:41: graph.nodes.up2.inputs[1]`` (file and line only when known)."""
        line = self.line(path)
        prefix = ""
        if self.name and line is not None:
            prefix = f"{self.name}:{line}: "
        elif self.name:
            prefix = f"{self.name}: "
        return prefix + format_path(path)


class Spec(dict):
    """A spec as a plain dict, with ``.source`` (a :class:`Source`) telling the file and lines."""

    source: Source

    def __init__(self, *args: Any, source: Source | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.source = source or Source()


def _fail(source: Source, path: PathT, msg: str) -> SpecError:
    err = SpecError(f"{source.where(path)}: {msg}")
    err.path = format_path(path)  # type: ignore[attr-defined]
    err.line = source.line(path)  # type: ignore[attr-defined]
    return err


# ---------------------------------------------------------------------------------------------- YAML
def _yaml_loader_class() -> type:
    import yaml

    class _Loader(yaml.SafeLoader):
        """SafeLoader that also reads ``1e-5`` as a float (YAML 1.2 does; PyYAML's 1.1 reads a string)."""

    _Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return _Loader


_LOADER: type | None = None


class _Counter:
    def __init__(self, source: Source) -> None:
        self.n = 0
        self.source = source

    def tick(self, path: PathT) -> None:
        self.n += 1
        if self.n > MAX_VALUES:
            raise _fail(
                self.source,
                path,
                f"the {self.source.what} expands to more than {MAX_VALUES} values (YAML aliases multiply "
                f"what they copy); expected a {self.source.what}, not a bomb",
            )


def _scalar_ok(value: Any, source: Source, path: PathT) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise _fail(
        source,
        path,
        f"found a {type(value).__name__} ({value!r:.60}); expected a string, number, boolean or null "
        "(quote dates and binary-looking values)",
    )


def _key(value: Any, source: Source, path: PathT) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        raise _fail(
            source,
            path,
            f"found the key {value!r}; expected a string (YAML 1.1 reads yes/no/on/off/null as "
            "booleans or null: quote the key)",
        )
    if isinstance(value, int):
        return str(value)
    raise _fail(source, path, f"found a {type(value).__name__} key; expected a string")


def _flow_depth(text: str, limit: int | None = None) -> int:
    """Deepest nesting of [ and { outside quotes: a cheap check before the recursive YAML composer.

    With ``limit``: the 1-based line where the nesting first goes deeper than ``limit`` (0: never).
    """
    depth = deepest = 0
    line = 1
    quote = ""
    for ch in text:
        if ch == "\n":
            line += 1
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if limit is not None and depth > limit:
                return line
        elif ch in "]}":
            depth -= 1
    return deepest if limit is None else 0


def _from_yaml(text: str, source: Source) -> Any:
    import yaml

    deep_line = _flow_depth(text, MAX_DEPTH)
    if deep_line:
        raise SpecError(
            f"{source.name or '<spec>'}:{deep_line}: the {source.what} nests too deeply; expected at most "
            f"{MAX_DEPTH} levels"
        )

    global _LOADER
    if _LOADER is None:
        _LOADER = _yaml_loader_class()
    loader = _LOADER(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            line = getattr(loader, "line", None)  # where the reader was when the nesting ran out
            where = f"{source.name or '<spec>'}" + (f":{line + 1}" if isinstance(line, int) else "")
            raise SpecError(
                f"{where}: the YAML nests too deeply; expected at most {MAX_DEPTH} levels"
            ) from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
            where = f"{source.name or '<spec>'}:{mark.line + 1}" if mark else (source.name or "<spec>")
            problem = getattr(e, "problem", None) or str(e)
            raise SpecError(f"{where}: not valid YAML: {problem}") from None
        if node is None:
            return None
        counter = _Counter(source)
        active: set[int] = set()
        flattened: dict[int, int] = {}  # id(mapping node) -> how many leading pairs '<<' merged in
        explicit: dict[int, set] = {}

        def convert(node: Any, path: PathT, depth: int) -> Any:
            counter.tick(path)
            source.lines.setdefault(path, node.start_mark.line + 1)
            if depth > MAX_DEPTH:
                raise _fail(
                    source, path, f"the {source.what} nests too deeply; expected at most {MAX_DEPTH} levels"
                )
            if id(node) in active:
                raise _fail(source, path, "a YAML alias refers to itself (a recursive structure)")
            if isinstance(node, yaml.ScalarNode):
                if node.tag in _NUMBER_TAGS and len(node.value) > MAX_NUMBER_CHARS:
                    raise _fail(
                        source,
                        path,
                        f"a number written with {len(node.value):,} characters; expected at most "
                        f"{MAX_NUMBER_CHARS} (quote it if it is text)",
                    )
                try:
                    value = loader.construct_object(node, deep=True)
                except yaml.YAMLError as e:
                    raise _fail(source, path, f"cannot read this value: {getattr(e, 'problem', e)}") from None
                except (ValueError, OverflowError) as e:  # a constructor's own limits
                    raise _fail(source, path, f"cannot read this value ({type(e).__name__})") from None
                return _scalar_ok(value, source, path)
            if node.tag not in ("tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"):
                raise _fail(
                    source,
                    path,
                    f"found the YAML tag {node.tag!r}; a {source.what} takes plain mappings and lists",
                )
            active.add(id(node))
            try:
                if isinstance(node, yaml.SequenceNode):
                    return [convert(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
                if isinstance(node, yaml.MappingNode):
                    merged = _flatten(loader, node, flattened, source, path)
                    out: dict[str, Any] = {}
                    for i, (knode, vnode) in enumerate(node.value):
                        if not isinstance(knode, yaml.ScalarNode):
                            raise _fail(
                                source, path, "found a list or mapping used as a key; expected a string"
                            )
                        if knode.tag in _NUMBER_TAGS and len(knode.value) > MAX_NUMBER_CHARS:
                            raise _fail(
                                source, path, f"a key of {len(knode.value):,} digits; expected a string"
                            )
                        try:
                            raw_key = loader.construct_object(knode)
                        except yaml.YAMLError as e:
                            raise _fail(
                                source, path, f"cannot read a key: {getattr(e, 'problem', e)}"
                            ) from None
                        key = _key(raw_key, source, path)
                        # an explicit key overrides one merged in by '<<' (keeping its place);
                        # two explicit ones are a duplicate
                        if key in out and i >= merged and key in explicit.get(id(node), ()):
                            source.lines[(*path, key)] = knode.start_mark.line + 1
                            raise _fail(source, (*path, key), f"duplicate key {key!r}")
                        if i >= merged:
                            explicit.setdefault(id(node), set()).add(key)
                        # the key's own line: a block value starts on the next line
                        source.lines[(*path, key)] = knode.start_mark.line + 1
                        out[key] = convert(vnode, (*path, key), depth + 1)
                    return out
            finally:
                active.discard(id(node))
            raise _fail(source, path, f"unsupported YAML node {type(node).__name__}")  # pragma: no cover

        return convert(node, (), 0)
    finally:
        loader.dispose()


_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


def _flatten(loader: Any, node: Any, flattened: dict, source: Source, path: PathT) -> int:
    """Resolve ``<<`` merge keys in place; returns how many leading pairs came from merges.

    PyYAML puts the merged pairs first and the mapping's own after them; of the merged pairs the
    first mapping named wins, and an explicit key overrides a merged one (YAML's merge-key rules).
    An alias reaches the same node again: it is flattened once and the count remembered.
    """
    import yaml

    if id(node) in flattened:
        return flattened[id(node)]
    own = sum(1 for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge")
    try:
        loader.flatten_mapping(node)
    except yaml.YAMLError as e:
        raise _fail(source, path, f"bad merge key: {getattr(e, 'problem', e)}") from None
    merged = len(node.value) - own
    flattened[id(node)] = merged
    return merged


# ---------------------------------------------------------------------------------------------- dicts
def _check_plain(obj: Any, source: Source) -> Any:
    """Copy a Python/JSON value, checking types, depth, size and self-references."""
    counter = _Counter(source)
    active: set[int] = set()

    def walk(value: Any, path: PathT, depth: int) -> Any:
        counter.tick(path)
        if depth > MAX_DEPTH:
            raise _fail(source, path, f"the spec nests too deeply; expected at most {MAX_DEPTH} levels")
        if isinstance(value, (dict, list, tuple)):
            if id(value) in active:
                raise _fail(source, path, "the spec contains itself (a self-reference)")
            active.add(id(value))
            try:
                if isinstance(value, dict):
                    return {
                        _key(k, source, path): walk(v, (*path, str(k)), depth + 1) for k, v in value.items()
                    }
                return [walk(v, (*path, i), depth + 1) for i, v in enumerate(value)]
            finally:
                active.discard(id(value))
        return _scalar_ok(value, source, path)

    return walk(obj, (), 0)


ENVELOPE_KEYS = ("format", "version", "json")


def envelope(spec: dict) -> dict:
    """Wrap a spec for provenance: its JSON text keeps the key order, which a spec depends on.

    Chain children, graph nodes, inputs and parameters are ordered mappings; a checkpoint writer
    that sorts JSON keys would silently reorder a plain dict, but not the text inside this one.
    """
    return {"format": "torchsmith.spec", "version": 1, "json": json.dumps(spec, separators=(",", ":"))}


def _from_envelope(data: dict) -> Spec:
    if (
        data.get("format") != "torchsmith.spec"
        or data.get("version") != 1
        or not isinstance(data.get("json"), str)
    ):
        raise SpecError(
            f"found a spec envelope with format {data.get('format')!r} version {data.get('version')!r}; "
            "expected format 'torchsmith.spec' version 1 with its JSON text"
        )
    text = data["json"]
    if len(text) > MAX_BYTES:
        raise SpecError(f"<recorded spec>: longer than {MAX_BYTES} bytes")
    try:
        raw = json.loads(text)
    except RecursionError:
        raise SpecError(f"<recorded spec>: nests too deeply; expected at most {MAX_DEPTH} levels") from None
    except ValueError as e:
        raise SpecError(f"<recorded spec>: not valid JSON: {e}") from None
    source = Source("<recorded spec>")
    data = _check_plain(raw, source)
    if not isinstance(data, dict):
        raise SpecError("<recorded spec>: expected a mapping")
    return Spec(data, source=source)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _from_json_file(text: str, name: str) -> Spec:
    """A ``.json`` file is strict JSON (no comments, trailing commas, NaN); lines come from YAML.

    YAML would accept ``#`` comments and lenient flow syntax, so a file named ``.json`` is first
    parsed by ``json``; when the YAML reading of it gives the same value, its line numbers are kept.
    """
    try:
        raw = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise SpecError(f"{name}: the JSON nests too deeply; expected at most {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as e:
        raise SpecError(
            f"{name}:{e.lineno}: not valid JSON: {e.msg} (column {e.colno}); a .json spec is strict "
            "JSON: no comments, no trailing commas (use .yaml for those)"
        ) from None
    except ValueError as e:
        raise SpecError(f"{name}: not valid JSON: {e}") from None
    source = Source(name)
    data = _check_plain(raw, source)
    try:
        lined_source = Source(name)
        lined = _from_yaml(text, lined_source)
    except SpecError as e:
        if "duplicate key" in str(e):  # json.loads keeps the last of two keys silently
            raise
        lined = None
    if lined == data:
        source = lined_source
    if not isinstance(data, dict):
        raise SpecError(
            f"{name}: the spec must be a mapping (keys such as 'chain', 'graph', 'type', 'blocks'); "
            f"found {type(data).__name__ if data is not None else 'null'}"
        )
    return Spec(data, source=source)


def _looks_like_path(text: str) -> bool:
    if "\n" in text or text.lstrip().startswith(("{", "[")):
        return False
    if os.path.exists(text):
        return True
    stripped = text.strip()
    if re.search(r"\.(ya?ml|json)$", stripped, re.I):
        return True
    # one word with no YAML mapping in it ('model', 'specs/unet') is a file name, not a spec
    return bool(stripped) and ": " not in stripped and not stripped.endswith(":") and " " not in stripped


def _read_text_file(path: Path, what: str) -> str:
    """A spec or recipe file's text: a regular file of at most :data:`MAX_BYTES`, UTF-8."""
    import stat

    try:
        st = path.stat()
    except OSError as e:
        raise SpecError(f"{path}: cannot read the {what} file: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SpecError(f"{path}: the {what} file is not a regular file (a folder, device or FIFO)")
    if st.st_size > MAX_BYTES:
        raise SpecError(f"{path}: the {what} file has {st.st_size:,} bytes; expected at most {MAX_BYTES:,}")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)  # the file may grow after the stat
    except OSError as e:
        raise SpecError(f"{path}: cannot read the {what} file: {e.strerror or e}") from None
    if len(data) > MAX_BYTES:
        raise SpecError(f"{path}: the {what} file has more than {MAX_BYTES:,} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: the {what} file is not UTF-8 text (byte {e.start})") from None


def read_yaml(path_or_text: str | os.PathLike, what: str = "recipe") -> tuple[Any, Source]:
    """Read a YAML (or JSON) file, or text, with the spec reader's limits and line numbers.

    What :func:`load_spec` does for specs, for any document (recipes): a regular file of at most
    2 MB, no tags, no duplicate keys, at most 64 levels and 200,000 values, numbers of at most
    :data:`MAX_NUMBER_CHARS` characters, each checked while parsing. Returns the plain value and a
    :class:`Source` whose ``line(path)`` gives the line of each key. Errors are
    :class:`~torchsmith.errors.SpecError` naming ``FILE:LINE``.

    >>> data, source = read_yaml("train:\\n  epochs: 3\\n", what="recipe")
    >>> data["train"]["epochs"], source.line(("train", "epochs"))
    (3, 2)
    """
    if isinstance(path_or_text, os.PathLike):
        path = Path(path_or_text)
        text, name = _read_text_file(path, what), str(path)
    else:
        text, name = path_or_text, f"<{what}>"
        if len(text.encode("utf-8", "replace")) > MAX_BYTES:
            raise SpecError(f"{name}: longer than {MAX_BYTES:,} bytes")
    source = Source(name, what=what)
    return _from_yaml(text, source), source


def load_spec(path_or_text: str | os.PathLike | dict) -> Spec:
    """Load a spec from a YAML/JSON file, YAML/JSON text, or a dict; returns a :class:`Spec` (a dict).

    Text and files are read with a safe YAML reader (JSON is read the same way, or with ``json`` when
    it is not also valid YAML). Limits: at most 2 MB of text, 64 levels of nesting and 200,000
    values after alias expansion; a duplicate key, a recursive alias or a non-JSON value (a date, a
    custom tag) is a :class:`~torchsmith.errors.SpecError` naming the line.

    >>> load_spec({"type": "Linear", "in_features": 4, "out_features": 2})["type"]
    'Linear'
    """
    if isinstance(path_or_text, Spec):
        return path_or_text
    if isinstance(path_or_text, dict) and set(path_or_text) == set(ENVELOPE_KEYS):
        return _from_envelope(path_or_text)
    if isinstance(path_or_text, dict):
        source = Source(None)
        return Spec(_check_plain(path_or_text, source), source=source)
    if isinstance(path_or_text, os.PathLike) or (
        isinstance(path_or_text, str) and _looks_like_path(path_or_text)
    ):
        path = Path(path_or_text)
        text = _read_text_file(path, "spec")
        name = str(path)
    elif isinstance(path_or_text, str):
        text, name = path_or_text, "<spec>"
        if len(text.encode("utf-8", "replace")) > MAX_BYTES:
            raise SpecError(f"<spec>: the spec text is longer than {MAX_BYTES} bytes")
    else:
        raise SpecError(
            f"a spec must be a dict, YAML/JSON text or a file path; got {type(path_or_text).__name__}"
        )
    source = Source(name)
    if name.lower().endswith(".json"):
        return _from_json_file(text, name)
    try:
        data = _from_yaml(text, source)
    except SpecError as yaml_error:
        if not (name.endswith(".json") or text.lstrip().startswith(("{", "["))):
            raise
        try:  # valid JSON that is not valid YAML 1.1 (tabs, some escapes)
            raw = json.loads(text)
        except RecursionError:
            raise SpecError(
                f"{name}: the JSON nests too deeply; expected at most {MAX_DEPTH} levels"
            ) from None
        except json.JSONDecodeError as e:
            raise SpecError(f"{name}:{e.lineno}: not valid JSON: {e.msg}") from None
        except ValueError:
            raise yaml_error from None
        source = Source(name)
        data = _check_plain(raw, source)
    if not isinstance(data, dict):
        raise SpecError(
            f"{name}: the spec must be a mapping (keys such as 'chain', 'graph', 'type', 'blocks'); "
            f"found {type(data).__name__ if data is not None else 'an empty document'}"
        )
    return Spec(data, source=source)
