"""The cache as a map-style `torch.utils.data.Dataset`, for a lab's own training loop (plain PyTorch, Lightning, mmengine).

`dataset(location, split="train", inputs=["rgb"], teachers=["rgb", "flow", "audio"], frames=8)` gives, per
segment of the split that has at least one input, what `train-student`'s evaluation-mode `CacheLoader` gives
for it: the window of `frames` rows of each input (placed as evaluation places it), the present-mask, the
labels and the teacher logits. It is built from student/data.py's pieces, so names resolve, windows are
placed and logits are tabled exactly as there; only the reading differs: one `read_features` /
`read_frames` call per input and item, over that segment's own rows.

That per-segment read is what a shuffled `DataLoader` needs. It is slower than `CacheLoader`'s whole-shard
reads (one call per block of segments); on a large remote cache, sample in cache order (or blocks of it,
`Teacher.blocks()`) so a worker's reads fall in the same shards, or hand your loop `CacheLoader` itself.

The dataset pickles without its open cache: each `DataLoader` worker opens the cache on its first item.
Give the DataLoader `multiprocessing_context="spawn"` (or "forkserver"): the store is read with tensorstore,
which aborts a forked child once its parent has read anything with it (one `data[0]` is enough).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from egodistill import cache
from egodistill.common import EgodistillError
from egodistill.student.data import frame_indices, present_inputs, teacher_logit_table, teacher_views
from egodistill.student.sources import resolve_frames, resolve_inputs, resolve_teachers, split_names


class DatasetError(EgodistillError):
    """A dataset that cannot be made from this cache as asked (split, inputs, teachers, frames)."""


class SegmentDataset(torch.utils.data.Dataset):
    """One item per segment: a dict that `default_collate` batches (see `dataset` for its keys)."""

    def __init__(self, location: str, split: str, inputs: str | Sequence[str], teachers: str | Sequence[str], frames: int, window: float) -> None:
        if frames < 1:
            raise DatasetError(f"frames={frames}: give a whole number >= 1 of rows per window")
        if not 0.0 <= window <= 1.0:
            raise DatasetError(f"window={window}: give where the window sits in its segment, from 0 (first rows) to 1 (last rows); 0.5 is centred")
        opened = cache.open_cache(location, mode="r")
        table = opened.segments
        splits = sorted(set(table.split.tolist()))
        if split not in splits:
            raise DatasetError(f"split {split!r} is not in cache {location} (its splits: {', '.join(splits) or 'none'}): pick one of those")
        self.location, self.split, self.frames = str(location), split, frames
        self.input_names = split_names(inputs)  # "rgb,flow" or ["rgb", "flow"]
        if not self.input_names:
            raise DatasetError("inputs is empty: name at least one modality or teacher key, e.g. inputs=['rgb']")
        # A frames name resolves to its frames teacher, any other to a feature teacher (the loader reads either).
        self.input_keys = [resolve_frames(opened, [n]) or resolve_inputs(opened, [n], "inputs")[0] for n in self.input_names]
        if len(set(self.input_keys)) != len(self.input_keys):
            raise DatasetError(f"inputs {', '.join(self.input_names)} name the same teacher twice: list each once")
        self.teacher_keys = resolve_teachers(opened, split_names(teachers), table.heads, "teachers") if split_names(teachers) else []
        views = teacher_views(opened, self.teacher_keys) if self.teacher_keys else None
        if views and views.frames != frames:
            raise DatasetError(f"the teachers' logits are per view of {views.frames} rows, and frames={frames}: pass frames={views.frames} so student and teachers see the same rows")
        # Evaluation's window: the view nearest `window` where the teachers have views, else `window` itself.
        self.views = views
        self.view = views.nearest(window) if views else None
        placement = views.placements[self.view] if views else window
        present = present_inputs(opened, self.input_keys)
        self.segments = np.flatnonzero((table.split == split) & present.any(axis=1))
        if len(self.segments) == 0:
            raise DatasetError(f"no {split!r} segments have rows in inputs {', '.join(self.input_names)}: extract them first (`egodistill extract`)")
        self.segment_ids = table.ids[self.segments]
        self.present = present[self.segments]
        self.labels = {h: y[self.segments].astype(np.int64) for h, y in table.labels.items()}
        logits = teacher_logit_table(opened, self.teacher_keys, list(table.heads), views=bool(views)) if self.teacher_keys else {}
        self.teacher_logits = {h: v[self.segments] for h, v in logits.items()}
        teachers_of = [opened.teacher(k) for k in self.input_keys]
        self.frames_input = [bool(t.has_frames) for t in teachers_of]
        # Per input: each segment's first row, and its window's rows inside the segment.
        self.starts = [t.offsets[self.segments].astype(np.int64) for t in teachers_of]
        self.windows = [frame_indices(t.offsets[self.segments + 1] - t.offsets[self.segments], frames, np.full(len(self.segments), placement))
                        for t in teachers_of]
        self._opened: cache.Cache | None = opened
        self._opened_in = os.getpid()

    def __len__(self) -> int:
        return len(self.segments)

    def __getstate__(self) -> dict:
        # Workers get the tables, not the open store: zarr handles are not shared across processes.
        return {**self.__dict__, "_opened": None}

    def __getitem__(self, i: int) -> dict:
        if self._opened is None or self._opened_in != os.getpid():  # a worker (spawned, or forked with the parent's handle) opens its own
            self._opened, self._opened_in = cache.open_cache(self.location, mode="r"), os.getpid()
        features = {}
        for m, (name, key) in enumerate(zip(self.input_names, self.input_keys)):
            teacher = self._opened.teacher(key)
            read = teacher.read_frames if self.frames_input[m] else teacher.read_features
            shape = tuple(teacher.frame_shape) if self.frames_input[m] else (teacher.feature_dim,)
            if self.present[i, m]:
                window = self.windows[m][i]
                lo, hi = int(self.starts[m][i] + window.min()), int(self.starts[m][i] + window.max()) + 1
                rows = read([(lo, hi)])  # the window's span only: one read call, not one per row
                out = rows[window - (lo - self.starts[m][i])]
            else:  # absent, as the loader hands it over: zeros
                out = np.zeros((self.frames, *shape), dtype=np.uint8 if self.frames_input[m] else np.float16)
            features[name] = torch.from_numpy(np.ascontiguousarray(out))
        return {
            "index": torch.tensor(int(self.segments[i])),
            "features": features,
            "present": torch.from_numpy(self.present[i].copy()),
            "labels": {h: torch.tensor(int(y[i])) for h, y in self.labels.items()},
            "teacher_logits": {h: torch.from_numpy(v[i].copy()) for h, v in self.teacher_logits.items()},
        }


def dataset(location: str, split: str = "train", inputs: str | Sequence[str] = ("rgb",), teachers: str | Sequence[str] = (),
            frames: int = 8, window: float = 0.5) -> SegmentDataset:
    """The segments of `split` with at least one of `inputs`, as a map-style Dataset (picklable for DataLoader workers).

    Names resolve as `train-student --inputs/--teachers` resolve them (a modality or a teacher key; "frames" for
    stored frames). Each item is a dict:
      "index": int64 [], the segment's index in the cache (`SegmentDataset.segment_ids` has the ids);
      "features": input name -> float16 [frames, D] rows (a frames teacher: uint8 [frames, H, W, 3], uncropped),
                  the window placed at `window` of the free room (0.5 centred; with teacher views, the view nearest it);
                  zeros where absent;
      "present": bool [inputs];
      "labels": head -> int64 [], -1 unlabelled;
      "teacher_logits": head -> float32 [teachers, C], or [teachers, V, C] when the teachers have views
                        (`SegmentDataset.views` are those views, `.view` the index of the one the window is); NaN where a
                        teacher has no logits for the segment; empty without `teachers`.
    Raises DatasetError or a CacheError (one line) for an unknown split, input or teacher."""
    return SegmentDataset(location, split, inputs, teachers, frames, window)
