"""Opens the cache root (a local path or an fsspec URL) and guards its schema version."""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path
from typing import Any

import zarr

from cache.errors import CacheError

SCHEMA_VERSION = 1
ROOT_ATTR = "egodistill"


def egodistill_version() -> str:
    try:
        return metadata.version("egodistill")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def is_url(location: str) -> bool:
    return "://" in str(location)


def _store_location(location: str | os.PathLike) -> str:
    location = str(location)
    if location.startswith("file://"):
        return location[len("file://"):]
    return location


def open_cache(location: str | os.PathLike, mode: str = "r", storage_options: dict[str, Any] | None = None) -> zarr.Group:
    """Open the cache root group. mode "r" never writes; "a" creates the root when it is absent."""
    path = _store_location(location)
    if mode == "r" and not is_url(path) and not Path(path, "zarr.json").exists():
        raise CacheError(f"cache {location} not found: run `egodistill extract --cache {location} ...` first")
    if mode != "r" and not is_url(path):
        _check_writable(Path(path))
    kwargs = {"storage_options": storage_options} if is_url(path) and storage_options else {}
    try:
        root = zarr.open_group(path, mode=mode, zarr_format=3, **kwargs)
    except (FileNotFoundError, KeyError) as err:
        raise CacheError(f"cache {location} not found: run `egodistill extract --cache {location} ...` first") from err
    except (OSError, ValueError, TypeError) as err:
        raise CacheError(f"cannot open cache {location}: {_short(err)}") from err
    marker = root.attrs.get(ROOT_ATTR)
    if marker is None:
        if mode == "r" or len(list(root.keys())) > 0:
            raise CacheError(f"{location} is a Zarr group but not an egodistill cache: choose another --cache path")
        root.attrs[ROOT_ATTR] = {"schema_version": SCHEMA_VERSION, "created_with": egodistill_version()}
        return root
    schema = int(marker.get("schema_version", 0))
    if schema > SCHEMA_VERSION:
        raise CacheError(
            f"cache {location} has schema version {schema}, newer than this egodistill understands "
            f"({SCHEMA_VERSION}): upgrade egodistill"
        )
    return root


def _check_writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise CacheError(f"cache path {path} is not writable ({err.strerror or type(err).__name__}): choose a --cache under a folder you can write to") from err


def _short(err: BaseException) -> str:
    return str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
