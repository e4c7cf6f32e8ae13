"""Opens the cache root (a local path or an fsspec URL) and guards its schema version."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import zarr

from egodistill.common import CacheError, egodistill_version, first_line

# 2: text columns of the segments table as UTF-8 bytes + offsets (1 used zarr-python's string type).
SCHEMA_VERSION = 2
ROOT_ATTR = "egodistill"


READ_CACHE_ENV = "EGODISTILL_READ_CACHE"  # a folder: remote caches opened read-only are read through it
READ_THROUGH = ("filecache::", "simplecache::")  # fsspec's spelling of "keep a local copy" in front of a URL
READ_ONLY_PROTOCOLS = ("http://", "https://")
NEEDS = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}


def is_url(location: str) -> bool:
    return "://" in str(location)


def _store_location(location: str | os.PathLike) -> str:
    location = str(location)
    if location.startswith("file://"):
        return location[len("file://"):]
    return location


def _split_read_through(location: str) -> tuple[str, bool]:
    for prefix in READ_THROUGH:
        if location.startswith(prefix):
            return location[len(prefix):], True
    return location, False


def open_root(
    location: str | os.PathLike,
    mode: str = "r",
    storage_options: dict[str, Any] | None = None,
    read_cache: str | os.PathLike | None = None,
) -> tuple[zarr.Group, Path | None]:
    """The cache's root group, and its folder when it is on a local or NFS path (else None).

    mode "r" never writes; "a" creates the root, marked with this schema version, when it is absent.
    `location` is a path or an fsspec URL (s3://, gs://, http(s):// read-only, file://); credentials
    come from the usual environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, ...). A remote cache
    opened read-only is read through a local folder when `read_cache`, or the EGODISTILL_READ_CACHE
    environment variable, names one, or when the URL starts with `filecache::`/`simplecache::`."""
    path, chained = _split_read_through(_store_location(location))
    if chained and not is_url(path):
        path, chained = _store_location(path), False  # a local cache needs no local copy
    if mode in ("r", "r+") and not is_url(path) and not Path(path, "zarr.json").exists():  # r+: an existing cache only
        _refuse_absent(location, Path(path))
    if mode != "r" and chained:
        raise CacheError(f"{location} is a read-through URL, which is for reading: write to {path} itself")
    if mode != "r" and path.startswith(READ_ONLY_PROTOCOLS):
        raise CacheError(f"cache {location} is served over HTTP, which is read-only: write to the server's folder or an s3:// URL")
    if mode != "r" and not is_url(path):
        _check_writable(Path(path))
    try:
        store = _remote_store(path, mode, storage_options, read_cache, chained) if is_url(path) else path
        root = zarr.open_group(store, mode=mode, zarr_format=3)
    except ImportError as err:
        package = NEEDS.get(path.split("://", 1)[0], "the fsspec backend for it")
        raise CacheError(f"opening {location} needs {package}: pip install {package}") from err
    except (FileNotFoundError, KeyError) as err:
        raise CacheError(f"cache {location} not found: run `egodistill extract --cache {location} ...` or `egodistill cache init --manifest FILE --cache {location}` first") from err
    except (OSError, ValueError, TypeError) as err:
        raise CacheError(f"cannot open cache {location}: {first_line(err)}") from err
    if root.attrs.get(ROOT_ATTR) is None:
        if mode == "r" or len(list(root.keys())) > 0:
            raise CacheError(f"{location} is a Zarr group but not an egodistill cache: choose another --cache path")
        root.attrs[ROOT_ATTR] = {"schema_version": SCHEMA_VERSION, "created_with": egodistill_version()}
    return root, None if is_url(path) else Path(path)


def _refuse_absent(location: str | os.PathLike, path: Path) -> None:
    """The one line for a local cache without zarr.json: nothing there, a file, or a folder of something else."""
    create = f"`egodistill cache init --manifest FILE --cache {location}` or `egodistill extract --cache {location} ...`"
    if path.is_dir():
        raise CacheError(f"{location} exists but is not an egodistill cache (it has no zarr.json): choose another path, or run {create} to create one there")
    if path.exists():
        raise CacheError(f"{location} is a file, not an egodistill cache (a folder with zarr.json): choose another path")
    raise CacheError(f"cache {location} not found: run {create} first")


def schema_version(root: zarr.Group) -> int:
    return int(root.attrs[ROOT_ATTR].get("schema_version", 0))


def check_schema(root: zarr.Group, location: str | os.PathLike) -> None:
    """Refuse, in one line, a cache of a newer schema, or of an older one that `cache upgrade` converts."""
    schema = schema_version(root)
    if schema > SCHEMA_VERSION:
        raise CacheError(
            f"cache {location} has schema version {schema}, newer than this egodistill understands "
            f"({SCHEMA_VERSION}): upgrade egodistill"
        )
    if schema < SCHEMA_VERSION:
        raise CacheError(
            f"cache {location} has schema version {schema}, which this egodistill reads after a one-time conversion: "
            f"run `egodistill cache upgrade {location}` (rewrites the segments table; teachers untouched)"
        )


def _remote_store(url: str, mode: str, storage_options: dict[str, Any] | None, read_cache, chained: bool):
    """zarr's fsspec store for `url`, wrapped in a read-through local copy where one is asked for."""
    from zarr.storage import FsspecStore

    store = FsspecStore.from_url(url, storage_options=storage_options or {}, read_only=mode == "r")
    folder = read_cache or os.environ.get(READ_CACHE_ENV) or None
    if mode != "r" or not (folder or chained):
        return store
    from egodistill.cache.readthrough import ReadThroughStore

    if folder is None:  # simplecache::/filecache:: without a folder: a per-user default
        folder = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "egodistill" / "read-through"
    return ReadThroughStore(store, folder, url)


def _check_writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-probe-")  # unique: threads of one process open caches too
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise CacheError(f"cache path {path} is not writable ({err.strerror or type(err).__name__}): choose a --cache under a folder you can write to") from err

