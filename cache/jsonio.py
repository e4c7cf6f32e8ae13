"""Strict JSON for every file egodistill writes and every `--json` it prints: NaN and ±Infinity become null.

Python's `json` writes bare `NaN`/`Infinity`, which other JSON readers (jq, JavaScript, Go, ...)
refuse. `dumps` first turns non-finite floats into None, numpy scalars and arrays into plain Python,
and paths into strings, then encodes with `allow_nan=False`, so its output always parses strictly.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np


def finite_or_none(obj: Any, default: Callable[[Any], Any] | None = None) -> Any:
    """`obj` as plain JSON values: non-finite floats -> None, numpy -> Python, tuples -> lists, paths -> str.

    Anything else goes through `default` (as json's `default=`), or raises TypeError."""
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Mapping):
        return {_key(k): finite_or_none(v, default) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v, default) for v in obj]
    if isinstance(obj, np.ndarray):
        return finite_or_none(obj.tolist(), default)
    if isinstance(obj, np.generic):
        return finite_or_none(obj.item(), default)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if default is not None:
        return finite_or_none(default(obj))
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _key(key: Any) -> Any:
    return key.item() if isinstance(key, np.generic) else key


def dumps(obj: Any, default: Callable[[Any], Any] | None = None, **kw) -> str:
    """`json.dumps` that never writes NaN or Infinity (they become null); `kw` as json.dumps (indent, sort_keys)."""
    return json.dumps(finite_or_none(obj, default), allow_nan=False, **kw)


def write_json(path: str | os.PathLike, obj: Any, default: Callable[[Any], Any] | None = None, indent: int | None = 2) -> Path:
    """Write `obj` as strict JSON (one trailing newline) to `path`, replacing it atomically; returns the path."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dumps(obj, default, indent=indent) + "\n")
    os.replace(tmp, path)
    return path
