"""`extract --modality layout`: Something-Else box JSON and box CSVs become rows of K boxes per sampled frame,
normalised by the frame size, padded, timestamped, with no model and no video decoded."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from egodistill import cache
from egodistill.cache.records import BoxRow
from helpers import egodistill, one_line_error

FIELDS = 7  # x1, y1, x2, y2, category, score, valid
W, H = 400.0, 200.0


def _manifest(tmp_path):
    path = tmp_path / "segments.csv"
    path.write_text("segment_id,video,start_sec,stop_sec,split,label:action\n"
                    "s1,101,0,2,train,0\n"      # Something-Else video 101: 24 frames at 12 fps
                    "s2,101,1,2,val,1\n"
                    "s3,102,0,1,train,1\n"      # no boxes for video 102: ledger
                    "s4,101,5,6,train,0\n")     # after the video's boxes: ledger
    return path


def _frame_boxes(n: int) -> list[dict]:
    """Frame n (1-based): a hand and object 0, and in odd frames object 1 with a score."""
    labels = [
        {"box2d": {"x1": 4.0 * n, "y1": 10.0, "x2": 4.0 * n + 40, "y2": 100.0}, "category": "pillow", "gt_annotation": "object 0", "standard_category": "0000"},
        {"box2d": {"x1": 200.0, "y1": 2.0 * n, "x2": 300.0, "y2": 2.0 * n + 50}, "category": "hand", "gt_annotation": "hand", "standard_category": "hand"},
    ]
    if n % 2:
        labels.append({"box2d": {"x1": 0.0, "y1": 0.0, "x2": W, "y2": H}, "category": "bed", "gt_annotation": "object 1", "standard_category": "0001", "score": 0.5})
    return labels


def _something_else(tmp_path):
    path = tmp_path / "bounding_box_annotations.json"
    frames = [{"name": f"101/{n:04d}.jpg", "labels": _frame_boxes(n), "gt_placeholders": ["pillow", "bed"], "nr_instances": 3} for n in range(1, 25)]
    path.write_text(json.dumps({"101": frames}))
    return path


def _extract(tmp_path, boxes, *extra, frames=4):
    location = tmp_path / "cache.zarr"
    (tmp_path / "videos").mkdir(exist_ok=True)
    result = egodistill("extract", "--manifest", _manifest(tmp_path), "--videos", tmp_path / "videos", "--cache", location,
                        "--modality", "layout", "--boxes", boxes, "--frames", frames, *extra)
    assert result.returncode == 3, result.stdout + result.stderr  # finished, with the two ledger entries
    [teacher] = cache.open_cache(location).teachers()
    return teacher


def _expected_row(n: int, k: int = 14) -> np.ndarray:
    """Frame n's row: hand first, then object 0, then object 1; zeros after."""
    row = np.zeros((k, FIELDS), np.float32)
    row[0] = (200 / W, 2 * n / H, 300 / W, (2 * n + 50) / H, 1, 1, 1)
    row[1] = (4 * n / W, 10 / H, (4 * n + 40) / W, 100 / H, 2, 1, 1)
    if n % 2:
        row[2] = (0, 0, 1, 1, 3, 0.5, 1)
    return row.reshape(-1)


def test_something_else_json_rows_normalised_padded_and_timestamped(tmp_path):
    teacher = _extract(tmp_path, _something_else(tmp_path), "--frame-size", f"{int(W)}x{int(H)}")
    assert teacher.modality == "layout" and teacher.feature_dim == 14 * FIELDS
    o = teacher.offsets
    rows, times = teacher.read_rows(o[0], o[1])  # s1: 0-2 s, 4 rows: centres 0.25, 0.75, 1.25, 1.75 s -> frames at 12 fps
    frames = [int(np.floor(t * 12 + 0.5)) + 1 for t in (0.25, 0.75, 1.25, 1.75)]  # nearest annotated frame, 1-based
    np.testing.assert_allclose(times, [(n - 1) / 12 for n in frames], rtol=1e-6)
    for row, n in zip(rows, frames):
        np.testing.assert_allclose(row.astype(np.float32), _expected_row(n), atol=2e-3)
    valid = rows.astype(np.float32).reshape(4, 14, FIELDS)[..., 6]
    assert valid.sum(axis=1).tolist() == [2 + n % 2 for n in frames]
    _, times2 = teacher.read_rows(o[1], o[2])
    assert np.all((times2 >= 1) & (times2 < 2))
    ledger = {f.id: f.reason for f in teacher.ledger()}
    assert set(ledger) == {"s3", "s4"} and "no boxes" in ledger["s3"] and "no annotated frame" in ledger["s4"]
    assert teacher.provenance.preprocessing["boxes"].startswith("sha256:") and BoxRow.of(teacher.provenance) == BoxRow(14)


def test_box_csv_by_time_with_sizes_and_fewer_boxes(tmp_path):
    path = tmp_path / "boxes.csv"
    lines = ["video,time_sec,x1,y1,x2,y2,category,score,width,height"]
    for n in range(1, 25):
        t = (n - 1) / 12
        for label in _frame_boxes(n):
            b = label["box2d"]
            category = "hand" if label["category"] == "hand" else label["gt_annotation"]
            lines.append(f"101,{t!r},{b['x1']},{b['y1']},{b['x2']},{b['y2']},{category},{label.get('score', '')},{W},{H}")
    path.write_text("\n".join(lines) + "\n")
    teacher = _extract(tmp_path, path, "--max-boxes", "2", frames=2)
    assert teacher.feature_dim == 2 * FIELDS
    o = teacher.offsets
    rows, times = teacher.read_rows(o[0], o[1])  # centres 0.5 and 1.5 s: frames 7 and 19
    np.testing.assert_allclose(times, [0.5, 1.5], rtol=1e-6)
    for row, n in zip(rows, (7, 19)):  # object 1 does not fit in K = 2
        np.testing.assert_allclose(row.astype(np.float32), _expected_row(n, 14)[: 2 * FIELDS], atol=2e-3)


def test_layout_without_a_frame_size_fails_its_segments_and_bad_box_files_are_one_line(tmp_path):
    teacher = _extract(tmp_path, _something_else(tmp_path))  # no --frame-size, no videos, no sizes in the file
    assert all("frame size unknown" in f.reason or "no boxes" in f.reason or "no annotated" in f.reason for f in teacher.ledger())
    assert teacher.usable_segments().sum() == 0
    (tmp_path / "bad.csv").write_text("video,when,x1\n1,2,3\n")
    (tmp_path / "videos").mkdir(exist_ok=True)
    common = ["extract", "--manifest", _manifest(tmp_path), "--videos", tmp_path / "videos", "--cache", tmp_path / "other.zarr", "--modality", "layout"]
    assert "needs --boxes" in one_line_error(egodistill(*common))
    assert "needs the header" in one_line_error(egodistill(*common, "--boxes", tmp_path / "bad.csv"))
    assert "WIDTHxHEIGHT" in one_line_error(egodistill(*common, "--boxes", tmp_path / "bad.csv", "--frame-size", "big"))
    assert "not found" in one_line_error(egodistill(*common, "--boxes", tmp_path / "nowhere.json"))


@pytest.mark.parametrize("value,expected", [("object 3", 5), ("hand", 1), ("0002", 4)])
def test_categories_hand_and_placeholders(value, expected):
    from egodistill.extract.boxes import _category

    assert _category({"gt_annotation": value, "category": "x"}, [], {}) == expected


def test_fit_teachers_cross_fits_the_layout_transformer_on_layout_rows(tmp_path):
    """A hand moving right (class 0) or left (class 1): the layout teacher learns it from boxes alone. As a user
    would have it: a generic CSV naming files (d0000.mp4) and a Something-Else box file keyed by video id (d0000)."""
    rng = np.random.default_rng(0)
    manifest = ["segment_id,video,start_sec,stop_sec,split,label:action"]
    boxes: dict[str, list] = {}
    for v in range(20):
        for s in range(4):
            y = int(rng.integers(0, 2))
            manifest.append(f"v{v}_{s},d{v:04d}.mp4,{2 * s},{2 * s + 1},{'val' if v >= 16 else 'train'},{y}")
            for k in range(12):
                x = 20 + 25 * k if y == 0 else 320 - 25 * k
                hand = {"box2d": {"x1": x, "y1": 100, "x2": x + 50, "y2": 150}, "category": "hand", "gt_annotation": "hand"}
                thing = {"box2d": {"x1": 150 + rng.normal(0, 5), "y1": 40, "x2": 250, "y2": 120}, "category": "cup", "gt_annotation": "object 0"}
                boxes.setdefault(f"d{v:04d}", []).append({"name": f"d{v:04d}/{24 * s + k + 1:04d}.jpg", "labels": [hand, thing], "width": W, "height": H})
    (tmp_path / "m.csv").write_text("\n".join(manifest) + "\n")
    (tmp_path / "b.json").write_text(json.dumps(boxes))
    (tmp_path / "videos").mkdir()
    location = tmp_path / "cache.zarr"
    out = egodistill("extract", "--manifest", tmp_path / "m.csv", "--videos", tmp_path / "videos", "--cache", location, "--modality", "layout",
                     "--boxes", tmp_path / "b.json", "--max-boxes", "4", check=0).stdout
    assert "find no name" not in out
    [layout] = cache.open_cache(location).teachers()
    assert not layout.ledger() and layout.usable_segments().all()
    out = egodistill("fit-teachers", "--cache", location, "--modalities", "layout", "--depths", "1", "--folds", "2", "--steps", "120", "--device", "cpu", check=0).stdout
    assert "layout" in out
    [fitted] = [t for t in cache.open_cache(location).teachers() if not t.has_features]
    assert fitted.provenance.backbone == "layout_transformer" and fitted.modality == "layout"
    logits = fitted.read_logits("action")
    assert np.isfinite(logits).all()
    table = cache.open_cache(location).segments
    train = (table.split == "train") & (table.labels["action"] >= 0)
    out_of_fold = (logits[train].argmax(axis=1) == table.labels["action"][train]).mean()  # training logits are cross-fitted
    assert out_of_fold > 0.75  # chance: 0.5; 1.0 at 120 steps for seeds 0-2 (80 steps left one seed at 0.77)


def test_frame_size_from_the_video_header_without_decoding(tmp_path, media_dir):
    """No --frame-size and no sizes in the box file: the video's header gives them (96 x 64 test videos)."""
    from egodistill.extract.boxes import video_size

    assert video_size(media_dir / "vp9_opus.webm") == (96.0, 64.0) and video_size(None) is None
    (tmp_path / "m.csv").write_text("segment_id,video,start_sec,stop_sec,split,label:a\ns1,h264_aac.mp4,0,1.5,train,0\n")
    (tmp_path / "b.csv").write_text("video,frame,x1,y1,x2,y2,category\nh264_aac.mp4,1,48,32,96,64,hand\nh264_aac.mp4,13,0,0,48,32,hand\n")
    egodistill("extract", "--manifest", tmp_path / "m.csv", "--videos", media_dir, "--cache", tmp_path / "c.zarr", "--modality", "layout",
               "--boxes", tmp_path / "b.csv", "--frames", "2", "--max-boxes", "1", check=0)
    [teacher] = cache.open_cache(tmp_path / "c.zarr").teachers()
    rows, times = teacher.read_rows(0, 2)
    np.testing.assert_allclose(times, [0.0, 1.0])  # frames 1 and 13 at 12 per second
    np.testing.assert_allclose(rows.astype(np.float32), [[0.5, 0.5, 1, 1, 1, 1, 1], [0, 0, 0.5, 0.5, 1, 1, 1]])


def test_retry_failed_redoes_segments_whose_video_arrived(tmp_path, media_dir):
    """No --frame-size and no sizes in the box file: a segment fails until its video (whose header gives the size)
    is there; --retry-failed then writes it, and a run without it does not."""
    videos = tmp_path / "videos"
    videos.mkdir()
    (tmp_path / "m.csv").write_text("segment_id,video,start_sec,stop_sec,split,label:a\ns1,clip.mp4,0,1.5,train,0\ns2,clip.mp4,0,1.5,val,1\n")
    (tmp_path / "b.csv").write_text("video,frame,x1,y1,x2,y2,category\nclip,1,48,32,96,64,hand\nclip,13,0,0,48,32,hand\n")
    args = ["extract", "--manifest", tmp_path / "m.csv", "--videos", videos, "--cache", tmp_path / "c.zarr", "--modality", "layout",
            "--boxes", tmp_path / "b.csv", "--frames", "2", "--max-boxes", "1", "--segments-per-task", "1"]
    egodistill(*args, check=3)
    [teacher] = cache.open_cache(tmp_path / "c.zarr").teachers()
    assert [f.id for f in teacher.ledger()] == ["s1", "s2"] and "frame size unknown" in teacher.ledger()[0].reason
    shutil.copy(media_dir / "vp9_opus.webm", videos / "clip.mp4")  # 96 x 64
    egodistill(*args, check=3)  # without --retry-failed: nothing redone
    egodistill(*args, "--retry-failed", check=0)
    [teacher] = cache.open_cache(tmp_path / "c.zarr").teachers()
    assert not teacher.ledger() and teacher.segment_status().tolist() == [1, 1]
    np.testing.assert_allclose(teacher.read_rows(0, 2)[0].astype(np.float32), [[0.5, 0.5, 1, 1, 1, 1, 1], [0, 0, 0.5, 0.5, 1, 1, 1]])


def test_most_segments_without_boxes_are_said_in_one_line_before_extracting(tmp_path):
    (tmp_path / "m.csv").write_text("segment_id,video,start_sec,stop_sec,split,label:a\ns1,clips/a.mp4,0,1,train,0\ns2,clips/b.mp4,0,1,train,1\n"
                                    "s3,clips/c.mp4,0,1,train,1\n")
    (tmp_path / "b.csv").write_text("video,frame,x1,y1,x2,y2,category,width,height\nA-0001,1,0,0,10,10,hand,100,100\nc,1,0,0,10,10,hand,100,100\n")
    (tmp_path / "videos").mkdir()
    out = egodistill("extract", "--manifest", tmp_path / "m.csv", "--videos", tmp_path / "videos", "--cache", tmp_path / "c.zarr",
                     "--modality", "layout", "--boxes", tmp_path / "b.csv", "--frames", "1", env={"COLUMNS": "400"}, check=3).stdout
    [line] = [line for line in out.splitlines() if "find no name" in line]
    assert "2 of 3 segments find no name in --boxes" in line and "clips/a.mp4" in line and "A-0001" in line
    assert out.index("find no name") < out.index("teacher layout-")  # said before the tasks run
    [teacher] = cache.open_cache(tmp_path / "c.zarr").teachers()
    assert [f.id for f in teacher.ledger()] == ["s1", "s2"]  # c matched clips/c.mp4 by its stem


@pytest.mark.parametrize("names,videos,paths,expected", [
    (["d0000", "d0001"], ["d0000.mp4", "d0001.mp4"], {}, {"d0000.mp4": "d0000", "d0001.mp4": "d0001"}),   # by file stem
    (["101", "101.mp4"], ["101"], {}, {"101": "101"}),                                                     # by id first
    (["a/clip", "b/clip"], ["a/clip.mp4", "b/clip.mp4"], {}, {"a/clip.mp4": "a/clip", "b/clip.mp4": "b/clip"}),  # one stem, two videos: by path
    (["P01/videos/P01_11"], ["P01_11", "P02_11"], {"P01_11": "P01/videos/P01_11.MP4"}, {"P01_11": "P01/videos/P01_11"}),
    (["x"], ["y.mp4"], {}, {}),
])
def test_names_match_by_id_then_stem_then_relative_path(names, videos, paths, expected):
    from egodistill.extract.names import match_names

    assert match_names(names, videos, paths) == expected


def test_box_row_is_read_from_the_provenance_in_both_forms():
    """The row format is recorded, not guessed from the width; layout teachers of before the JSON form still read."""
    old = cache.Provenance(modality="layout", backbone="boxes", preprocessing={"row": "14 x [x1, y1, x2, y2, category, score, valid]"})
    new = cache.Provenance(modality="layout", backbone="boxes", preprocessing={"row": BoxRow(3).to_json()})
    assert BoxRow.of(old) == BoxRow(14) and BoxRow.of(new).width == 21
    assert BoxRow.of(cache.Provenance(modality="rgb", backbone="resnet50", preprocessing={"input_size": [224, 224]})) is None
