"""One writer per teacher: a lease file beside the teacher's arrays, named after its holder.

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
    """Hold the lease on teacher `key` (its folder; None on a remote store) for the block; yields `renew()`."""
    if folder is None:
        yield lambda: None
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LEASE_FILE
    me = _holder()
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text())
            except (OSError, ValueError):
                holder = {}
            if holder and _alive(holder):
                raise CacheError(
                    f"teacher {key} is being extracted by {describe_holder(holder)}: "
                    f"wait for that run to finish (or delete {path} if it is gone)"
                ) from None
            path.unlink(missing_ok=True)  # stale: its holder died
            continue
        with os.fdopen(fd, "w") as f:
            f.write(dumps(me))
        break
    else:
        raise CacheError(f"could not take the lease {path}: another run took it at the same moment; retry")
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
