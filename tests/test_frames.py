"""`egodistill extract --modality frames`: sampled RGB frames stored as uint8 rows, through the same driver as teachers."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import zarr

from egodistill import cache, testing
from egodistill.cache.verify import verify_cache
from egodistill.extract.decode import open_video
from egodistill.extract.run import ExtractConfig, run_extraction
from egodistill.extract.sampling import sample_indices
from tests.helpers import egodistill, one_line_error

SEGMENTS = [("a0", "h264_aac.mp4", 0.0, 1.0), ("a1", "h264_aac.mp4", 1.0, 2.0), ("b0", "vp9_opus.webm", 0.2, 1.8), ("c0", "no_audio.mp4", 0.0, 1.0)]


def write_manifest(path, rows):
    lines = ["segment_id,video,start_sec,stop_sec,split,label:action"] + [f"{i},{v},{a},{b},train,{n % 2}" for n, (i, v, a, b) in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def dataset(tmp_path, media_dir):
    videos = tmp_path / "videos"
    shutil.copytree(media_dir, videos)
    return tmp_path, write_manifest(tmp_path / "segments.csv", SEGMENTS), videos


def config(tmp_path, manifest, videos, **overrides) -> ExtractConfig:
    base = dict(manifest=str(manifest), videos=str(videos), cache=str(tmp_path / "cache.zarr"), modality="frames", frames=4,
                workers=0, device="cpu", segments_per_task=2, options={"frame_size": 48})
    return ExtractConfig(**{**base, **overrides})


def quiet(cfg: ExtractConfig) -> cache.Teacher:
    summary = run_extraction(cfg, log=lambda _: None)
    return cache.open_cache(cfg.cache).teacher(summary.teacher_key)


def direct_frames(path, policy, rows, start, stop, size) -> tuple[np.ndarray, np.ndarray]:
    """What the docs promise, computed here without the modality code: short side to `size` (INTER_AREA when
    shrinking, bilinear when enlarging), centre `size` x `size` crop; and the frames' times."""
    with open_video(path) as video:
        indices = sample_indices(policy, rows, start, stop, video.fps, video.num_frames)
        out = []
        for frame in video.frames(indices):
            h, w = frame.shape[:2]
            scale = size / min(h, w)
            resized = cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
            top, left = (resized.shape[0] - size) // 2, (resized.shape[1] - size) // 2
            out.append(resized[top: top + size, left: left + size])
        return np.stack(out), video.frame_times(indices).astype(np.float32)


@pytest.mark.parametrize("size", [48, 80])  # 64-pixel-high videos: shrunk, and enlarged
def test_stored_frames_equal_a_direct_decode(dataset, size):
    tmp_path, manifest, videos = dataset
    teacher = quiet(config(tmp_path, manifest, videos, options={"frame_size": size}))
    assert teacher.has_frames and not teacher.has_features and teacher.feature_dim == 0
    assert teacher.frame_shape == (size, size, 3) and teacher.usable_segments().all()
    assert teacher.provenance.backbone == "none" and teacher.provenance.weights is None
    assert teacher.provenance.preprocessing["resize_short"] == size and teacher.provenance.sampling == {"frames": 4}
    offsets = teacher.offsets
    stored = teacher.read_frames([(offsets[b.start], offsets[b.stop]) for b in teacher.blocks()])  # whole shards, one call
    assert stored.dtype == np.uint8 and stored.shape == (16, size, size, 3)
    for i, (_, video, start, stop) in enumerate(SEGMENTS):
        expected, times = direct_frames(videos / video, {"frames": 4}, 4, start, stop, size)
        np.testing.assert_array_equal(stored[offsets[i]: offsets[i + 1]], expected)
        np.testing.assert_array_equal(teacher.read_rows(offsets[i], offsets[i + 1])[1], times)
    # The contract for readers without egodistill: the plain Zarr array `frames` [row, y, x, channel], cut by `offsets`.
    plain = zarr.open_group(tmp_path / "cache.zarr", mode="r")[f"teachers/{teacher.key}"]
    assert plain["frames"].dtype == np.uint8 and plain["frames"].chunks[0] % 4 == 0 and plain["frames"].shards[0] == 8  # whole segments; a task
    np.testing.assert_array_equal(plain["frames"][plain["offsets"][2]: plain["offsets"][3]], stored[8:12])


def test_ragged_fps_rows_are_whole_and_verified(dataset):
    tmp_path, manifest, videos = dataset
    teacher = quiet(config(tmp_path, manifest, videos, frames=None, fps=5.0))
    offsets = teacher.offsets
    assert np.diff(offsets).tolist() == [5, 5, 8, 5]
    for i, (_, video, start, stop) in enumerate(SEGMENTS):
        expected, _ = direct_frames(videos / video, {"fps": 5.0}, int(offsets[i + 1] - offsets[i]), start, stop, 48)
        np.testing.assert_array_equal(teacher.read_frames([(offsets[i], offsets[i + 1])]), expected)
    assert verify_cache(cache.open_cache(tmp_path / "cache.zarr"))["ok"]


def test_timestamps_and_segments_match_the_rgb_teacher(dataset):
    tmp_path, manifest, videos = dataset
    frames = quiet(config(tmp_path, manifest, videos))
    rgb = quiet(config(tmp_path, manifest, videos, modality="rgb", backbone="test_resnet", options={}, precision="fp32"))
    assert frames.key != rgb.key and frames.provenance.sampling == rgb.provenance.sampling
    np.testing.assert_array_equal(frames.offsets, rgb.offsets)
    np.testing.assert_array_equal(frames.read_rows(0, 16)[1], rgb.read_rows(0, 16)[1])
    assert cache.describe(cache.open_cache(tmp_path / "cache.zarr"))["teachers"][0]["frame_shape"] == [48, 48, 3]
    with pytest.raises(cache.CacheError, match="holds no frames"):
        rgb.read_frames([(0, 4)])


def test_resume_runs_only_unrecorded_tasks(dataset):
    tmp_path, manifest, videos = dataset
    cfg = config(tmp_path, manifest, videos)
    teacher = quiet(cfg)
    first_shard = tmp_path / "cache.zarr" / "teachers" / teacher.key / "frames" / "c" / "0" / "0" / "0" / "0"
    before = first_shard.stat().st_mtime_ns, first_shard.read_bytes()
    cache.open_cache(cfg.cache, mode="r+").teacher(teacher.key).drop_records([1])  # as if killed before task 1's record
    summary = run_extraction(cfg, log=lambda _: None)
    assert summary.done_before == 2 and summary.extracted == 2 and summary.ok
    assert (first_shard.stat().st_mtime_ns, first_shard.read_bytes()) == before  # task 0 was not redone
    assert run_extraction(cfg, log=lambda _: None).extracted == 0
    assert verify_cache(cache.open_cache(cfg.cache))["ok"]


def test_failures_go_to_the_ledger_and_retry_failed_rewrites_a_fixed_video(dataset):
    tmp_path, _, videos = dataset
    (videos / "later.mp4").write_bytes(b"not a video yet" * 50)
    manifest = write_manifest(tmp_path / "bad.csv", [("ok", "h264_aac.mp4", 0.0, 1.0), ("broken", "later.mp4", 0.0, 1.0), ("gone", "nowhere.mp4", 0.0, 1.0)])
    cfg = config(tmp_path, manifest, videos, segments_per_task=1)
    summary = run_extraction(cfg, log=lambda _: None)
    assert {f.id for f in summary.ledger} == {"broken", "gone"}
    assert "not found" in {f.id: f.reason for f in summary.ledger}["gone"]
    teacher = cache.open_cache(cfg.cache).teacher(summary.teacher_key)
    assert teacher.segment_status().tolist() == [1, -1, -1] and not teacher.read_frames([(4, 8)]).any()  # failed rows stay zero

    testing.make_video(videos / "later.mp4", seconds=1.0, fps=25, size=(64, 48), seed=3)
    assert run_extraction(cfg, log=lambda _: None).extracted == 0  # without --retry-failed nothing is redone
    retried = run_extraction(ExtractConfig(**{**cfg.__dict__, "retry_failed": True}), log=lambda _: None)
    assert [f.id for f in retried.ledger] == ["gone"]
    teacher = cache.open_cache(cfg.cache).teacher(summary.teacher_key)
    assert teacher.segment_status().tolist() == [1, 1, -1]
    expected, _ = direct_frames(videos / "later.mp4", {"frames": 4}, 4, 0.0, 1.0, 48)
    np.testing.assert_array_equal(teacher.read_frames([(4, 8)]), expected)


def test_verify_names_a_changed_frames_shard(dataset):
    tmp_path, manifest, videos = dataset
    teacher = quiet(config(tmp_path, manifest, videos))
    shard = tmp_path / "cache.zarr" / "teachers" / teacher.key / "frames" / "c" / "1" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    [finding] = verify_cache(cache.open_cache(tmp_path / "cache.zarr"))["teachers"][0]["damaged"]
    assert finding["array"] == "frames" and finding["task"] == 1 and finding["problem"] == "bytes changed"


@pytest.mark.parametrize("args, says", [
    (["--frame-size", "0"], "--frame-size '0': give a whole number >= 1"),
    (["--backbone", "resnet18"], "--backbone: --modality frames runs no model"),
])
def test_bad_options_give_one_line(dataset, args, says):
    tmp_path, manifest, videos = dataset
    result = egodistill("extract", "--manifest", manifest, "--videos", videos, "--cache", tmp_path / "c.zarr", "--modality", "frames", *args)
    assert says in one_line_error(result)
    assert not (tmp_path / "c.zarr").exists()


def test_hdf5_export_and_import_keep_the_frames(dataset):
    from egodistill.cache.hdf5 import export_teacher, import_export

    tmp_path, manifest, videos = dataset
    teacher = quiet(config(tmp_path, manifest, videos))
    out = export_teacher(tmp_path / "cache.zarr", teacher.key, tmp_path / "frames.h5")
    key = import_export(out, tmp_path / "copy.zarr")
    copy = cache.open_cache(tmp_path / "copy.zarr").teacher(key)
    assert copy.frame_shape == teacher.frame_shape and copy.usable_segments().all()
    np.testing.assert_array_equal(copy.read_frames([(0, 16)]), teacher.read_frames([(0, 16)]))
    assert verify_cache(cache.open_cache(tmp_path / "copy.zarr"))["ok"]
