"""Regular expressions from data run in linear time (RE2), with a length cap.

A pattern stored in a checkpoint's metadata, a spec or a recipe (``re:(a+)+b``) would make Python's
backtracking ``re`` take exponential time on a module name; RE2 (``google-re2``) matches in time
linear in the text, and refuses the few constructs that need backtracking (backreferences,
lookarounds). Every ``re:`` pattern torchsmith accepts goes through :func:`compile_regex`.

>>> compile_regex(r"layer\\d+\\.conv").fullmatch("layer1.conv") is not None
True
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["MAX_PATTERN_LENGTH", "MAX_SUBJECT_LENGTH", "compile_regex"]

MAX_PATTERN_LENGTH = 1000
MAX_SUBJECT_LENGTH = 10_000  # module paths and state-dict keys are far shorter
_CACHE: dict[str, Any] = {}


def compile_regex(pattern: str) -> Any:
    """A compiled RE2 pattern (``fullmatch``/``match``/``search``/``sub`` like ``re``).

    Raises ``re.error`` (so callers report it like any bad regex) for a pattern that is too long,
    malformed, or needs backtracking.
    """
    if not isinstance(pattern, str):
        raise re.error(f"expected a string, got {type(pattern).__name__}")
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise re.error(f"{len(pattern)} characters; patterns are limited to {MAX_PATTERN_LENGTH}")
    rx = _CACHE.get(pattern)
    if rx is None:
        import re2

        options = re2.Options()
        options.log_errors = False  # the error is reported to the caller, not logged to stderr
        options.max_mem = 8 << 20
        try:
            rx = re2.compile(pattern, options)
        except re2.error as e:
            why = e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else str(e)
            raise re.error(f"{why} (patterns run on RE2: no backreferences or lookarounds)") from None
        if len(_CACHE) < 4096:
            _CACHE[pattern] = rx
    return rx
