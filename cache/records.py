"""The records a cache keeps as JSON attributes: a teacher's provenance, its task records, their failures.

Each is a dataclass built with its own constructor and turned into and out of attributes by
`to_json`/`from_json` here, so the field names of docs/cache-format.md live in one place.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone

from egodistill.common import egodistill_version

# The version of what extraction writes for given settings. Bump it only when the same settings
# would now give other features (a preprocessing fix, another pooling): teachers made before then
# get new keys and are extracted again. A new egodistill version alone changes nothing.
FEATURES_FORMAT = 1

# The label of a segment that has none for a head: the fill of the segments table's `label_<head>` arrays.
UNLABELLED = -1


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Provenance:
    """Everything a teacher's features or logits depend on, and the egodistill version that made them.

    The identity (what `teacher_key` hashes and what resuming compares) is every field except
    `egodistill`, which is kept as a note only: upgrading egodistill never re-extracts a teacher."""

    modality: str
    backbone: str
    weights: str | None = None        # "sha256:<hex>", "random-init:<seed>", "timm-pretrained:<name>", "fitted:..."
    head: str | None = None           # sha256 of the linear heads file, or None
    in_chans: int | None = None
    preprocessing: dict = field(default_factory=dict)
    sampling: dict = field(default_factory=dict)    # {"frames": N} or {"fps": F}
    precision: str | None = None      # "fp32" / "bf16"
    source_teachers: tuple[str, ...] = ()           # fitted teachers: the teachers whose features they read
    fit: dict = field(default_factory=dict)         # fitted teachers: folds, seed, split, training settings
    extra: dict = field(default_factory=dict)       # fields of other egodistill versions, kept as they were
    features_format: int = FEATURES_FORMAT
    egodistill: str = field(default_factory=egodistill_version)

    def to_json(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        data["source_teachers"] = list(self.source_teachers)
        for name in ("source_teachers", "fit"):  # only fitted teachers have them
            if not data[name]:
                del data[name]
        return {**data, **self.extra}

    @classmethod
    def from_json(cls, data: dict) -> Provenance:
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known}
        values["source_teachers"] = tuple(values.get("source_teachers", ()))
        values.setdefault("features_format", 1)  # teachers stored before the field existed
        values.setdefault("egodistill", "unknown")
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})

    def identity(self) -> str:
        """Canonical JSON of what determines the output: equal strings, same features."""
        data = self.to_json()
        del data["egodistill"]
        return json.dumps(data, sort_keys=True)  # the hashed text: changing its form would change every key

    def teacher_key(self) -> str:
        """`<modality>-<backbone>-<10 hex of sha256(identity)>`: readable, and new whenever the identity is."""
        digest = hashlib.sha256(self.identity().encode()).hexdigest()[:10]
        backbone = re.sub(r"[^A-Za-z0-9_.]+", "_", str(self.backbone))
        return f"{self.modality}-{backbone}-{digest}"


@dataclass(frozen=True)
class Failure:
    """One ledger entry: a segment a task could not write, and why."""

    segment: int
    id: str
    video: str | None
    reason: str
    expected_rows: int = 0
    written_rows: int = 0

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Failure:
        return cls(**data)


@dataclass(frozen=True)
class TaskRecord:
    """What a finished task wrote; its presence is what makes the task's rows data."""

    segments: tuple[int, int]
    rows: tuple[int, int]
    finished_at: str
    failed: tuple[Failure, ...] = ()
    worker: str | None = None
    device: str | None = None
    seconds: float | None = None
    checksums: dict[str, str] | None = None          # store key -> "sha256:<hex>" or "absent"
    row_checksums: tuple[dict, ...] = ()              # rows in shards shared with a neighbouring task

    def to_json(self) -> dict:
        data = {
            "segments": list(self.segments), "rows": list(self.rows), "finished_at": self.finished_at,
            "failed": [f.to_json() for f in self.failed], "worker": self.worker, "device": self.device,
            "seconds": self.seconds, "checksums": self.checksums, "row_checksums": list(self.row_checksums),
        }
        return {k: v for k, v in data.items() if v is not None}

    @classmethod
    def from_json(cls, data: dict) -> TaskRecord:
        return cls(
            segments=tuple(data["segments"]), rows=tuple(data["rows"]), finished_at=data.get("finished_at", ""),
            failed=tuple(Failure.from_json(f) for f in data.get("failed", [])), worker=data.get("worker"),
            device=data.get("device"), seconds=data.get("seconds"), checksums=data.get("checksums"),
            row_checksums=tuple(data.get("row_checksums", ())),
        )


@dataclass(frozen=True)
class Views:
    """The windows a teacher has logits of (`view_logits/<head>` [N, V, C]): view v is the window of `frames`
    rows placed at `placements[v]` in its segment (0 = first rows, 0.5 = centred, 1 = last rows), exactly as
    the student's loader places it. Stored as the teacher's `views` attribute in the form `to_json` gives."""

    frames: int
    placements: tuple[float, ...]

    def to_json(self) -> dict:
        return {"frames": int(self.frames), "placements": [float(p) for p in self.placements]}

    def nearest(self, placement: float) -> int:
        """The index of the view placed nearest `placement` (the first of ties): the one evaluation reads."""
        return min(range(len(self.placements)), key=lambda v: abs(self.placements[v] - placement))

    @classmethod
    def from_json(cls, data: dict) -> Views:
        return cls(int(data["frames"]), tuple(float(p) for p in data["placements"]))


@dataclass(frozen=True)
class Clip:
    """A clip backbone's windows: `frames` consecutive sampled frames, `stride` apart, each giving `steps` rows."""

    frames: int
    stride: int
    steps: int


@dataclass(frozen=True)
class SamplingPolicy:
    """Which frames of a segment become rows: N segment-uniform frames or F per second, read one per row or in
    clip windows; imported teachers record how their names were matched instead. Stored as `Provenance.sampling`
    in the form `to_json` gives ({"frames": N} / {"fps": F}, with "clip": {...}; {"imported": by})."""

    frames: int | None = None
    fps: float | None = None
    clip: Clip | None = None
    imported: str | None = None     # imported features: "segment" or "video", what their names matched

    def to_json(self) -> dict:
        data: dict = {}
        if self.frames is not None:
            data["frames"] = self.frames
        if self.fps is not None:
            data["fps"] = self.fps
        if self.clip is not None:
            data["clip"] = asdict(self.clip)
        if self.imported is not None:
            data["imported"] = self.imported
        return data

    @classmethod
    def from_json(cls, data: dict) -> SamplingPolicy:
        clip = data.get("clip")
        return cls(frames=data.get("frames"), fps=data.get("fps"), clip=Clip(**clip) if clip else None, imported=data.get("imported"))


BOX_FIELDS = ("x1", "y1", "x2", "y2", "category", "score", "valid")


@dataclass(frozen=True)
class BoxRow:
    """The row of a `layout` teacher: `max_boxes` slots of BOX_FIELDS, flattened (extract writes it, the layout
    transformer reads it). Stored as `Provenance.preprocessing["row"]` so readers need not guess from the width."""

    max_boxes: int
    fields: tuple[str, ...] = BOX_FIELDS

    @property
    def width(self) -> int:
        return self.max_boxes * len(self.fields)

    def to_json(self) -> dict:
        return {"format": "boxes", "max_boxes": self.max_boxes, "fields": list(self.fields)}

    @classmethod
    def of(cls, provenance: Provenance) -> BoxRow | None:
        """The box row a teacher stores, or None when its rows are not boxes."""
        row = provenance.preprocessing.get("row")
        if isinstance(row, dict) and row.get("format") == "boxes":
            return cls(int(row["max_boxes"]), tuple(row["fields"]))
        # Layout teachers written before the row had a JSON form: "K x [x1, y1, ...]".
        match = re.fullmatch(r"(\d+) x \[(.*)\]", row) if isinstance(row, str) else None
        return cls(int(match[1]), tuple(f.strip() for f in match[2].split(","))) if match else None
