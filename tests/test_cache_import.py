"""A lab's own features become teachers: `cache init` from a manifest, then `cache import` of HDF5, .npy, .pt or LMDB files
in their public layouts, cut into segments by time, with no video anywhere."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from egodistill import cache
from helpers import egodistill, one_line_error

VIDEOS = [f"P0{v}_0{v}" for v in range(1, 7)]
SPANS = [(0.0, 2.0), (2.0, 4.0), (5.0, 7.5), (7.5, 9.5)]  # each video is 10 s long
LATE = ("P01_01", 20.0, 22.0)  # past the end of the features: no rows, a ledger entry
D = 6


def _segments():
    rows = []
    for v, video in enumerate(VIDEOS):
        for s, (start, stop) in enumerate(SPANS):
            split = "val" if v == len(VIDEOS) - 1 else "train"
            rows.append((f"{video}_{s}", video, start, stop, split, (v + s) % 3))
    rows.append((f"{LATE[0]}_late", LATE[0], LATE[1], LATE[2], "train", 0))
    return rows


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A generic manifest and a cache made from it by `cache init` (no videos exist)."""
    root = tmp_path_factory.mktemp("import")
    manifest = root / "segments.csv"
    manifest.write_text("segment_id,video,start_sec,stop_sec,split,label:verb\n" + "".join(f"{i},{v},{a},{b},{sp},{y}\n" for i, v, a, b, sp, y in _segments()))
    location = root / "cache.zarr"
    out = egodistill("cache", "init", "--manifest", manifest, "--cache", location, check=0).stdout
    assert f"{len(_segments())} segments" in out
    return {"root": root, "manifest": manifest, "cache": location}


def _fresh_cache(world, tmp_path) -> Path:
    location = tmp_path / "cache.zarr"
    egodistill("cache", "init", "--manifest", world["manifest"], "--cache", location, check=0)
    return location


def _only_teacher(location) -> cache.Teacher:
    [teacher] = cache.open_cache(location).teachers()
    return teacher


def _check_cut(teacher: cache.Teacher, per_video: dict[str, np.ndarray], times: dict[str, np.ndarray]) -> None:
    """Every segment holds exactly the source rows whose times fall in [start, stop), with those times; the late one failed."""
    rows_seen = 0
    o = teacher.offsets
    for i, (sid, video, start, stop, _, _) in enumerate(_segments()):
        features, stored_times = teacher.read_rows(o[i], o[i + 1])
        keep = (times[video] >= start) & (times[video] < stop)
        np.testing.assert_array_equal(features, per_video[video][keep].astype(np.float16), err_msg=sid)
        np.testing.assert_allclose(stored_times, times[video][keep].astype(np.float32), err_msg=sid)
        rows_seen += int(keep.sum())
    assert rows_seen == teacher.layout.rows
    [failure] = teacher.ledger()
    assert failure.id == f"{LATE[0]}_late" and "no rows" in failure.reason
    assert teacher.usable_segments().sum() == len(_segments()) - 1


def test_cache_init_writes_the_segments_table_alone(world):
    opened = cache.open_cache(world["cache"])
    assert list(opened.segments.ids) == [s[0] for s in _segments()]
    assert opened.segments.heads == {"verb": 3} and opened.teacher_keys() == []
    again = egodistill("cache", "init", "--manifest", world["manifest"], "--cache", world["cache"], check=0)  # the same table: nothing to do
    assert "segments" in again.stdout


def test_npy_per_video_at_fps_video_features_layout(world, tmp_path):
    location = _fresh_cache(world, tmp_path)
    folder = tmp_path / "i3d_rgb"
    folder.mkdir()
    rng = np.random.default_rng(0)
    per_video = {v: rng.normal(size=(40, D)).astype(np.float32) for v in VIDEOS}  # 10 s at 4 rows/s
    for video, values in per_video.items():
        np.save(folder / f"{video}.npy", values)
    out = egodistill("cache", "import", folder, "--format", "npy", "--cache", location, "--modality", "rgb", "--fps", "4", "--backbone", "i3d", check=0).stdout
    assert "imported" in out
    teacher = _only_teacher(location)
    _check_cut(teacher, per_video, {v: np.arange(40) / 4 for v in VIDEOS})
    p = teacher.provenance
    assert p.backbone == "i3d" and p.weights.startswith("listing-sha256:") and p.preprocessing["imported"]["format"] == "npy"
    assert teacher.imported["from"] == str(folder) and teacher.imported["sha256"] == p.weights


def test_npy_per_segment_id_rows_equal_and_spread_over_the_segment(world, tmp_path):
    location = _fresh_cache(world, tmp_path)
    folder = tmp_path / "per_segment"
    folder.mkdir()
    rng = np.random.default_rng(1)
    per_segment = {sid: rng.normal(size=(3 + k % 4, D)).astype(np.float32) for k, (sid, *_) in enumerate(_segments()[:-1])}
    for sid, values in per_segment.items():
        np.save(folder / f"{sid}.npy", values)
    egodistill("cache", "import", folder, "--cache", location, "--modality", "flow", check=0)  # --format found from the folder
    teacher = _only_teacher(location)
    o = teacher.offsets
    for i, (sid, _, start, stop, *_) in enumerate(_segments()[:-1]):
        features, times = teacher.read_rows(o[i], o[i + 1])
        np.testing.assert_array_equal(features, per_segment[sid].astype(np.float16))
        assert np.all((times > start) & (times < stop)) and np.all(np.diff(times) > 0)
    assert [f.reason for f in teacher.ledger()] == ["not in per_segment"]


def test_pt_per_video_ego4d_windows_timestamped_at_their_centre(world, tmp_path):
    import torch

    location = _fresh_cache(world, tmp_path)
    folder = tmp_path / "omnivore_video_swinl"
    folder.mkdir()
    rows = (300 - 32) // 16 + 1  # 10 s at 30 fps, windows of 32 frames every 16
    gen = torch.Generator().manual_seed(2)
    per_video = {v: torch.randn(rows, D, generator=gen) for v in VIDEOS}
    for video, values in per_video.items():
        torch.save(values, folder / f"{video}.pt")
    egodistill("cache", "import", folder, "--format", "pt", "--cache", location, "--modality", "rgb", "--fps", "30", "--stride", "16", "--window", "32", check=0)
    teacher = _only_teacher(location)
    centres = (np.arange(rows) * 16 + 16) / 30  # row j covers frames [16j, 16j + 32): centre 16j + 16
    _check_cut(teacher, {v: t.numpy() for v, t in per_video.items()}, {v: centres for v in VIDEOS})
    assert teacher.provenance.preprocessing["imported"]["stride"] == 16


def test_lmdb_rulstm_frame_keys(world, tmp_path):
    lmdb = pytest.importorskip("lmdb", reason="the lmdb extra is not installed (pip install egodistill[lmdb])")
    location = _fresh_cache(world, tmp_path)
    db = tmp_path / "rgb_lmdb"
    rng = np.random.default_rng(3)
    frames = 100  # RULSTM stores every frame; here 10 s at 10 fps
    per_video = {v: rng.normal(size=(frames, D)).astype(np.float32) for v in VIDEOS}
    env = lmdb.open(str(db), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for video, values in per_video.items():
            for n in range(1, frames + 1):
                txn.put(f"{video}_frame_{n:010d}.jpg".encode(), values[n - 1].tobytes())
    env.close()
    egodistill("cache", "import", db, "--format", "lmdb", "--cache", location, "--modality", "obj", "--fps", "10", check=0)
    teacher = _only_teacher(location)
    _check_cut(teacher, per_video, {v: np.arange(frames) / 10 for v in VIDEOS})  # frame n (1-based) at (n - 1) / fps
    assert teacher.provenance.precision == "float32"


def test_h5_through_cache_import_and_the_import_h5_alias(world, tmp_path):
    location = _fresh_cache(world, tmp_path)
    rng = np.random.default_rng(4)
    per_video = {v: rng.normal(size=(50, D)).astype(np.float32) for v in VIDEOS}
    with h5py.File(tmp_path / "feats.h5", "w") as f:
        for video, values in per_video.items():
            f[video] = values
            f[video].attrs["fps"] = 5.0
    egodistill("cache", "import", tmp_path / "feats.h5", "--cache", location, "--modality", "audio", check=0)
    _check_cut(_only_teacher(location), per_video, {v: np.arange(50) / 5 for v in VIDEOS})
    egodistill("cache", "import-h5", tmp_path / "feats.h5", "--cache", location, "--modality", "audio", "--name", "audio-again", check=0)
    assert cache.open_cache(location).teacher("audio-again").layout.rows == _only_teacher_rows(location)


def _only_teacher_rows(location) -> int:
    return {t.layout.rows for t in cache.open_cache(location).teachers()}.pop()


def test_a_cache_of_imported_features_trains_a_student_without_videos(world, tmp_path):
    location = _fresh_cache(world, tmp_path)
    folder = tmp_path / "feats"
    folder.mkdir()
    rng = np.random.default_rng(5)
    labels = {sid: y for sid, _, _, _, _, y in _segments()}
    for video in VIDEOS:
        values = rng.normal(size=(40, D)).astype(np.float32)
        for sid, v, start, stop, _, y in _segments():  # make the label visible in the features
            if v == video:
                values[int(start * 4): int(stop * 4), y] += 3.0
        np.save(folder / f"{video}.npy", values)
    assert labels
    egodistill("cache", "import", folder, "--format", "npy", "--cache", location, "--modality", "rgb", "--fps", "4", check=0)
    run = tmp_path / "run"
    egodistill("train-student", "--cache", location, "--inputs", "rgb", "--out", run, "--steps", "5", "--batch-size", "8", "--device", "cpu", check=0)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics and metrics[-1]["step"] == 5


@pytest.fixture(scope="module")
def bad(world) -> dict:
    """Broken sources of every format, next to the world's cache."""
    root = world["root"] / "bad"
    root.mkdir()
    (root / "garbage_npy").mkdir()
    (root / "garbage_npy" / "P01_01.npy").write_bytes(b"not an array")
    (root / "wide_npy").mkdir()
    np.save(root / "wide_npy" / "P01_01.npy", np.zeros((2, 3, 4)))
    (root / "garbage_pt").mkdir()
    (root / "garbage_pt" / "P01_01.pt").write_bytes(b"not a tensor")
    (root / "empty").mkdir()
    (root / "strangers").mkdir()
    np.save(root / "strangers" / "nobody.npy", np.zeros((4, D)))
    (root / "not.h5").write_text("hello")
    return {"root": root}


BAD = [
    (["{root}/garbage_npy", "--format", "npy", "--modality", "rgb", "--fps", "4"], "is not a .npy array"),
    (["{root}/wide_npy", "--format", "npy", "--modality", "rgb", "--fps", "4"], "expected numbers, T x D"),
    (["{root}/garbage_pt", "--format", "pt", "--modality", "rgb", "--fps", "30", "--stride", "16", "--window", "32"], "is not a saved tensor"),
    (["{root}/garbage_pt", "--format", "pt", "--modality", "rgb", "--fps", "30"], "needs --fps, --stride and --window"),
    (["{root}/empty", "--format", "npy", "--modality", "rgb"], "holds no *.npy files"),
    (["{root}/empty", "--modality", "rgb"], "pass --format"),
    (["{root}/strangers", "--format", "npy", "--modality", "rgb", "--fps", "4"], "is a segment or video id of the cache"),
    (["{root}/nowhere", "--format", "npy", "--modality", "rgb"], "not found"),
    (["{root}/not.h5", "--format", "h5", "--modality", "rgb"], "is not an HDF5 file"),
    (["{root}/empty", "--format", "lmdb", "--modality", "rgb"], "lmdb"),
    (["{root}/strangers", "--format", "npy"], "--modality"),
    (["{root}/strangers", "--format", "npz", "--modality", "rgb"], "npz"),
]


@pytest.mark.parametrize("args,expected", BAD, ids=[f"{i}-{e[:20]}" for i, (_, e) in enumerate(BAD)])
def test_bad_sources_are_one_line_errors(world, bad, args, expected):
    argv = [a.format(root=bad["root"]) for a in args]
    result = egodistill("cache", "import", *argv, "--cache", world["cache"])
    if "npz" in expected:  # a value the command line refuses: exit 2, one line too
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
        return
    assert expected in one_line_error(result)
    assert cache.open_cache(world["cache"]).teacher_keys() == []


def test_import_into_a_cache_without_segments_names_cache_init(tmp_path, world):
    folder = tmp_path / "f"
    folder.mkdir()
    np.save(folder / "P01_01.npy", np.zeros((4, D)))
    line = one_line_error(egodistill("cache", "import", folder, "--format", "npy", "--cache", tmp_path / "none.zarr", "--modality", "rgb", "--fps", "4"))
    assert "none.zarr" in line


@pytest.mark.skipif(__import__("importlib").util.find_spec("lmdb") is None, reason="the lmdb extra is not installed")
def test_lmdb_keys_of_another_layout_are_one_line(world, tmp_path):
    import lmdb

    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"P01_01/000001", np.zeros(D, np.float32).tobytes())
    env.close()
    line = one_line_error(egodistill("cache", "import", tmp_path / "db", "--format", "lmdb", "--cache", world["cache"], "--modality", "rgb", "--fps", "30"))
    assert "is not <video>_frame_<number>.jpg" in line


def test_h5_keyed_by_video_id_imports_against_a_manifest_naming_files(tmp_path):
    """The names match the manifest's videos by file stem (v00000 for v00000.mp4); when most segments find no
    rows, the import says so in one line, with an example of each side's names."""
    manifest = tmp_path / "m.csv"
    manifest.write_text("segment_id,video,start_sec,stop_sec,split,label:verb\n"
                        + "".join(f"s{v}_{s},v{v:05d}.mp4,{2 * s},{2 * s + 2},train,{s}\n" for v in range(2) for s in range(2)))
    location = tmp_path / "cache.zarr"
    egodistill("cache", "init", "--manifest", manifest, "--cache", location, check=0)
    rng = np.random.default_rng(6)
    per_video = {f"v{v:05d}": rng.normal(size=(20, D)).astype(np.float32) for v in range(2)}
    with h5py.File(tmp_path / "feats.h5", "w") as f:
        for video, values in per_video.items():
            f[video] = values
            f[video].attrs["fps"] = 5.0
    out = egodistill("cache", "import", tmp_path / "feats.h5", "--cache", location, "--modality", "rgb", check=0).stdout
    assert "find no name" not in out
    teacher = _only_teacher(location)
    assert not teacher.ledger() and teacher.usable_segments().all()
    np.testing.assert_array_equal(teacher.read_rows(*teacher.offsets[2:4])[0], per_video["v00001"][:10].astype(np.float16))  # s1_0: 0-2 s

    with h5py.File(tmp_path / "half.h5", "w") as f:  # one of two videos, under a name of another form
        f["elsewhere/v00000"] = per_video["v00000"]
        f["elsewhere/v00000"].attrs["fps"] = 5.0
        f["w00001"] = per_video["v00001"]
        f["w00001"].attrs["fps"] = 5.0
        f["w00002"] = per_video["v00001"]
        f["w00002"].attrs["fps"] = 5.0
    out = egodistill("cache", "import", tmp_path / "half.h5", "--cache", location, "--modality", "rgb", "--name", "half", env={"COLUMNS": "400"}, check=0).stdout
    [line] = [line for line in out.splitlines() if "find no name" in line]
    assert "2 of 4 segments find no name in half.h5" in line and "v00001.mp4" in line and "w00001" in line
    assert [f.id for f in cache.open_cache(location).teacher("half").ledger()] == ["s1_0", "s1_1"]
