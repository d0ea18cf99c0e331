"""Parameters inside specs: ``$name`` references and small ``${...}`` expressions, never ``eval``.

A spec's ``params`` (and a block's parameters) are substituted into the values that use them:

- ``"$width"`` is replaced by the value of ``width`` (any type: a number, a list, a bool);
- ``"${width * 2 // factor}"`` is computed by a whitelist interpreter over Python's expression
  syntax tree: numbers, strings, ``+ - * / // %``, comparisons, ``and/or/not``, ``a if c else b``,
  lists, and the functions ``min max int float round abs``. Names are looked up in the parameters
  only; attribute access, subscripts, calls to anything else and ``**`` are refused;
- ``"torchvision:${backbone}"`` interpolates expressions inside a longer string;
- ``"$$"`` at the start writes a literal ``$``.

>>> substitute("${width * 2}", {"width": 8})
16
>>> substitute(["$act", "x${n}"], {"act": "ReLU", "n": 3})
['ReLU', 'x3']
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Mapping
from typing import Any

from torchsmith.errors import close_matches

__all__ = ["ExprError", "evaluate", "substitute"]

MAX_EXPR_CHARS = 300
MAX_INT = 2**53
MAX_STR = 10_000

_NAME = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)$")
_INTERP = re.compile(r"\$\{([^{}]*)\}")

_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_CMPOPS = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_FUNCS = {"min": min, "max": max, "int": int, "float": float, "round": round, "abs": abs}


class ExprError(ValueError):
    """A bad reference or expression; the caller adds the spec path and raises a SpecError."""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float))  # bools count: True * 4 is harmless


def _check_size(value: Any) -> Any:
    if isinstance(value, int) and abs(value) > MAX_INT:
        raise ExprError(f"the result {value:.3e} is too large (limit {MAX_INT})")
    if isinstance(value, str) and len(value) > MAX_STR:
        raise ExprError(f"the result is a string of {len(value)} characters (limit {MAX_STR})")
    return value


def evaluate(text: str, scope: Mapping[str, Any]) -> Any:
    """Compute an expression over ``scope`` with the whitelist interpreter (see the module doc)."""
    if len(text) > MAX_EXPR_CHARS:
        raise ExprError(f"the expression has {len(text)} characters; expected at most {MAX_EXPR_CHARS}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise ExprError(f"cannot parse the expression {text!r}: {getattr(e, 'msg', e)}") from None

    def ev(node: ast.AST, depth: int) -> Any:
        if depth > 50:
            raise ExprError("the expression nests too deeply")
        d = depth + 1
        if isinstance(node, ast.Constant):
            if node.value is None or isinstance(node.value, (bool, int, float, str)):
                return _check_size(node.value)
            raise ExprError(f"unsupported constant {node.value!r}")
        if isinstance(node, ast.Name):
            if node.id in scope:
                return scope[node.id]
            if node.id in ("True", "False", "None"):
                return {"True": True, "False": False, "None": None}[node.id]
            raise ExprError(
                f"unknown parameter {node.id!r}{close_matches(node.id, scope)}; known: {_known(scope)}"
            )
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            left, right = ev(node.left, d), ev(node.right, d)
            both_numbers = _number(left) and _number(right)
            both_strings = isinstance(node.op, ast.Add) and isinstance(left, str) and isinstance(right, str)
            if both_strings and len(left) + len(right) > MAX_STR:  # checked before the string is built
                raise ExprError(
                    f"the result would be a string of {len(left) + len(right)} characters (limit {MAX_STR})"
                )
            if not (both_numbers or both_strings):
                raise ExprError(
                    f"cannot apply {type(node.op).__name__} to {type(left).__name__} "
                    f"and {type(right).__name__}"
                )
            try:
                return _check_size(_BINOPS[type(node.op)](left, right))
            except ZeroDivisionError:
                raise ExprError("division by zero") from None
            except OverflowError:
                raise ExprError("the result is too large") from None
        if isinstance(node, ast.UnaryOp):
            value = ev(node.operand, d)
            if isinstance(node.op, ast.Not):
                return not value
            if isinstance(node.op, (ast.USub, ast.UAdd)) and _number(value):
                return -value if isinstance(node.op, ast.USub) else +value
        if isinstance(node, ast.BoolOp):
            value = ev(node.values[0], d)
            for item in node.values[1:]:
                if (isinstance(node.op, ast.And) and not value) or (isinstance(node.op, ast.Or) and value):
                    return value
                value = ev(item, d)
            return value
        if isinstance(node, ast.Compare):
            left = ev(node.left, d)
            for op, comp in zip(node.ops, node.comparators):
                if type(op) not in _CMPOPS:
                    raise ExprError(f"unsupported comparison {type(op).__name__}")
                right = ev(comp, d)
                try:
                    if not _CMPOPS[type(op)](left, right):
                        return False
                except TypeError as e:
                    raise ExprError(str(e)) from None
                left = right
            return True
        if isinstance(node, ast.IfExp):
            return ev(node.body, d) if ev(node.test, d) else ev(node.orelse, d)
        if isinstance(node, (ast.List, ast.Tuple)):
            if len(node.elts) > 64:
                raise ExprError("the list is too long (limit 64)")
            return [ev(e, d) for e in node.elts]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS:
            if node.keywords or len(node.args) > 8:
                raise ExprError(f"{node.func.id}() takes only a few positional arguments here")
            args = [ev(a, d) for a in node.args]
            if not all(_number(a) or (isinstance(a, list) and all(_number(x) for x in a)) for a in args):
                raise ExprError(f"{node.func.id}() takes numbers here")
            try:
                return _check_size(_FUNCS[node.func.id](*args))
            except (TypeError, ValueError, OverflowError) as e:
                raise ExprError(f"{node.func.id}(): {e}") from None
        raise ExprError(
            f"{type(node).__name__} is not allowed in a spec expression {text!r} (allowed: numbers, "
            "strings, parameters, + - * / // %, comparisons, and/or/not, if-else, lists, "
            "min/max/int/float/round/abs)"
        )

    return ev(tree.body, 0)


def _known(scope: Mapping[str, Any]) -> str:
    return ", ".join(sorted(scope)) or "(none)"


def substitute_str(text: str, scope: Mapping[str, Any]) -> Any:
    """Substitute one string (see :func:`substitute`)."""
    if "$" not in text:
        return text
    if text.startswith("$$"):
        return text[1:]
    m = _NAME.match(text)
    if m:
        name = m.group(1)
        if name not in scope:
            raise ExprError(f"unknown parameter {name!r}{close_matches(name, scope)}; known: {_known(scope)}")
        return scope[name]
    whole = _INTERP.fullmatch(text)
    if whole:
        return evaluate(whole.group(1), scope)
    if "${" in text:
        # Sizes are added up before anything is joined: 100k interpolations of a long value must
        # fail at the limit, not after building a gigabyte string.
        parts: list[str] = []
        total = 0
        pos = 0
        for mm in _INTERP.finditer(text):
            piece = _bounded_str(evaluate(mm.group(1), scope), MAX_STR - total)
            parts += [text[pos : mm.start()], piece]
            total += mm.start() - pos + len(piece)
            pos = mm.end()
            if total > MAX_STR:
                break
        total += len(text) - pos
        if total > MAX_STR:
            raise ExprError(f"the result is a string of more than {MAX_STR} characters (limit {MAX_STR})")
        return "".join(parts) + text[pos:]
    return text


def _bounded_str(value: Any, budget: int) -> str:
    """``str(value)``, refused when it would exceed ``budget`` characters (sized before building)."""
    if _str_size(value, budget + 1, 0) > budget:
        raise ExprError(f"the result is a string of more than {MAX_STR} characters (limit {MAX_STR})")
    return str(value)


def _str_size(value: Any, budget: int, depth: int) -> int:
    # An upper bound on len(str(value)) that stops counting once over budget (shared sublists
    # from YAML aliases would otherwise multiply).
    if isinstance(value, str):
        return len(value) + 2
    if isinstance(value, (list, tuple, dict)):
        if depth > 64:
            return budget + 1
        total = 2
        items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
        for k, v in items:
            total += (
                2
                + (0 if k is None else _str_size(k, budget - total, depth + 1))
                + _str_size(v, budget - total, depth + 1)
            )
            if total > budget:
                return total
        return total
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        return budget + 1
    return 32 if isinstance(value, (int, float, bool)) or value is None else budget + 1


def substitute(value: Any, scope: Mapping[str, Any]) -> Any:
    """Replace ``$name`` and ``${expr}`` in ``value`` (deeply, in lists and dict values)."""
    if isinstance(value, str):
        return substitute_str(value, scope)
    if isinstance(value, list):
        return [substitute(v, scope) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, scope) for k, v in value.items()}
    return value
