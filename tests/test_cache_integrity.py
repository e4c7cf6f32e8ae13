"""Integrity as a lab member meets it: checksums written with every task, `cache verify` naming what
changed, half-finished tasks shown as incomplete, read-only opening that never writes, newer schemas refused."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from egodistill import cache
from egodistill.cache.verify import verify_cache
from helpers import copy_cache, egodistill, one_line_error, snapshot, teacher_key_of


@pytest.fixture
def copied(tmp_path, extracted_cache) -> Path:
    return copy_cache(extracted_cache, tmp_path / "cache.zarr")


def test_every_task_record_holds_the_sha256_of_the_shards_it_wrote(extracted_cache):
    for teacher in cache.open_cache(extracted_cache).teachers():
        records = teacher.records()
        assert len(records) == teacher.layout.tasks
        shards = set()
        for record in records.values():
            for object_key, checksum in record.checksums.items():
                on_disk = extracted_cache / object_key
                if checksum == "absent":  # only the fill value: zarr stores no object (here: start_sec, all 0)
                    assert not on_disk.exists(), object_key
                    continue
                assert checksum == "sha256:" + hashlib.sha256(on_disk.read_bytes()).hexdigest(), object_key
                shards.add(object_key)
        written = {str(p.relative_to(extracted_cache)) for p in (extracted_cache / "teachers" / teacher.key / "features").rglob("*") if p.is_file() and p.name != "zarr.json"}
        assert written and written <= shards  # every features shard is covered by a record


def test_verify_names_the_shard_with_a_flipped_byte_and_exits_nonzero(copied):
    assert "ok" in egodistill("cache", "verify", copied, check=0).stdout
    key = teacher_key_of(copied, "flow")
    shard = copied / "teachers" / key / "features" / "c" / "1" / "0"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x01
    shard.write_bytes(bytes(data))
    result = egodistill("cache", "verify", copied, check=2)
    assert f"teachers/{key}/features/c/1/0" in result.stdout and "bytes changed" in result.stdout, result.stdout
    report = json.loads(egodistill("cache", "verify", copied, "--json", check=2).stdout)
    damaged = [d for t in report["teachers"] for d in t["damaged"]]
    assert [(d["teacher"], d["array"], d["task"]) for d in damaged] == [(key, "features", 1)]
    # the other teachers are reported intact
    assert sum(not t["damaged"] for t in report["teachers"]) == 2


def test_a_task_killed_between_its_rows_and_its_record_is_incomplete_until_resumed(copied, extracted_cache):
    key = teacher_key_of(copied, "rgb")
    # What kill -9 leaves after a task wrote its shard but before its record: the rows, no record.
    shutil.rmtree(copied / "teachers" / key / "tasks" / "000001")
    report = verify_cache(cache.open_cache(copied), [key])
    assert report["ok"] and report["teachers"][0]["tasks_incomplete"] == [1]
    assert "incomplete tasks [1]" in egodistill("cache", "verify", copied, "--teacher", key, check=0).stdout
    usable = cache.open_cache(copied).teacher(key).usable_segments()
    assert not usable[6:12].any() and usable[:6].all()
    info = json.loads(egodistill("cache", "info", copied, "--json", check=0).stdout)
    [described] = [t for t in info["teachers"] if t["key"] == key]
    assert described["segments_pending"] == 6 and not described["complete"]

    from egodistill.extract.run import ExtractConfig, run_extraction  # the same command resumes and finishes it

    folder = extracted_cache.parent
    summary = run_extraction(ExtractConfig(manifest=str(folder / "segments.csv"), videos=str(folder / "videos"), cache=str(copied), modality="rgb",
                                           backbone="test_resnet", frames=4, workers=0, device="cpu", precision="fp32", segments_per_task=6), log=lambda _: None)
    assert summary.ok and summary.extracted == 6
    report = verify_cache(cache.open_cache(copied), [key])
    assert report["ok"] and report["teachers"][0]["tasks_incomplete"] == [] and report["teachers"][0]["tasks_done"] == 3


def _extract(extracted_cache: Path, into: Path, modality: str):
    """The command that made the fixture's teachers, run again on `into`."""
    from egodistill.extract.run import ExtractConfig, run_extraction

    folder = extracted_cache.parent
    return run_extraction(ExtractConfig(manifest=str(folder / "segments.csv"), videos=str(folder / "videos"), cache=str(into), modality=modality,
                                        backbone="test_resnet", frames=4, workers=0, device="cpu", precision="fp32", segments_per_task=6), log=lambda _: None)


def test_verify_repair_forgets_the_damaged_tasks_and_extract_writes_them_again(copied, extracted_cache):
    flow, audio = teacher_key_of(copied, "flow"), teacher_key_of(copied, "audio")
    shard = copied / "teachers" / flow / "features" / "c" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x01
    shard.write_bytes(bytes(data))
    (copied / "teachers" / audio / "features" / "c" / "1" / "0").unlink()
    failing = egodistill("cache", "verify", copied, check=2).stdout
    assert "bytes changed" in failing and "missing" in failing, failing
    assert failing.strip().splitlines()[-1] == f"run `egodistill cache verify {copied} --repair`, then the extract command again"

    repaired = egodistill("cache", "verify", copied, "--repair", check=0).stdout
    assert f"teacher {flow}: 1 task(s) forgotten (segments 0-5): rerun the extract command that made it" in repaired, repaired
    assert f"teacher {audio}: 1 task(s) forgotten (segments 6-11): rerun the extract command" in repaired, repaired
    assert (copied / "teachers" / audio / "features" / "c" / "0" / "0").exists()  # forgetting deletes no data
    info = {t["key"]: t for t in json.loads(egodistill("cache", "info", copied, "--json", check=0).stdout)["teachers"]}
    assert not info[flow]["complete"] and info[flow]["segments_pending"] == 6 and info[audio]["segments_pending"] == 6
    assert verify_cache(cache.open_cache(copied))["ok"]  # what remains recorded is intact

    for modality in ("flow", "audio"):  # the same command writes exactly the forgotten task again
        summary = _extract(extracted_cache, copied, modality)
        assert summary.ok and summary.extracted == 6, summary
    assert "DAMAGED" not in egodistill("cache", "verify", copied, check=0).stdout
    original, again = cache.open_cache(extracted_cache), cache.open_cache(copied)
    for key in (flow, audio):
        assert len(again.teacher(key).records()) == again.teacher(key).layout.tasks
        rows = original.teacher(key).layout.rows
        np.testing.assert_array_equal(again.teacher(key).read_rows(0, rows)[0], original.teacher(key).read_rows(0, rows)[0])


def test_verify_repair_refuses_a_teacher_an_extraction_holds(copied):
    key = teacher_key_of(copied, "rgb")
    opened = cache.open_cache(copied, mode="r+")
    with opened.lease(key):  # held by this process, alive: what a running extraction holds
        result = egodistill("cache", "verify", copied, "--teacher", key, "--repair", process=True, check=2)
    assert f"teacher {key}: not repaired: teacher {key} is being extracted by" in result.stdout, result.stdout
    assert len(opened.teacher(key).records()) == opened.teacher(key).layout.tasks


def test_reading_never_writes_to_the_cache(copied):
    before = snapshot(copied)
    for command in (("cache", "info", copied, "--json"), ("cache", "ls", copied), ("cache", "verify", copied)):
        egodistill(*command, check=0)
    from egodistill.student.data import CacheLoader  # what training reads, through its public loader

    opened = cache.open_cache(copied, mode="r")
    keys = [teacher_key_of(copied, "rgb"), teacher_key_of(copied, "flow")]
    table = opened.segments
    loader = CacheLoader(opened, keys, np.arange(len(table)), table.labels, batch_size=4, frames=4)
    assert sum(len(batch) for batch in loader.epoch(0)) == len(table)
    assert snapshot(copied) == before


def test_a_cache_from_a_newer_schema_is_refused_in_one_line(copied):
    meta_path = copied / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["egodistill"]["schema_version"] = cache.SCHEMA_VERSION + 1
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(cache.CacheError, match="newer than this egodistill understands"):
        cache.open_cache(copied)
    for command in (("cache", "info", copied), ("cache", "ls", copied), ("cache", "verify", copied)):
        assert "upgrade egodistill" in one_line_error(egodistill(*command))


def test_verify_repair_of_a_shard_two_tasks_share_under_fps(extracted_cache, tmp_path):
    """With --fps, segments differ in rows and a shard can hold rows of two tasks: both are forgotten, and the
    undecodable shard is deleted (zarr rewrites a shared shard by reading it first), so extract remakes it whole."""
    from egodistill.extract.run import ExtractConfig, run_extraction

    folder = extracted_cache.parent
    location = tmp_path / "fps.zarr"
    manifest = tmp_path / "ragged.csv"  # segments of 0.5, 0.7 and 0.9 s: 5, 7 and 9 rows at 10 fps
    manifest.write_text("segment_id,video,start_sec,stop_sec,split,label:action\n"
                        + "".join(f"s{i},clip{i:02d}.mp4,0,{0.5 + 0.2 * (i % 3):.1f},train,{i % 3}\n" for i in range(8)))
    config = ExtractConfig(manifest=str(manifest), videos=str(folder / "videos"), cache=str(location), modality="rgb",
                           backbone="test_resnet", fps=10, workers=0, device="cpu", precision="fp32", segments_per_task=1)
    first = run_extraction(config, log=lambda _: None)
    assert first.ok
    pristine = tmp_path / "pristine.zarr"
    shutil.copytree(location, pristine)
    teacher = cache.open_cache(location).teacher(first.teacher_key)
    rows_per_shard, offsets = teacher.layout.rows_per_shard, teacher.offsets
    tasks_in = {s: {t for t in range(teacher.layout.tasks) if offsets[t] < (s + 1) * rows_per_shard and offsets[t + 1] > s * rows_per_shard}
                for s in range(-(-int(offsets[-1]) // rows_per_shard))}
    shared = min(s for s, tasks in tasks_in.items() if len(tasks) > 1)
    shard = location / "teachers" / first.teacher_key / "features" / "c" / str(shared) / "0"
    shard.write_bytes(shard.read_bytes()[:-16])  # its index is gone: the shard no longer decodes
    repaired = egodistill("cache", "verify", location, "--repair", check=0).stdout
    assert f"{len(tasks_in[shared])} task(s) forgotten" in repaired, repaired
    again = run_extraction(config, log=lambda _: None)
    assert again.ok and again.extracted == len(tasks_in[shared]), again
    assert "DAMAGED" not in egodistill("cache", "verify", location, check=0).stdout
    a, b = cache.open_cache(location).teacher(first.teacher_key), cache.open_cache(pristine).teacher(first.teacher_key)
    np.testing.assert_array_equal(a.read_rows(0, int(offsets[-1]))[0], b.read_rows(0, int(offsets[-1]))[0])
