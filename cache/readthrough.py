"""A read-through local copy of a remote cache: each data object is fetched whole once, then read from disk.

fsspec's own `simplecache::`/`filecache::` chaining does not work under zarr 3's async store
(its HTTP and S3 sessions live on another event loop), so this wraps zarr's store instead.
Shards are fetched whole on first touch, which matches how the loader reads (whole blocks);
later byte-range reads of the same shard are served from the local file. Arrays' metadata is
kept too (it never changes); groups' metadata (`zarr.json` with the task records, which change
while an extraction runs) is always read from the remote store, so finished tasks show up.

Cached objects are trusted: after a teacher is removed and extracted again under the same
key, or after `--retry-failed`, clear the folder.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import WrapperStore

from egodistill.common import atomic_write


class ReadThroughStore(WrapperStore[Store]):
    """Wraps a read-only remote store; data objects are copied under `folder/<url hash>/<key>` on first read."""

    def __init__(self, store: Store, folder: str | os.PathLike, url: str) -> None:
        super().__init__(store)
        self.url = url
        self.folder = Path(folder) / hashlib.sha256(url.encode()).hexdigest()[:16]

    def _with_store(self, store: Store) -> ReadThroughStore:
        return type(self)(store, self.folder.parent, self.url)

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        path = self.folder / key
        if key.rsplit("/", 1)[-1] == "zarr.json" and not path.exists():
            # An array's metadata never changes once created, so it is kept; a group's holds
            # attributes (task records) that do change, so it is always read from the remote.
            value = await self._store.get(key, prototype, byte_range)
            if value is not None and byte_range is None and b'"node_type": "array"' in value.to_bytes().replace(b'"node_type":"array"', b'"node_type": "array"'):
                await asyncio.to_thread(atomic_write, path, value.to_bytes())
            return value
        if not path.exists():
            whole = await self._store.get(key, prototype)
            if whole is None:
                return None  # absent (fill value only): nothing to keep, ask again next time
            await asyncio.to_thread(atomic_write, path, whole.to_bytes())
        data = await asyncio.to_thread(_read_range, path, byte_range)
        return prototype.buffer.from_bytes(data)

    async def get_partial_values(self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(key, prototype, byte_range) for key, byte_range in key_ranges)))

    def __str__(self) -> str:
        return f"read-through({self.url} -> {self.folder})"



def _read_range(path: Path, byte_range: ByteRequest | None) -> bytes:
    with open(path, "rb") as f:
        if byte_range is None:
            return f.read()
        if isinstance(byte_range, RangeByteRequest):
            f.seek(byte_range.start)
            return f.read(byte_range.end - byte_range.start)
        if isinstance(byte_range, OffsetByteRequest):
            f.seek(byte_range.offset)
            return f.read()
        if isinstance(byte_range, SuffixByteRequest):
            f.seek(max(0, os.fstat(f.fileno()).st_size - byte_range.suffix))
            return f.read()
    raise TypeError(f"unknown byte range {byte_range!r}")
