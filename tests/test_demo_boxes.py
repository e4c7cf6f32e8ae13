"""The demo's box annotations: Something-Else's layout, the generator's own object and hand, detector-like noise."""

from __future__ import annotations

import numpy as np

from egodistill import cache
from egodistill.demo.boxes import MISS, clip_boxes, write_demo_boxes
from egodistill.demo.data import DemoSpec, _draw_scene, clip_id, clip_labels, split_label
from egodistill.extract.boxes import read_boxes
from egodistill.extract.run import ExtractConfig, plan_extraction, run_extraction

SPEC = DemoSpec(clips_train=24, clips_val=12)


def test_boxes_follow_the_rendered_object_and_are_noisy_as_documented():
    near, true_boxes, kept = 0, 0, 0
    for index in range(SPEC.clips):
        motion, obj = split_label(int(clip_labels(SPEC)[index]))
        scene = _draw_scene(SPEC, motion, obj, np.random.default_rng([SPEC.seed, index, 0xC11B]))
        frames = clip_boxes(SPEC, index)
        assert [f["name"] for f in frames] == [f"{clip_id(index)}/{t + 1:04d}.jpg" for t in range(SPEC.frames)]
        for t, frame in enumerate(frames):
            true_boxes += 2
            objects = [lab for lab in frame["labels"] if lab["standard_category"] == "0000"]
            kept += len([lab for lab in frame["labels"] if lab["standard_category"] in ("0000", "hand")])
            for lab in objects:
                b = lab["box2d"]
                centre = ((b["x1"] + b["x2"]) / 2, (b["y1"] + b["y2"]) / 2)
                near += np.hypot(centre[0] - scene["xs"][t], centre[1] - scene["ys"][t]) < 0.5 * scene["sizes"][t]
    assert near > 0.8 * SPEC.clips * SPEC.frames * (1 - MISS)  # object boxes sit on the object (swaps and clipping aside)
    assert 0.8 < kept / true_boxes < 0.97                          # about 10 % of true boxes missed


def test_the_layout_path_runs_on_the_demo_boxes_without_videos(tmp_path):
    boxes = write_demo_boxes(tmp_path, SPEC)
    assert len(read_boxes(boxes, SPEC.fps)) == SPEC.clips
    manifest = tmp_path / "segments.csv"
    labels = clip_labels(SPEC)
    rows = [f"{clip_id(i)},{clip_id(i)}.mp4,0,{SPEC.frames / SPEC.fps:g},{'train' if i < SPEC.clips_train else 'val'},{labels[i]}" for i in range(SPEC.clips)]
    manifest.write_text("segment_id,video,start_sec,stop_sec,split,label:action\n" + "\n".join(rows) + "\n")
    (tmp_path / "videos").mkdir()  # empty: layout reads boxes, never pixels
    cfg = ExtractConfig(manifest=str(manifest), videos=str(tmp_path / "videos"), cache=str(tmp_path / "c.zarr"), modality="layout",
                        frames=8, workers=0, options={"boxes": str(boxes)})
    summary = run_extraction(cfg, plan_extraction(cfg))
    assert summary.ok
    teacher = next(t for t in cache.open_cache(tmp_path / "c.zarr").teachers() if t.modality == "layout")
    rows = teacher.read_rows(0, int(teacher.offsets[-1]))[0].astype(np.float32).reshape(-1, 14, 7)
    valid = rows[:, :, 6] == 1
    assert valid.any(axis=1).mean() > 0.95 and (rows[valid][:, :4] >= 0).all()  # a frame loses both boxes 1 % of the time and (rows[valid][:, :4] <= 1).all()
