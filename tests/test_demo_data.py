"""The demo data generator, as a user meets it: real H.264 + AAC files, a manifest egodistill reads, same seed same data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import numpy as np
import pytest

from egodistill.demo.data import (DemoSpec, class_names, clip_labels, describe_demo, generate_demo_data, generate_unlabelled_clips, render_clip,
                                  split_label, unlabelled_spec)
from egodistill.extract.manifests import read_manifest


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> tuple[Path, DemoSpec]:
    spec = DemoSpec.small()
    folder = tmp_path_factory.mktemp("demo-data")
    return generate_demo_data(folder, spec, workers=2), spec


def _rows(manifest: Path) -> list[dict]:
    with manifest.open(newline="") as f:
        return list(csv.DictReader(f))


def _decode(path: Path) -> tuple[np.ndarray, np.ndarray, int, float]:
    """Every picture (RGB), the mono sound, its rate and the video stream's frame rate, read with PyAV."""
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264" and video.codec_context.pix_fmt == "yuv420p"
        assert audio.codec_context.name == "aac"
        fps = float(video.average_rate)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        container.seek(0)
        rate = audio.codec_context.sample_rate
        sound = np.concatenate([f.to_ndarray().mean(axis=0) for f in container.decode(audio=0)])
    return frames, sound, rate, fps


def test_small_set_is_a_manifest_of_decodable_clips_with_sound(small_set):
    manifest, spec = small_set
    rows = _rows(manifest)
    assert list(rows[0]) == ["segment_id", "video", "start_sec", "stop_sec", "split", "label:action"]
    assert len(rows) == spec.clips_train + spec.clips_val == 60
    assert [r["split"] for r in rows].count("train") == spec.clips_train and [r["split"] for r in rows].count("val") == spec.clips_val
    for row in rows[:: len(rows) // 4]:
        frames, sound, rate, fps = _decode(manifest.parent / "videos" / row["video"])
        assert frames.shape == (round(spec.seconds * spec.fps), spec.size, spec.size, 3) and fps == spec.fps
        assert rate == spec.sample_rate and abs(len(sound) / rate - spec.seconds) < 0.1
        assert np.abs(sound).max() > 0.05 and frames.std() > 10  # sound and pictures, not silence or a flat colour
        assert float(row["start_sec"]) == 0 and float(row["stop_sec"]) == pytest.approx(spec.seconds)


def test_manifest_labels_cover_every_class_and_egodistill_reads_it(small_set):
    manifest, spec = small_set
    names = class_names(spec)
    assert len(names) == 12 and len(set(names)) == 12
    labels = {split: [int(r["label:action"]) for r in _rows(manifest) if r["split"] == split] for split in ("train", "val")}
    assert set(labels["train"]) == set(range(len(names)))  # balanced: 3 clips of every class
    assert all(0 <= y < len(names) for y in labels["val"])
    read = read_manifest(manifest)
    assert read.format == "generic" and read.heads == {"action": len(names)} and len(read.segments) == spec.clips
    assert describe_demo(spec)["classes"] == names and "description" in describe_demo(spec)
    motion, obj = split_label(names.index("pull bottle"))
    assert (motion, obj) == (1, 2)


def test_same_seed_same_data_other_seed_other_data():
    spec = DemoSpec.small()
    frames, sound = render_clip(spec, 7)
    again, sound_again = render_clip(DemoSpec.small(), 7)
    np.testing.assert_array_equal(frames, again)
    np.testing.assert_array_equal(sound, sound_again)
    np.testing.assert_array_equal(clip_labels(spec), clip_labels(DemoSpec.small()))
    other, other_sound = render_clip(DemoSpec.small(seed=1), 7)
    assert not np.array_equal(frames, other) and not np.array_equal(sound, other_sound)
    assert not np.array_equal(clip_labels(spec), clip_labels(DemoSpec.small(seed=1)))
    assert frames.shape == (spec.frames, spec.size, spec.size, 3) and frames.dtype == np.uint8
    assert sound.shape == (round(spec.seconds * spec.sample_rate),) and np.abs(sound).max() <= 1


def test_encoded_clip_decodes_to_the_rendered_one(small_set):
    manifest, spec = small_set
    frames, sound = render_clip(spec, 0)
    decoded, decoded_sound, _, _ = _decode(manifest.parent / "videos" / "demo-00000.mp4")
    assert np.abs(decoded.astype(float) - frames).mean() < 12  # lossy H.264 + yuv420p, but the same picture
    # AAC delays the sound by its priming samples: compare the loudness envelopes, aligned by cross-correlation.
    lag = int(np.argmax(np.correlate(np.abs(decoded_sound[:4096]), np.abs(sound[:2048]), mode="valid")))
    aligned = decoded_sound[lag: lag + len(sound)]
    assert np.corrcoef(aligned[: len(sound)], sound[: len(aligned)])[0, 1] > 0.9


def test_second_call_reuses_the_files_and_a_new_spec_replaces_them(tmp_path):
    spec = DemoSpec(clips_train=12, clips_val=4, seconds=1.0)
    manifest = generate_demo_data(tmp_path, spec, workers=1)
    stored = json.loads((tmp_path / "demo-spec.json").read_text())
    assert stored["clips_train"] == 12 and stored["seed"] == 0
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    progress: list[tuple[int, int]] = []
    assert generate_demo_data(tmp_path, spec, progress=lambda done, total: progress.append((done, total))) == manifest
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == mtimes and progress == []

    (tmp_path / "videos" / "demo-00003.mp4").unlink()  # an interrupted run: only the missing clip is made again
    generate_demo_data(tmp_path, spec, workers=1, progress=lambda done, total: progress.append((done, total)))
    assert progress[0] == (15, 16) and progress[-1] == (16, 16)
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items() if p.exists() and p.suffix == ".mp4" and p.stem != "demo-00003")

    generate_demo_data(tmp_path, DemoSpec(clips_train=12, clips_val=4, seconds=1.0, seed=3), workers=1)
    assert json.loads((tmp_path / "demo-spec.json").read_text())["seed"] == 3
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 16 and not list((tmp_path / "videos").glob("*.tmp*"))


def test_two_generations_in_other_processes_write_the_same_bytes(tmp_path):
    """Two demos must see the same data: x264's mbtree once made about one clip in three differ between processes."""
    spec = DemoSpec(clips_train=12, clips_val=4, seconds=1.0)
    digests = []
    for run in ("a", "b"):
        generate_demo_data(tmp_path / run, spec, workers=2)
        digests.append({p.name: p.read_bytes() for p in sorted((tmp_path / run / "videos").glob("*.mp4"))})
    assert len(digests[0]) == 16 and digests[0] == digests[1]


def test_unlabelled_clips_are_new_draws_of_the_generator_with_no_label_written(tmp_path):
    """Protocol version 4: the same generator at a seed of its own, beside the labelled clips, labels nowhere."""
    spec = DemoSpec(clips_train=2, clips_val=0, seconds=1.0)
    unlabelled = unlabelled_spec(spec, 2, seed=1000)
    folder = generate_unlabelled_clips(tmp_path, unlabelled, workers=1)
    assert folder == tmp_path / "videos" / "unlabelled"
    assert sorted(p.name for p in folder.iterdir()) == ["unl-00000.mp4", "unl-00001.mp4", "unlabelled-spec.json"]
    assert json.loads((folder / "unlabelled-spec.json").read_text())["seed"] == 1000 and not list(tmp_path.rglob("*.csv"))
    pictures, _, _, _ = _decode(folder / "unl-00000.mp4")
    assert pictures.shape[0] == spec.frames
    assert not np.array_equal(render_clip(unlabelled, 0)[0], render_clip(spec, 0)[0])  # other draws than labelled clip 0's
    mtimes = {p: p.stat().st_mtime_ns for p in folder.iterdir()}
    generate_unlabelled_clips(tmp_path, unlabelled, workers=1)
    assert {p: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes


def test_the_marker_of_a_caches_data_is_one_json_value_and_an_older_runs_marker_still_matches(tmp_path):
    from egodistill.demo.pipeline import _match_cache_to_data

    specs = [tmp_path / "demo-spec.json", tmp_path / "unlabelled-spec.json"]
    specs[0].write_text(json.dumps({"seed": 0, "clips_train": 12}, indent=2) + "\n")
    specs[1].write_text(json.dumps({"clips": 8}, indent=2) + "\n")
    marker, made = tmp_path / "cache-data.json", tmp_path / "cache.zarr"
    _match_cache_to_data(tmp_path, specs)
    assert json.loads(marker.read_text()) == [{"seed": 0, "clips_train": 12}, {"clips": 8}]  # one value (was two run together)
    made.mkdir()
    _match_cache_to_data(tmp_path, specs)
    assert made.exists()
    marker.write_text("".join(s.read_text() for s in specs))  # an existing demo folder's marker, from before
    _match_cache_to_data(tmp_path, specs)
    assert made.exists() and json.loads(marker.read_text())[1] == {"clips": 8}
    specs[1].write_text(json.dumps({"clips": 9}))  # other data: the cache made from the old goes
    _match_cache_to_data(tmp_path, specs)
    assert not made.exists() and json.loads(marker.read_text())[1] == {"clips": 9}
