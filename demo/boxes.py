"""Box annotations for the demo's clips, in Something-Else's JSON layout, as a detector would give them.

The boxes come from the generator's own scene (the moved object's and the hand's positions in every
frame, `demo.data`), so no pixel is read. Detector-like noise, fixed before any layout result was
seen: each box coordinate jittered by N(0, 0.08 x the object's radius) pixels; each true box missed
with probability 0.10; a false object box (placeholder 1) added to a frame with probability 0.15;
the hand and the object swapped in category with probability 0.05 per box. Noise is drawn from its
own RNG, seeded by (seed, clip), so the clips' pixels and sound are untouched.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from egodistill.common import write_json
from egodistill.demo.data import DemoSpec, _draw_scene, clip_id, clip_labels, split_label

BOXES_NAME = "bounding_box_annotations.json"
JITTER, MISS, FALSE_BOX, SWAP = 0.08, 0.10, 0.15, 0.05


def clip_boxes(spec: DemoSpec, index: int) -> list[dict]:
    """One clip's frames, Something-Else style: [{"name": "<clip>/0001.jpg", "width", "height", "labels": [...]}, ...]."""
    motion, obj = split_label(int(clip_labels(spec)[index]))
    scene = _draw_scene(spec, motion, obj, np.random.default_rng([spec.seed, index, 0xC11B]))  # the renderer's own draw
    noise = np.random.default_rng([spec.seed, index, 0xB0C5])
    frames = []
    for t in range(spec.frames):
        x, y, r = float(scene["xs"][t]), float(scene["ys"][t]), float(scene["sizes"][t])
        hx, hy = x + 0.45 * r, y + 0.55 * r          # where the renderer draws the hand
        arm = max(4.0, 0.55 * r)
        truth = [("object 0", "0000", (x - r, y - r, x + r, y + r)), ("hand", "hand", (hx - arm, hy - 0.75 * arm, hx + arm, hy + 0.75 * arm))]
        labels = []
        for gt, standard, box in truth:
            if noise.random() < MISS:
                continue
            if noise.random() < SWAP:
                gt, standard = ("hand", "hand") if gt != "hand" else ("object 0", "0000")
            x1, y1, x2, y2 = np.asarray(box) + noise.normal(0, JITTER * r, 4)
            labels.append(_label(gt, standard, x1, y1, x2, y2, spec.size))
        if noise.random() < FALSE_BOX:
            cx, cy, rr = noise.uniform(0, spec.size), noise.uniform(0, spec.size), noise.uniform(0.5, 1.0) * r
            labels.append(_label("object 1", "0001", cx - rr, cy - rr, cx + rr, cy + rr, spec.size))
        frames.append({"name": f"{clip_id(index)}/{t + 1:04d}.jpg", "width": spec.size, "height": spec.size, "labels": labels})
    return frames


def _label(gt: str, standard: str, x1: float, y1: float, x2: float, y2: float, size: int) -> dict:
    clip = lambda v: float(np.clip(v, 0, size))  # noqa: E731 - boxes stay inside the frame, as a detector's do
    return {"box2d": {"x1": clip(min(x1, x2)), "y1": clip(min(y1, y2)), "x2": clip(max(x1, x2)), "y2": clip(max(y1, y2))},
            "category": gt, "gt_annotation": gt, "standard_category": standard}


def write_demo_boxes(data_dir: str | os.PathLike, spec: DemoSpec) -> Path:
    """Write <data_dir>/bounding_box_annotations.json for every clip, keyed by the manifest's video name."""
    path = Path(data_dir) / BOXES_NAME
    write_json(path, {f"{clip_id(i)}.mp4": clip_boxes(spec, i) for i in range(spec.clips)})
    return path
