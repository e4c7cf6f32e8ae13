"""Inference cost per segment (parameters, FLOPs) of the student and of each teacher it learned from.

A cached teacher's cost is its backbone's forward per row (a clip backbone: per window) times its
rows (windows) per segment, as its backbone family counts it (egodistill.backbones: on the meta
device, no weights, no compute), plus, for a fitted teacher, its head over the source teachers'
rows. A head student pays for its own inputs' backbones at `frames` rows per segment, plus its
head; an end-to-end student for its network (student/network.py). FLOPs count a multiply-add as 2.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from egodistill import cache
from egodistill.backbones import backbone_family
from egodistill.cache.records import SamplingPolicy
from egodistill.student.model import ModelConfig, Student, parameter_count
from egodistill.student.network import FramesStudent, network_cost


def backbone_cost(backbone: str, in_chans: int, height: int, width: int, frames: int = 1) -> tuple[int, int] | None:
    """(params, FLOPs) of `frames` frames through a backbone (a clip backbone: one clip of them), as its family
    counts it; None where no family knows the name or the model cannot be counted on the meta device."""
    try:
        return backbone_family(backbone).cost(backbone, in_chans, height, width, frames)
    except Exception:  # an unknown name (features imported from elsewhere) or a model that cannot trace on meta
        return None


def head_cost(model: Student) -> tuple[int, int]:
    """(params, FLOPs) of one segment through a student-style head (batch of 1, every input present)."""
    cfg = model.cfg
    with torch.device("meta"):
        meta = Student(cfg).eval()
        features = [torch.zeros(1, cfg.frames, d) for d in cfg.input_dims]
        present = torch.ones(1, len(cfg.input_dims), dtype=torch.bool)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(features, present)
    return parameter_count(model), int(counter.get_total_flops())


def rows_per_segment(teacher: cache.Teacher) -> float:
    frames = SamplingPolicy.from_json(teacher.provenance.sampling).frames
    if frames is not None:
        return float(frames)
    offsets = teacher.offsets
    return float(np.diff(offsets).mean()) if len(offsets) > 1 else 0.0


def extractor_cost(teacher: cache.Teacher, rows: float) -> dict:
    """Backbone params and FLOPs for `rows` rows of a teacher that has features: as counted at extraction, else
    (teachers extracted before that) counted now from the provenance; None (unknown) where the provenance does
    not say what the backbone read (features brought in by `cache import-h5`)."""
    p = teacher.provenance
    if teacher.cost is not None:  # counted at extraction (extract/run.py)
        return {"backbone": p.backbone, "params": teacher.cost["params"], "flops": teacher.cost["flops_per_row"] * rows}
    size = p.preprocessing.get("input_size")
    clip = p.sampling.get("clip")  # a clip backbone: windows of clip["frames"] frames, clip["steps"] rows each
    frames = int(clip["frames"]) if clip else 1
    found = None if size is None or p.in_chans is None else backbone_cost(str(p.backbone), int(p.in_chans), int(size[-2]), int(size[-1]), frames)
    if found is None:
        return {"backbone": p.backbone, "params": None, "flops": None}
    return {"backbone": p.backbone, "params": found[0], "flops": found[1] * (rows / int(clip["steps"]) if clip else rows)}


def teacher_cost(root, key: str) -> dict:
    """Cost per segment of one cached teacher (its extractors + fitted head, if any)."""
    teacher = root.teacher(key)
    sources = teacher.provenance.source_teachers
    if not sources and not teacher.has_features:  # logits brought from elsewhere: nothing to count
        return {"teacher": key, "params": None, "flops": None, "parts": []}
    if not sources:  # an extracted teacher: its backbone (and linear head, negligible) per row
        part = extractor_cost(teacher, rows_per_segment(teacher))
        return {"teacher": key, "params": part["params"], "flops": part["flops"], "parts": [part]}
    parts = [extractor_cost(root.teacher(s), rows_per_segment(root.teacher(s))) for s in sources]
    fit = teacher.provenance.fit
    dims = [root.teacher(s).feature_dim for s in sources]
    head = Student(ModelConfig(dims, dict(teacher.heads), frames=int(fit.get("frames", 8)), dim=int(fit.get("dim", 128)), depth=1))
    params, flops = head_cost(head)
    parts.append({"backbone": teacher.provenance.backbone, "params": params, "flops": flops})
    return {"teacher": key, **_total(parts), "parts": parts}


def student_cost(root, model: Student | FramesStudent, input_keys: list[str]) -> dict:
    """The deployed student: its inputs' backbones at `frames` rows per segment plus its head; or its network."""
    if isinstance(model, FramesStudent):
        params, flops = network_cost(model.cfg)
        part = {"backbone": model.cfg.backbone, "params": params, "flops": flops}
        return {"teacher": "student", **_total([part]), "parts": [part]}
    parts = [extractor_cost(root.teacher(k), model.cfg.frames) for k in input_keys]
    params, flops = head_cost(model)
    parts.append({"backbone": "student head", "params": params, "flops": flops})
    return {"teacher": "student", **_total(parts), "parts": parts}


def _total(parts: list[dict]) -> dict:
    known = all(p["params"] is not None for p in parts)
    return {"params": sum(p["params"] for p in parts) if known else None, "flops": sum(p["flops"] for p in parts) if known else None}
