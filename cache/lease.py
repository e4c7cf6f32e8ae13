"""One writer per teacher, and one at a time on the segments table: a lease file named after its holder,
beside the teacher's arrays (`teachers/<key>/`) or at the cache's root (the table).

Zarr readers ignore the file. A lease whose holder process is gone (same host) or that has
not been renewed for `STALE_AFTER_SEC` is taken over. Remote stores have no atomic create
here, so they get no lease: run one extraction per teacher there.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from egodistill.common import CacheError, dumps

LEASE_FILE = "egodistill-lease.json"
STALE_AFTER_SEC = 600.0
SEGMENTS_WAIT_SEC = 300.0  # a 90,000-segment table is written in a few seconds; many jobs may queue behind it
WAIT_POLL_SEC = 0.05
TAKEOVER_GRACE_SEC = 1.0


def _holder() -> dict:
    return {"user": getpass.getuser(), "host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "renewed": time.time()}


def _alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return time.time() - float(holder.get("renewed", 0)) < STALE_AFTER_SEC
    try:
        os.kill(int(holder["pid"]), 0)
    except (ProcessLookupError, ValueError, KeyError):
        return False
    except PermissionError:
        return True
    return True


def current_holder(folder: Path | None) -> dict | None:
    """The live holder of the lease in a teacher's `folder` ({user, host, pid, since, renewed}), or None."""
    try:
        holder = json.loads((folder / LEASE_FILE).read_text()) if folder else None
    except (OSError, ValueError):
        return None
    return holder if holder and _alive(holder) else None


def describe_holder(holder: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(holder.get("since", 0))))
    return f"{holder.get('user')}@{holder.get('host')} pid {holder.get('pid')} since {since}"


@contextmanager
def teacher_lease(folder: Path | None, key: str) -> Iterator[Callable[[], None]]:
    """Hold the lease on teacher `key` (its folder; None on a remote store) for the block; yields `renew()`.
    A live holder is refused at once: an extraction runs for hours."""
    with _lease(folder, f"teacher {key} is being extracted by", "wait for that run to finish", 0.0) as renew:
        yield renew


@contextmanager
def segments_lease(folder: Path | None, location: str, wait_s: float = SEGMENTS_WAIT_SEC) -> Iterator[None]:
    """Hold the lease on the segments table of the cache in `folder` (None on a remote store) for the block.
    Writers queue for it, up to `wait_s`: a table is written in seconds."""
    with _lease(folder, f"the segments table of {location} has been written for over {wait_s:g} s by", "retry when it is done", wait_s):
        yield


@contextmanager
def _lease(folder: Path | None, busy: str, advice: str, wait_s: float) -> Iterator[Callable[[], None]]:
    """The lease file in `folder` for the block: created atomically (O_EXCL), taken over from a dead holder,
    waited for up to `wait_s` while a live one holds it, then refused in one line: "<busy> <holder>: <advice>"."""
    if folder is None:
        yield lambda: None
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LEASE_FILE
    me = _holder()
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text())
            except (OSError, ValueError):
                holder = {}  # being written this instant, or left half-written by a killed run
            if holder and _alive(holder):
                if time.monotonic() >= deadline:
                    raise CacheError(f"{busy} {describe_holder(holder)}: {advice} (or delete {path} if it is gone)") from None
                time.sleep(WAIT_POLL_SEC)
            elif not holder and time.monotonic() < deadline + TAKEOVER_GRACE_SEC:
                time.sleep(WAIT_POLL_SEC)  # give a writer that has just created the file time to fill it
            else:
                path.unlink(missing_ok=True)  # stale: its holder died
            continue
        with os.fdopen(fd, "w") as f:
            f.write(dumps(me))
        break

    def renew() -> None:
        path.write_text(dumps({**me, "renewed": time.time()}))

    try:
        yield renew
    finally:
        try:
            if json.loads(path.read_text()).get("pid") == me["pid"]:
                path.unlink()
        except (OSError, ValueError):
            pass
