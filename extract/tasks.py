"""What a modality gives the extraction driver for one task, and what the driver learns back from it.

Every modality (backbone teachers, stored frames, boxes) is one function behind the same contract,
`(TaskSpec, [SegmentJob], device) -> TaskRows` (extract/worker.py `decoded_rows`, extract/boxes.py
`box_rows`); `run_task` writes the rows, its record and ledger, and returns a `TaskResult`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from egodistill.cache.records import Failure


@dataclass
class Timings:
    """Where a task's (or a run's) time went, in seconds. decode and preprocess are summed over the decode
    threads (they overlap the forward); forward, write and wait are the task's own thread; wait is the
    model idle, blocked on a segment not decoded yet."""

    decode: float = 0.0
    preprocess: float = 0.0
    forward: float = 0.0
    write: float = 0.0
    wait: float = 0.0

    def add(self, other: Timings) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


@dataclass
class TaskRows:
    """One task's rows, its segments' in order: features [rows, D] (float16) or frames [rows, H, W, 3] (uint8),
    the time of each row, per-segment logits by head, and the segments that could not be made (their rows
    are left as filled: NaN or zeros; the record says they are not data)."""

    features: np.ndarray
    times: np.ndarray
    logits: dict[str, np.ndarray] = field(default_factory=dict)
    failed: list[Failure] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)   # videos PyAV decoded in decord's place, and why
    timings: Timings = field(default_factory=Timings)    # decode, preprocess, forward, wait (run_task adds write)
    working_since: float = field(default_factory=time.time)  # after any model load: what throughput figures measure


@dataclass(frozen=True)
class TaskResult:
    """What a finished (or already recorded: `skipped`) task reports to the driver's summary."""

    task: int
    skipped: bool
    segments: int
    failed: int = 0
    rows: int = 0
    timings: Timings = field(default_factory=Timings)
    fallbacks: tuple[str, ...] = ()
    working: tuple[float, float] | None = None   # wall-clock span of the task's work, models loaded
