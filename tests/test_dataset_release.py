"""A cache holds a dataset as released (issue 16 §0): one cache for its train, validation and test files,
each keeping its split; a file added later appends segments and nothing stored is rewritten. Also declared
class counts of generic CSVs (issue 18 §4)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from egodistill import cache
from egodistill.cache.verify import verify_cache
from egodistill.common import CacheError, ManifestError
from egodistill.extract.manifests import init_cache, read_classes, read_manifest, read_manifests
from egodistill.extract.run import ExtractConfig, run_extraction
from tests.helpers import egodistill, in_process_cli, one_line_error

REAL = Path(__file__).resolve().parents[2] / "shared" / "real"
if not REAL.is_dir():
    REAL = Path("/work/shared/real")
EPIC = REAL / "epic100" / "EPIC_100_validation.csv"
SSV2 = REAL / "ssv2" / "something-something-v2-validation.json"
BACKBONE = "test_resnet"


@pytest.fixture
def cli(capsys):
    return in_process_cli(capsys)


def _epic_files(folder: Path) -> list[Path]:
    """The real validation file cut into a train, a validation and a test file (the test file without class columns)."""
    if not EPIC.is_file():
        pytest.skip(f"{EPIC} not here: the real EPIC-KITCHENS-100 annotations are for development only")
    with EPIC.open(newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:13]
    out = []
    for name, part, keep in (("EPIC_100_train.csv", body[:5], header), ("EPIC_100_validation.csv", body[5:9], header),
                             ("EPIC_100_test_timestamps.csv", body[9:12], header[:8])):
        path = folder / name
        with path.open("w", newline="") as f:
            csv.writer(f).writerows([keep, *[r[: len(keep)] for r in part]])
        out.append(path)
    return out


def test_real_epic_train_validation_and_test_files_share_one_cache(tmp_path):
    train, val, test = _epic_files(tmp_path)
    location = str(tmp_path / "epic.zarr")
    egodistill("cache", "init", "--manifest", train, "--manifest", val, "--manifest", test, "--cache", location, check=0)
    table = cache.open_cache(location).segments
    assert len(table) == 12  # not only the last --manifest
    assert list(table.split) == ["train"] * 5 + ["val"] * 4 + ["test"] * 3
    assert table.heads == {"verb": 97, "noun": 300}
    assert (table.labels["verb"][9:] == -1).all() and (table.labels["verb"][:9] >= 0).all()
    files = cache.open_cache(location).segments_info["files"]
    assert [(Path(f["manifest"]).name, f["split"], f["segments"]) for f in files] == [
        ("EPIC_100_train.csv", "train", [0, 5]), ("EPIC_100_validation.csv", "val", [5, 9]), ("EPIC_100_test_timestamps.csv", "test", [9, 12])]


def test_real_epic_validation_added_to_a_train_cache_appends_and_rewrites_nothing(tmp_path, cli):
    train, val, test = _epic_files(tmp_path)
    location = tmp_path / "epic.zarr"
    cli("cache", "init", "--manifest", train, "--cache", location)
    before = _chunk_files(location)
    result = cli("cache", "init", "--manifest", train, "--manifest", val, "--cache", location)
    assert "added 4 segments" in result and "12 segments" not in result  # (not a bare "12": the tmp path may hold one)
    after = _chunk_files(location)
    assert {k: after[k] for k in before} == before  # the first file's columns stay byte for byte
    table = cache.open_cache(location).segments
    assert len(table) == 9 and list(table.split[5:]) == ["val"] * 4
    assert list(table.ids) == [r.id for r in read_manifest(train).segments + read_manifest(val).segments]
    cli("cache", "init", "--manifest", test, "--cache", location)
    assert len(cache.open_cache(location).segments) == 12
    # A file the cache holds is checked and skipped, not appended twice.
    again = cli("cache", "init", "--manifest", val, "--cache", location)
    assert "already held every file" in again and len(cache.open_cache(location).segments) == 12


def test_runs_adding_the_same_file_at_once_queue_for_the_table_and_write_it_once(tmp_path):
    train, val, _ = _epic_files(tmp_path)
    location = tmp_path / "epic.zarr"
    init_cache([str(train)], str(location))
    results: list[tuple[list, int]] = []
    with cache.open_cache(location, mode="r+").segments_lease():  # this thread plays a run writing the table
        runs = [threading.Thread(target=lambda: results.append(init_cache([str(val)], str(location)))) for _ in range(2)]
        for run in runs:
            run.start()
        time.sleep(1.0)
        assert all(run.is_alive() for run in runs) and len(cache.open_cache(location).segments) == 5, "writers wait while the table is held"
        with pytest.raises(CacheError) as refused, cache.open_cache(location, mode="r+").segments_lease(wait_s=0.2):
            pass  # past its wait, a writer is refused in one line naming the holder
        assert f"pid {os.getpid()}" in str(refused.value) and "segments table" in str(refused.value) and "\n" not in str(refused.value)
    for run in runs:
        run.join(timeout=120)
    assert sorted(len(added) for added, _ in results) == [0, 1] and [count for _, count in results] == [9, 9]
    assert len(cache.open_cache(location).segments) == 9 and not (location / "egodistill-lease.json").exists()


def test_a_segment_id_in_two_files_is_one_line_naming_both(tmp_path, cli):
    train, val, _ = _epic_files(tmp_path)
    with val.open("a", newline="") as f:  # the validation file repeats a training narration
        csv.writer(f).writerow(next(r for i, r in enumerate(csv.reader(train.open(newline=""))) if i == 2))
    line = cli("cache", "init", "--manifest", train, "--manifest", val, "--cache", tmp_path / "c.zarr", fails=True)
    assert "EPIC_100_train.csv" in line and "EPIC_100_validation.csv" in line and "P01_11_1" in line
    # The same id added to a cache that already holds the other file: one line too, naming both, nothing written.
    location = tmp_path / "held.zarr"
    cli("cache", "init", "--manifest", train, "--cache", location)
    before = _chunk_files(location)
    line = cli("cache", "init", "--manifest", val, "--cache", location, fails=True)
    assert "EPIC_100_train.csv" in line and "EPIC_100_validation.csv" in line
    assert _chunk_files(location) == before and len(cache.open_cache(location).segments) == 5


def test_real_ssv2_train_validation_and_test_files_share_one_cache(tmp_path):
    if not SSV2.is_file():
        pytest.skip(f"{SSV2} not here")
    entries = json.loads(SSV2.read_text())
    shutil.copy(REAL / "ssv2" / "something-something-v2-labels.json", tmp_path / "something-something-v2-labels.json")
    files = []
    for name, part in (("something-something-v2-train.json", entries[:4]), ("something-something-v2-validation.json", entries[4:7]),
                       ("something-something-v2-test.json", [{"id": e["id"]} for e in entries[7:10]])):
        (tmp_path / name).write_text(json.dumps(part))
        files.append(tmp_path / name)
    location = tmp_path / "ssv2.zarr"
    init_cache([str(files[0])], str(location))
    added, count = init_cache([str(f) for f in files], str(location))
    assert [Path(m.path).name for m in added] == ["something-something-v2-validation.json", "something-something-v2-test.json"] and count == 10
    table = cache.open_cache(location).segments
    assert list(table.split) == ["train"] * 4 + ["val"] * 3 + ["test"] * 3
    assert table.heads == {"action": 174} and (table.labels["action"][7:] == -1).all() and (table.labels["action"][:7] >= 0).all()
    assert list(table.ids) == [e["id"] for e in entries[:10]]
    names = cache.open_cache(location).segments_info["class_names"]["action"]  # for predict --format ssv2
    labels = json.loads((tmp_path / "something-something-v2-labels.json").read_text())
    assert len(names) == 174 and all(labels[n] == str(i) for i, n in enumerate(names))


# --- extract, add a file, extract again: only the new segments, nothing stored rewritten -------------------


def _write_csv(path: Path, rows, header="segment_id,video,start_sec,stop_sec,split,label:action:3") -> Path:
    path.write_text("\n".join([header, *(",".join(map(str, r)) for r in rows)]) + "\n")
    return path


@pytest.fixture
def release(tmp_path, media_dir):
    videos = tmp_path / "videos"
    shutil.copytree(media_dir, videos)
    train = _write_csv(tmp_path / "clips_train.csv", [("t0", "h264_aac.mp4", 0.0, 1.0, "train", 0), ("t1", "h264_aac.mp4", 1.0, 2.0, "train", 1),
                                                       ("t2", "vp9_opus.webm", 0.2, 1.8, "train", 2), ("t3", "no_audio.mp4", 0.0, 1.0, "train", 0)])
    val = _write_csv(tmp_path / "clips_val.csv", [("v0", "vp9_opus.webm", 0.0, 1.0, "val", 1), ("v1", "h264_aac.mp4", 0.5, 1.5, "val", 2),
                                                  ("v2", "missing.mp4", 0.0, 1.0, "val", 0)])
    torch.manual_seed(0)
    head = tmp_path / "head.pt"
    torch.save({"action.weight": torch.randn(3, 96), "action.bias": torch.randn(3)}, head)
    return tmp_path, videos, train, val, head


def _config(tmp_path, videos, manifests, location, head) -> ExtractConfig:
    # 3 segments a task: the first file's last task and shard are partial, the case where appending in place would rewrite them.
    return ExtractConfig(manifest=[str(m) for m in manifests], videos=str(videos), cache=str(location), modality="rgb", backbone=BACKBONE,
                         head=str(head), frames=4, workers=0, device="cpu", precision="fp32", batch_size=8, segments_per_task=3)


def _chunk_files(location: Path) -> dict[str, bytes]:
    """Every stored object but the metadata documents (zarr.json, where attributes may be updated)."""
    return {str(p.relative_to(location)): p.read_bytes() for p in sorted(Path(location).rglob("*")) if p.is_file() and p.name != "zarr.json"}


def _task_records(location: Path, key: str) -> dict[str, bytes]:
    tasks = Path(location) / "teachers" / key / "tasks"
    return {str(p.relative_to(tasks)): p.read_bytes() for p in sorted(tasks.rglob("zarr.json"))}


def test_extract_then_add_a_file_then_extract_again_fills_only_the_new_segments(release):
    tmp_path, videos, train, val, head = release
    location = tmp_path / "grown.zarr"
    first = run_extraction(_config(tmp_path, videos, [train], location, head), log=lambda _: None)
    assert first.ok and first.extracted == 4
    key = first.teacher_key
    stored, records = _chunk_files(location), _task_records(location, key)

    init_cache([str(val)], str(location))
    grown = cache.open_cache(location)
    teacher = grown.teacher(key)
    assert teacher.key == key and len(grown.segments) == 7
    assert list(teacher.segment_status()) == [1, 1, 1, 1, 0, 0, 0]  # the new segments: not extracted yet
    assert np.isnan(teacher.read_logits("action")[4:]).all() and not np.isnan(teacher.read_logits("action")[:4]).any()
    assert (np.diff(teacher.offsets)[4:] == 0).all()
    assert verify_cache(grown)["ok"]
    assert _chunk_files(location).keys() >= stored.keys() and all(_chunk_files(location)[k] == v for k, v in stored.items())

    # The same command as before fills them in: only the new segments run, into an extent of their own.
    second = run_extraction(_config(tmp_path, videos, [train], location, head), log=lambda _: None)
    assert second.teacher_key == key and second.done_before == 4 and second.extracted == 2 and second.failed == 1
    assert [f.id for f in second.ledger] == ["v2"] and second.ledger[0].segment == 6
    after = _chunk_files(location)
    assert {k: after[k] for k in stored} == stored  # old shards, chunks and table columns: byte for byte
    assert {k: v for k, v in _task_records(location, key).items() if k in records} == records
    assert any(k.startswith(f"teachers/{key}/parts/1/features/") for k in after)

    # What a reader sees equals one extraction of both files at once.
    whole = tmp_path / "whole.zarr"
    run_extraction(_config(tmp_path, videos, [train, val], whole, head), log=lambda _: None)
    a, b = cache.open_cache(location).teacher(key), cache.open_cache(whole).teacher(key)
    assert list(a.segment_status()) == list(b.segment_status()) == [1, 1, 1, 1, 1, 1, -1]
    assert np.array_equal(a.offsets, b.offsets)
    assert np.array_equal(a.read_features([(0, int(a.offsets[-1]))]), b.read_features([(0, int(b.offsets[-1]))]), equal_nan=True)
    assert np.array_equal(a.read_rows(10, 22)[1], b.read_rows(10, 22)[1], equal_nan=True)
    assert np.allclose(a.read_logits("action"), b.read_logits("action"), equal_nan=True)
    assert [list(r) for r in a.blocks()] == [[0, 1, 2], [3], [4, 5, 6]]
    assert sorted(a.records()) == [0, 1, 2] and a.records()[2].segments == (4, 7)
    report = verify_cache(cache.open_cache(location))
    assert report["ok"] and report["teachers"][0]["tasks_done"] == 3 and report["teachers"][0]["tasks_pending"] == 0
    line = one_line_error(egodistill("cache", "export-h5", location, tmp_path / "t.h5", "--teacher", key))  # one extent per file, for now
    assert "appended after its extraction" in line and "cache init --manifest A --manifest B" in line and not (tmp_path / "t.h5").exists()
    # A third run has nothing left to do; with the missing video in place, --retry-failed reruns the extent's task alone.
    third = run_extraction(_config(tmp_path, videos, [train, val], location, head), log=lambda _: None)
    assert third.extracted == 0 and third.done_before == 7
    shutil.copy(videos / "h264_aac.mp4", videos / "missing.mp4")
    retried = run_extraction(ExtractConfig(**{**vars(_config(tmp_path, videos, [train], location, head)), "retry_failed": True}), log=lambda _: None)
    assert retried.ok and retried.extracted == 3 and list(cache.open_cache(location).teacher(key).segment_status()) == [1] * 7
    assert {k: v for k, v in _task_records(location, key).items() if k in records} == records
    assert verify_cache(cache.open_cache(location))["ok"]


def test_a_changed_recorded_object_in_an_extent_is_found_by_verify(release):
    tmp_path, videos, train, val, head = release
    location = tmp_path / "grown.zarr"
    key = run_extraction(_config(tmp_path, videos, [train], location, head), log=lambda _: None).teacher_key
    run_extraction(_config(tmp_path, videos, [train, val], location, head), log=lambda _: None)
    [shard] = sorted((location / "teachers" / key / "parts" / "1" / "features" / "c").rglob("*"))[-1:]
    shard.write_bytes(shard.read_bytes()[:-8] + b"\0" * 8)
    report = verify_cache(cache.open_cache(location))
    assert not report["ok"]
    [damage] = report["teachers"][0]["damaged"]
    assert damage["task"] == 2 and "parts/1/features" in damage["object"]


def test_a_student_trains_on_one_file_and_is_evaluated_and_predicted_on_another(release, cli):
    from egodistill.student.evaluate import EvalConfig, evaluate
    from egodistill.student.train import TrainConfig, train

    tmp_path, videos, train_csv, val, head = release
    location = tmp_path / "grown.zarr"
    run_extraction(_config(tmp_path, videos, [train_csv], location, head), log=lambda _: None)
    cli("cache", "init", "--manifest", val, "--cache", location)
    run_extraction(_config(tmp_path, videos, [train_csv], location, head), log=lambda _: None)
    run = str(tmp_path / "run")
    train(TrainConfig(cache=str(location), inputs=["rgb"], out=run, steps=5, batch_size=2, frames=4, device="cpu"), log=lambda _: None)
    result = evaluate(EvalConfig(cache=str(location), run=run, split="val", device="cpu", cost=False))
    assert result["segments"] == 2  # v2's video is missing: it has no input to score
    cli("predict", "--run", run, "--cache", location, "--split", "val", "--out", tmp_path / "val.npz", "--device", "cpu")
    assert list(np.load(tmp_path / "val.npz")["segment_id"]) == ["v0", "v1"]
    assert strict_unscored(tmp_path / "val.json") == ["v2"]


def strict_unscored(path: Path) -> list[str]:
    return json.loads(path.read_text(), parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))["unscored"]


def test_student_loader_reads_across_extents(release):
    tmp_path, videos, train, val, head = release
    location = tmp_path / "grown.zarr"
    run_extraction(_config(tmp_path, videos, [train], location, head), log=lambda _: None)
    run_extraction(_config(tmp_path, videos, [train, val], location, head), log=lambda _: None)
    whole = tmp_path / "whole.zarr"
    run_extraction(_config(tmp_path, videos, [train, val], whole, head), log=lambda _: None)
    (fa, pa), (fb, pb) = _windows(location), _windows(whole)
    assert pa.tolist() == pb.tolist() == [[True]] * 6 + [[False]]
    assert np.array_equal(fa, fb) and not np.isnan(fa[:6].astype(np.float32)).any()


def _windows(location) -> tuple[np.ndarray, np.ndarray]:
    """Every segment's window as train-student's loader streams it (evaluation order)."""
    from egodistill.student.data import CacheLoader, load_windows

    opened = cache.open_cache(location)
    [key] = opened.teacher_keys()
    table = opened.segments
    loader = CacheLoader(opened, [key], np.arange(len(table)), {"action": table.labels["action"]}, train=False, frames=4, batch_size=2, in_memory=False)
    features, present = load_windows(loader, 1)
    return features[0], present


# --- declared class counts (issue 18 §4) ---------------------------------------------------------------


def test_two_subsets_that_declare_their_heads_get_heads_of_the_same_size(tmp_path, cli):
    a = _write_csv(tmp_path / "a_train.csv", [("a", "x.mp4", 0, 1, "train", 0)], "segment_id,video,start_sec,stop_sec,split,label:verb:97")
    b = _write_csv(tmp_path / "b_val.csv", [("b", "x.mp4", 0, 1, "val", 41)], "segment_id,video,start_sec,stop_sec,split,label:verb:97")
    assert read_manifest(a).heads == read_manifest(b).heads == {"verb": 97}
    undeclared = _write_csv(tmp_path / "c.csv", [("c", "x.mp4", 0, 1, "val", 41)], "segment_id,video,start_sec,stop_sec,split,label:verb")
    assert read_manifest(undeclared).heads == {"verb": 42}
    # --classes sizes an undeclared head from a file of class names (here EPIC's own classes CSV when present).
    names = tmp_path / "verbs.txt"
    names.write_text("\n".join(f"verb{i}" for i in range(97)) + "\n")
    head, verbs = read_classes(f"verb={names}")
    assert head == "verb" and len(verbs) == 97 and verbs[5] == "verb5"
    if (REAL / "epic100" / "EPIC_100_verb_classes.csv").is_file():
        head, verbs = read_classes(f"verb={REAL / 'epic100' / 'EPIC_100_verb_classes.csv'}")
        assert len(verbs) == 97 and verbs[:2] == ["take", "put"]
        assert len(read_classes(f"noun={REAL / 'epic100' / 'EPIC_100_noun_classes.csv'}")[1]) == 300
    [m] = read_manifests([undeclared], {"verb": verbs})
    assert m.heads == {"verb": 97} and m.class_names["verb"][0] == verbs[0]
    location = tmp_path / "sized.zarr"
    cli("cache", "init", "--manifest", a, "--cache", location)
    cli("cache", "init", "--manifest", undeclared, "--cache", location)  # 42 <= 97: it fits
    assert cache.open_cache(location).segments_info["heads"] == {"verb": 97}


@pytest.mark.parametrize("header, row, classes, expected", [
    ("label:verb:10", 10, None, "label:verb 10 is out of range (the head has 10 classes)"),
    ("label:verb:x", 0, None, "declares 'x' classes"),
    ("label:verb:5", 0, "7", "declares 5 classes for head verb, --classes 7"),
    ("label:verb", 9, "7", "label:verb 8 is out of range (--classes gives 7 classes)"),
])
def test_bad_declared_counts_are_one_line(tmp_path, header, row, classes, expected, cli):
    path = _write_csv(tmp_path / "m.csv", [("a", "x.mp4", 0, 1, "train", row - 1 if "--classes gives" in expected else row)],
                      f"segment_id,video,start_sec,stop_sec,split,{header}")
    args = ["cache", "init", "--manifest", path, "--cache", tmp_path / "c.zarr"]
    if classes:
        (tmp_path / "names.txt").write_text("\n".join(f"c{i}" for i in range(int(classes))))
        args += ["--classes", f"verb={tmp_path / 'names.txt'}"]
    assert expected in cli(*args, fails=True)
    assert not (tmp_path / "c.zarr").exists() or not cache.open_cache(tmp_path / "c.zarr").has_segments


def test_a_file_added_later_cannot_grow_a_head_or_bring_a_new_one(tmp_path, cli):
    first = _write_csv(tmp_path / "a_train.csv", [("a", "x.mp4", 0, 1, "train", 2)], "segment_id,video,start_sec,stop_sec,split,label:verb")
    bigger = _write_csv(tmp_path / "b_val.csv", [("b", "x.mp4", 0, 1, "val", 5)], "segment_id,video,start_sec,stop_sec,split,label:verb")
    other = _write_csv(tmp_path / "c_val.csv", [("c", "x.mp4", 0, 1, "val", 0)], "segment_id,video,start_sec,stop_sec,split,label:noun:4")
    location = tmp_path / "c.zarr"
    cli("cache", "init", "--manifest", first, "--cache", location)
    assert "head verb has 6 classes, the cache 3" in cli("cache", "init", "--manifest", bigger, "--cache", location, fails=True)
    assert "head noun, which the cache's segments table lacks" in cli("cache", "init", "--manifest", other, "--cache", location, fails=True)
    with pytest.raises(ManifestError, match="--classes names head"):
        read_manifests([first], {"noun": ["a", "b", "c", "d"]})


def test_head_file_must_match_the_declared_count(release, cli):
    tmp_path, videos, train, val, head = release
    torch.save({"action.weight": torch.randn(5, 96), "action.bias": torch.randn(5)}, tmp_path / "five.pt")
    line = cli("extract", "--manifest", train, "--videos", videos, "--cache", tmp_path / "c.zarr", "--backbone", BACKBONE,
               "--head", tmp_path / "five.pt", "--workers", "0", "--device", "cpu", fails=True)
    assert "3 classes" in line and "five.pt" in line


# --- unlabelled windows (issue 16 §3, the manifest part) ----------------------------------------------------


def test_windows_over_whole_videos_join_a_labelled_cache_unlabelled(release, cli):
    tmp_path, videos, train, val, head = release
    out = tmp_path / "windows.csv"
    cli("manifest", "windows", "--videos", videos, "--window", "1", "--stride", "0.5", "--exclude", train, "--out", out)
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["segment_id", "video", "start_sec", "stop_sec", "split"] and {r["split"] for r in rows} == {"train"}
    spans = {(r["video"], float(r["start_sec"]), float(r["stop_sec"])) for r in rows}
    # whole_3s.mp4 has no excluded segment: windows [0,1), [0.5,1.5), ..., [2,3); truncated/empty files give fewer or none.
    assert {(a, b) for v, a, b in spans if v == "whole_3s.mp4"} == {(0.0, 1.0), (0.5, 1.5), (1.0, 2.0), (1.5, 2.5), (2.0, 3.0)}
    # h264_aac.mp4's [0, 2) is covered by t0 and t1 of the training file: no window of it overlaps them.
    assert not any(v == "h264_aac.mp4" for v, _, _ in spans)
    assert all(not (v == "vp9_opus.webm" and a < 1.8 and 0.2 < b) for v, a, b in spans)
    location = tmp_path / "c.zarr"
    cli("cache", "init", "--manifest", train, "--manifest", out, "--cache", location)
    table = cache.open_cache(location).segments
    assert table.heads == {"action": 3} and (table.labels["action"][4:] == -1).all() and len(table) == 4 + len(rows)
    assert "is not a folder" in cli("manifest", "windows", "--videos", train, "--out", out, fails=True)
    assert "--window 0" in cli("manifest", "windows", "--videos", videos, "--window", "0", "--out", out, fails=True)
