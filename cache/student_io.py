"""Reads the student's loader needs, beyond cache/read.py: feature rows through one opened array."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import zarr


def feature_reader(teacher: zarr.Group) -> Callable[[int, int], np.ndarray]:
    """A function (start, stop) -> features [rows, D] float16 of rows start:stop.

    The array is opened once here: `read_rows` looks it up (a metadata read) and also decodes the
    timestamps on every call, which a loader reading thousands of blocks does not need."""
    features = teacher["features"]
    return lambda start, stop: features[start:stop]


def feature_dim(teacher: zarr.Group) -> int:
    return int(teacher["features"].shape[1])
