"""Whole-block reads of a teacher's rows (feature rows, or stored frames): many (start, stop) spans issued at once.

zarr-python costs ~1.5 ms per call and decodes shards slowly; tensorstore's zarr3 driver reads the
same arrays (they are plain Zarr v3) with its own thread pool, several times faster
(bench/RESULTS.md). It reads caches on a local or NFS path; other stores (S3, GCS, HTTP, a
read-through copy, whose credentials and wrappers live in fsspec and zarr) are read by zarr-python,
a few spans at a time on threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zarr

ZARR_READ_THREADS = 4  # zarr-python releases the GIL while it waits on I/O and decompresses


class RowReader:
    """Reads rows of one row-major array (`features` [rows, D], `frames` [rows, H, W, 3]); opened once, used for every block."""

    def __init__(self, array: zarr.Array, local_path: Path | None) -> None:
        self.array = array
        self.row_shape = tuple(int(n) for n in array.shape[1:])
        self.dtype = array.dtype
        self._store = None
        if local_path is not None:
            import tensorstore as ts

            spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(local_path)}}
            self._store = ts.open(spec, read=True).result()
        self._pool: ThreadPoolExecutor | None = None

    def read(self, spans: Sequence[tuple[int, int]]) -> np.ndarray:
        """Rows of every span, concatenated in order: [sum of lengths, *row shape] of the array's dtype."""
        spans = [(int(a), int(b)) for a, b in spans if b > a]
        if not spans:
            return np.zeros((0, *self.row_shape), dtype=self.dtype)
        if self._store is not None:
            pending = [self._store[a:b].read() for a, b in spans]  # all issued before any is awaited
            parts = [p.result() for p in pending]
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=ZARR_READ_THREADS, thread_name_prefix="egodistill-read")
            parts = list(self._pool.map(lambda span: self.array[span[0]:span[1]], spans))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
