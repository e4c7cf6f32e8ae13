"""Checks of user-given option values (numbers in range, names from a known set), raising the stage's one-line error."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from egodistill.cache.errors import EgodistillError

# A teacher key or modality: one path segment of the cache, readable in any shell and on any store.
PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def check_number(error: type[EgodistillError], option: str, value: float | None, *, at_least: float | None = None,
                 above: float | None = None, below: float | None = None, at_most: float | None = None) -> None:
    """Raise `error` naming `option` unless `value` is a finite number within the given bounds (None passes)."""
    if value is None:
        return
    bounds = [(at_least, ">=", lambda v, b: v >= b), (above, ">", lambda v, b: v > b),
              (below, "<", lambda v, b: v < b), (at_most, "<=", lambda v, b: v <= b)]
    wanted = [(bound, sign, holds) for bound, sign, holds in bounds if bound is not None]
    try:
        ok = math.isfinite(value) and all(holds(value, bound) for bound, _, holds in wanted)
    except TypeError:
        ok = False
    if not ok:
        rule = " and ".join(f"{sign} {bound:g}" for bound, sign, _ in wanted)
        raise error(f"{option} {value!r} is out of range: give a {'whole ' if isinstance(value, int) else ''}number {rule}".rstrip())


def check_choice(error: type[EgodistillError], option: str, value: str, choices: Iterable[str]) -> None:
    """Raise `error` naming `option` and the choices unless `value` is one of them."""
    choices = list(choices)
    if value not in choices:
        raise error(f"{option} {value!r} is unknown: use one of {', '.join(choices)}")


def check_plain_name(error: type[EgodistillError], option: str, value: str) -> None:
    """Raise `error` unless `value` is a plain name (letters, digits, `_`, `.`, `-`; no `/`, no leading `.`)."""
    if not PLAIN_NAME.fullmatch(value or ""):
        raise error(f"{option} {value!r} is not a plain name: use letters, digits, '_', '.' and '-' (no '/', not starting with '.' or '-')")
