"""What every stage shares and none owns: error kinds, option checks, strict JSON, device choice, file hashes.

Below extract/, cache/ and student/ alike (each imports it; it imports none of them).
- Errors: the exception kinds every stage raises; the CLI turns each into a one-line message.
- Option checks: numbers in range, names from a known set, plain names, raising the stage's error.
- Strict JSON for every file egodistill writes and every `--json` it prints: Python's `json` writes
  bare `NaN`/`Infinity`, which other readers (jq, JavaScript, Go) refuse, so `dumps` turns non-finite
  floats into null, numpy into plain Python and paths into strings, and encodes with allow_nan=False.
- `pick_device`: the one device choice extraction and the student share.
- `file_sha256`: the hash that names weights, heads and imported files in provenance.
- `atomic_write`: the one way a file is replaced (a reader sees the old bytes or the new, never half).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


def egodistill_version() -> str:
    """The installed egodistill's version (`egodistill.__version__`, and what caches and exports record)."""
    try:
        return metadata.version("egodistill")
    except metadata.PackageNotFoundError:
        return "0+unknown"


# --- errors ------------------------------------------------------------------------------


class EgodistillError(Exception):
    """Base: a problem the user can fix. `str(err)` names the thing and the fix, in one line."""


class ManifestError(EgodistillError):
    """A manifest file cannot be read: missing, unknown format, or a malformed row (file:line)."""


class MediaError(EgodistillError):
    """A video or audio stream cannot be decoded (missing, empty, truncated, unknown codec, no audio)."""


class TeacherError(EgodistillError):
    """A backbone, weights file or head file that cannot be used (unknown, does not fit, wrong class count)."""


class CacheError(EgodistillError):
    """A cache that cannot be opened, written, or that holds something else than asked for."""


class ExtractError(EgodistillError):
    """An extract option that cannot be used: an unknown modality or flow method, a count or rate out of range."""


class DeviceError(EgodistillError):
    """A --device this machine does not have."""


def first_line(err: BaseException, limit: int = 200) -> str:
    """An exception as one short line: its message's first line, else its type's name."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__


# --- option checks -------------------------------------------------------------------------

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


# --- strict JSON ---------------------------------------------------------------------------

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
    return atomic_write(path, dumps(obj, default, indent=indent) + "\n")


# --- device and files ----------------------------------------------------------------------

def pick_device(name: str) -> torch.device:
    """"auto": cuda when torch sees a GPU, else cpu; "cpu", "cuda" or "cuda:N" as asked, when present."""
    import torch  # heavy: only the stages that compute pay for it

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"--device {name} asked for, but torch sees no CUDA GPU: use --device cpu or auto")
    return torch.device(name)


@functools.cache
def cpu_has_bf16() -> bool:
    """The CPU multiplies bf16 natively (avx512_bf16 or amx_bf16): bf16 matrix products are then ~3-4x fp32's,
    while emulated bf16 is slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def file_sha256(path: str | os.PathLike) -> str:
    """"sha256:<hex>" of a file's bytes (weights, heads, imported files), read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def atomic_write(path: str | os.PathLike, data: str | bytes | Callable[[Path], None]) -> Path:
    """Replace `path` with `data` (text, bytes, or a function that writes a given temporary path), atomically:
    a reader, or a kill mid-write, sees the old file or the new one, never half of one. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")  # unique: threads may race on one path
    os.close(fd)
    tmp = Path(name)
    try:
        if callable(data):
            data(tmp)
        elif isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file 0600: give it the mode open() would, so the lab reads it
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _umask() -> int:
    """The process's umask. os.umask can only be read by setting it; /proc gives it without that race."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
