"""The catalog as a lab reads it: `cache ls` / `info --json`, removing one teacher, adding one,
and proof that neither rewrites another teacher's arrays."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from egodistill import cache
from helpers import copy_cache, egodistill, one_line_error, snapshot, teacher_key_of


@pytest.fixture
def copied(tmp_path, extracted_cache) -> Path:
    return copy_cache(extracted_cache, tmp_path / "cache.zarr")


def _teacher_files(location: Path, key: str) -> dict:
    return snapshot(location / "teachers" / key)


def test_ls_and_info_json_show_who_when_provenance_and_completeness(extracted_cache):
    listing = egodistill("cache", "ls", extracted_cache, check=0).stdout
    for modality in ("rgb", "flow", "audio"):
        key = teacher_key_of(extracted_cache, modality)
        [line] = [line for line in listing.splitlines() if key in line]
        assert f"  {modality}  test_resnet" in line and "frames=4" in line and "done 18/18 complete" in line and "egodistill 0.1.0" in line
    info = json.loads(egodistill("cache", "info", extracted_cache, "--json", check=0).stdout)
    for t in info["teachers"]:
        assert {"created_by", "created_at", "egodistill", "written_by", "last_finished_at", "tasks_done", "failures"} <= set(t)
        assert t["provenance"]["weights"] == "random-init:0" and t["provenance"]["sampling"] == {"frames": 4}
        assert "preprocessing" in t["provenance"] and t["rows"] == 72 and t["complete"] and t["checksummed"] and t["tasks_done"] == 3
        assert "@" in t["created_by"] and t["written_by"]


def test_rm_removes_one_teacher_and_leaves_the_others_byte_and_mtime_identical(copied):
    flow, rgb, audio = (teacher_key_of(copied, m) for m in ("flow", "rgb", "audio"))
    others = {k: _teacher_files(copied, k) for k in (rgb, audio)}
    segments = snapshot(copied / "segments")
    egodistill("cache", "rm", copied, "--teacher", flow, "--yes", check=0)
    assert not (copied / "teachers" / flow).exists()
    assert {k: _teacher_files(copied, k) for k in (rgb, audio)} == others and snapshot(copied / "segments") == segments
    assert cache.open_cache(copied).teacher_keys() == sorted([rgb, audio])
    assert flow not in egodistill("cache", "ls", copied, check=0).stdout
    assert "is not in the cache" in one_line_error(egodistill("cache", "rm", copied, "--teacher", flow, "--yes"))


def test_rm_is_refused_while_an_extraction_holds_the_teacher(copied):
    key = teacher_key_of(copied, "audio")
    with cache.open_cache(copied, mode="r+").lease(key):  # this process plays the running extraction
        assert "is being extracted by" in one_line_error(egodistill("cache", "rm", copied, "--teacher", key, "--yes"))
    egodistill("cache", "rm", copied, "--teacher", key, "--yes", check=0)


def test_adding_a_teacher_never_rewrites_another_teachers_arrays(copied, extracted_cache):
    from egodistill.extract.run import ExtractConfig, run_extraction

    keys = cache.open_cache(copied).teacher_keys()
    before = {k: _teacher_files(copied, k) for k in keys}
    segments = snapshot(copied / "segments")
    folder = extracted_cache.parent
    summary = run_extraction(ExtractConfig(manifest=str(folder / "segments.csv"), videos=str(folder / "videos"), cache=str(copied), modality="rgb",
                                           backbone="test_resnet", frames=2, seed=1, workers=0, device="cpu", precision="fp32"), log=lambda _: None)
    assert summary.ok and summary.teacher_key not in keys
    assert {k: _teacher_files(copied, k) for k in keys} == before and snapshot(copied / "segments") == segments
    assert len(cache.open_cache(copied).teacher_keys()) == 4


def test_a_teacher_another_writer_is_creating_is_not_listed_and_warns_of_nothing(copied):
    keys = cache.open_cache(copied).teacher_keys()
    writer = cache.open_cache(copied, mode="r+")
    with writer.lease("rgb-being-created"), warnings.catch_warnings():  # its folder holds the lease file, no arrays yet
        warnings.simplefilter("error")
        assert (copied / "teachers" / "rgb-being-created").is_dir()
        assert cache.open_cache(copied).teacher_keys() == keys
        listing = egodistill("cache", "ls", copied, check=0).stdout
        assert "rgb-being-created" not in listing and all(k in listing for k in keys)
    before = json.loads(egodistill("cache", "info", copied, "--json", check=0).stdout)["teachers"][0]["arrays"]
    with writer.lease(keys[0]), warnings.catch_warnings():  # the lease file beside a teacher's arrays is no array either
        warnings.simplefilter("error")
        assert json.loads(egodistill("cache", "info", copied, "--json", check=0).stdout)["teachers"][0]["arrays"] == before
