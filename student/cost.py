"""Inference cost per segment (parameters, FLOPs) of the student and of each teacher it learned from.

A cached teacher's cost is its backbone's forward per row times its rows per segment (backbone
read from the provenance, counted with torch.utils.flop_counter on the meta device: no weights,
no compute), plus, for a fitted teacher, its head over the source teachers' rows. The student
pays for its own inputs' backbones at `frames` rows per segment, plus its head. FLOPs count a
multiply-add as 2.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from egodistill import cache
from egodistill.student.model import ModelConfig, Student, parameter_count


@functools.lru_cache(maxsize=32)
def backbone_cost(backbone: str, in_chans: int, height: int, width: int) -> tuple[int, int] | None:
    """(params, FLOPs per image) of a timm backbone without its classifier; None if timm lacks it."""
    import timm

    try:
        with torch.device("meta"):
            model = timm.create_model(backbone, pretrained=False, num_classes=0, in_chans=in_chans)
            image = torch.zeros(1, in_chans, height, width)
        with FlopCounterMode(display=False) as counter:
            model(image)
    except Exception:  # an unknown name or a model that cannot trace on meta: report it as unknown
        return None
    return parameter_count(model), int(counter.get_total_flops())


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


def rows_per_segment(teacher) -> float:
    sampling = cache.teacher_info(teacher)["provenance"].get("sampling", {})
    if "frames" in sampling:
        return float(sampling["frames"])
    offsets = cache.read_offsets(teacher)
    return float(np.diff(offsets).mean()) if len(offsets) > 1 else 0.0


def extractor_cost(teacher, rows: float) -> dict:
    """Backbone params and FLOPs for `rows` rows of a teacher that has features; None (unknown) where the
    provenance does not say what the backbone read (features brought in by `cache import-h5`)."""
    p = cache.teacher_info(teacher)["provenance"]
    size = (p.get("preprocessing") or {}).get("input_size")
    in_chans = p.get("in_chans")
    found = None if size is None or in_chans is None else backbone_cost(str(p["backbone"]), int(in_chans), int(size[0]), int(size[1]))
    if found is None:
        return {"backbone": p["backbone"], "params": None, "flops": None}
    return {"backbone": p["backbone"], "params": found[0], "flops": found[1] * rows}


def teacher_cost(root, key: str) -> dict:
    """Cost per segment of one cached teacher (its extractors + fitted head, if any)."""
    teacher = cache.open_teacher(root, key)
    info = cache.teacher_info(teacher)
    sources = info["provenance"].get("source_teachers")
    if not sources and not cache.has_features(teacher):  # logits brought from elsewhere: nothing to count
        return {"teacher": key, "params": None, "flops": None, "parts": []}
    if not sources:  # an extracted teacher: its backbone (and linear head, negligible) per row
        part = extractor_cost(teacher, rows_per_segment(teacher))
        return {"teacher": key, "params": part["params"], "flops": part["flops"], "parts": [part]}
    parts = [extractor_cost(cache.open_teacher(root, s), rows_per_segment(cache.open_teacher(root, s))) for s in sources]
    fit = info["provenance"].get("fit", {})
    dims = [cache.teacher_info(cache.open_teacher(root, s))["feature_dim"] for s in sources]
    head = Student(ModelConfig(dims, dict(info["heads"]), frames=int(fit.get("frames", 8)), dim=int(fit.get("dim", 128)), depth=1))
    params, flops = head_cost(head)
    parts.append({"backbone": info["provenance"]["backbone"], "params": params, "flops": flops})
    return {"teacher": key, **_total(parts), "parts": parts}


def student_cost(root, model: Student, input_keys: list[str]) -> dict:
    """The deployed student: its inputs' backbones at `frames` rows per segment plus its head."""
    parts = [extractor_cost(cache.open_teacher(root, k), model.cfg.frames) for k in input_keys]
    params, flops = head_cost(model)
    parts.append({"backbone": "student head", "params": params, "flops": flops})
    return {"teacher": "student", **_total(parts), "parts": parts}


def _total(parts: list[dict]) -> dict:
    known = all(p["params"] is not None for p in parts)
    return {"params": sum(p["params"] for p in parts) if known else None, "flops": sum(p["flops"] for p in parts) if known else None}
