"""The contract holds for any reader and across upgrades: every array opens in tensorstore and zarr-python
alike, a schema-1 cache is refused in one line until `cache upgrade` converts it, and teacher keys made by
older versions stand."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from egodistill import cache
from egodistill.testing import SyntheticSpec, build_synthetic_cache
from egodistill.cache.verify import verify_cache
from helpers import ROOT, egodistill, one_line_error, snapshot

SCHEMA1 = ROOT / "tests" / "data" / "schema1-cache"  # written by egodistill 0.1.0 (then cache/testing.py, now egodistill.testing; 12 segments, one rgb teacher)
SCHEMA1_KEY = "rgb-resnet18-b8f9e1e702"


def _arrays(location: Path) -> dict[str, zarr.Array]:
    root = zarr.open_group(str(location), mode="r")
    return {path: member for path, member in root.members(max_depth=None) if isinstance(member, zarr.Array)}


@pytest.fixture(scope="module")
def with_logits(tmp_path_factory) -> Path:
    """A cache with every kind of array: features teachers with logits heads, a logits-only teacher, failed segments."""
    location = tmp_path_factory.mktemp("logits") / "cache.zarr"
    keys = build_synthetic_cache(str(location), SyntheticSpec(segments=40, failed={"flow": [3, 17]}))
    opened = cache.open_cache(location, mode="r+")
    table = opened.segments
    rng = np.random.default_rng(0)
    logits = {h: rng.normal(size=(len(table), c)).astype(np.float32) for h, c in table.heads.items()}
    provenance = cache.Provenance(modality="fusion", backbone="fusion_transformer", source_teachers=tuple(keys.values()), fit={"seed": 0})
    opened.create_logits_teacher(provenance.teacher_key(), provenance, logits, [cache.Failure(5, str(table.ids[5]), str(table.videos[5]), "no inputs")])
    with_heads = cache.Provenance(modality="rgb", backbone="resnet18", weights="random-init:1", head="sha256:0", sampling={"frames": 2})
    offsets, layout = cache.plan_layout(np.full(len(table), 2), segments_per_task=8)
    teacher, _ = opened.create_teacher(with_heads.teacher_key(), with_heads, 8, offsets, layout, table.heads)
    for task in range(layout.tasks):
        segs = layout.task_segments(task)
        teacher.write_task(task, rng.normal(size=(2 * len(segs), 8)).astype(np.float16), np.zeros(2 * len(segs), np.float32),
                           {h: rng.normal(size=(len(segs), c)).astype(np.float32) for h, c in table.heads.items()})
    return location


@pytest.mark.parametrize("which", ["extracted", "with_logits"])
def test_every_array_reads_the_same_in_tensorstore_and_zarr_python(which, extracted_cache, with_logits):
    ts = pytest.importorskip("tensorstore")
    location = extracted_cache if which == "extracted" else with_logits
    arrays = _arrays(location)
    names = {path.rsplit("/", 1)[-1] for path in arrays}
    assert {"id_bytes", "id_offsets", "video_bytes", "split_offsets", "start_sec", "features", "timestamps", "offsets"} <= names
    if which == "with_logits":
        assert any("/logits/" in path for path in arrays)
    for path, array in sorted(arrays.items()):
        store = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(location / path)}}, read=True).result()
        got, want = store.read().result(), array[...]
        assert got.dtype == want.dtype and got.shape == want.shape, path
        assert np.array_equal(got, want, equal_nan=want.dtype.kind == "f"), path


def test_text_columns_decode_to_the_manifests_strings(extracted_cache):
    root = zarr.open_group(str(extracted_cache), mode="r")
    offsets, data = root["segments/id_offsets"][:], root["segments/id_bytes"][:]
    ids = [bytes(data[a:b]).decode() for a, b in zip(offsets[:-1], offsets[1:])]
    assert ids == [f"clip{i:02d}" for i in range(18)] == cache.open_cache(extracted_cache).segments.ids.tolist()
    assert set(cache.open_cache(extracted_cache).segments.split) == {"train", "val"}


def test_a_schema_1_cache_is_refused_in_one_line_until_upgraded_in_place(tmp_path):
    copied = shutil.copytree(SCHEMA1, tmp_path / "old.zarr")
    with pytest.raises(cache.CacheError, match="cache upgrade"):
        cache.open_cache(copied)
    assert f"egodistill cache upgrade {copied}" in one_line_error(egodistill("cache", "ls", copied))
    teacher_files = {k: v for k, v in snapshot(copied / "teachers").items() if "/tasks/" not in f"/{k}/"}

    assert "schema 1 -> 2" in egodistill("cache", "upgrade", copied, check=0).stdout
    opened = cache.open_cache(copied)
    assert opened.schema["schema_version"] == cache.SCHEMA_VERSION == 2
    assert opened.segments.ids.tolist() == [f"seg{i:05d}" for i in range(12)]
    assert opened.segments.videos.tolist() == ["video000"] * 10 + ["video001"] * 2
    assert opened.teacher_keys() == [SCHEMA1_KEY]  # the key made by 0.1.0 stands
    teacher = opened.teacher(SCHEMA1_KEY)
    assert teacher.provenance.egodistill == "synthetic" and [f.segment for f in teacher.ledger()] == [5]
    assert verify_cache(opened)["ok"]  # the records' checksums of the segments table were renewed
    assert {k: v for k, v in snapshot(copied / "teachers").items() if "/tasks/" not in f"/{k}/"} == teacher_files
    assert not (copied / "segments" / "id").exists()
    assert "nothing to do" in egodistill("cache", "upgrade", copied, check=0).stdout


def test_upgrade_refuses_a_cache_that_says_schema_1_without_its_table_in_one_line_writing_nothing(tmp_path):
    from egodistill.cache.store import ROOT_ATTR

    location = tmp_path / "mislabelled.zarr"
    build_synthetic_cache(str(location), SyntheticSpec(segments=6, feature_dim=4, modalities={"rgb": ("resnet18", 3, 64, 1.0)}))
    root = zarr.open_group(str(location), mode="r+")
    root.attrs[ROOT_ATTR] = {**root.attrs[ROOT_ATTR], "schema_version": 1}  # a schema-2 table under a schema-1 root
    before = snapshot(location)
    line = one_line_error(egodistill("cache", "upgrade", location))
    assert f"cache {location} says schema_version 1, but its segments table lacks schema 1's column(s) segments/id, segments/video, segments/split" in line
    assert "id_bytes" in line and "nothing was written" in line
    after = snapshot(location)
    assert after.pop(".") and before.pop(".") and after == before  # the root's own mtime: opening for writing probes it


def test_keys_made_by_older_versions_stand_and_the_version_is_not_identity(tmp_path):
    opened = cache.open_cache(tmp_path / "c.zarr", mode="a")
    offsets, layout = cache.plan_layout(np.full(4, 2))
    old = cache.Provenance(modality="rgb", backbone="resnet18", weights="random-init:0", sampling={"frames": 2}, egodistill="0.1.0")
    opened.create_teacher("rgb-resnet18-0123456789", old, 4, offsets, layout, {})  # as 0.1.0 named it: its hash included the version
    newer = cache.Provenance(modality="rgb", backbone="resnet18", weights="random-init:0", sampling={"frames": 2}, egodistill="9.9.9")
    assert newer.teacher_key() == old.teacher_key()
    assert opened.key_for(newer) == "rgb-resnet18-0123456789"
    teacher, resumed = opened.create_teacher("rgb-resnet18-0123456789", newer, 4, offsets, layout, {})
    assert resumed and teacher.provenance.egodistill == "0.1.0"  # who made it stays recorded
    other = cache.Provenance(modality="rgb", backbone="resnet18", weights="random-init:1", sampling={"frames": 2})
    assert opened.key_for(other) == other.teacher_key() != "rgb-resnet18-0123456789"
    reformatted = cache.Provenance(modality="rgb", backbone="resnet18", weights="random-init:0", sampling={"frames": 2},
                                   features_format=cache.FEATURES_FORMAT + 1)
    assert opened.key_for(reformatted) != "rgb-resnet18-0123456789"
    with pytest.raises(cache.CacheError, match="other settings"):
        opened.create_teacher("rgb-resnet18-0123456789", other, 4, offsets, layout, {})


def test_views_and_the_unlabelled_label_are_stored_as_the_contract_writes_them(tmp_path):
    location = tmp_path / "c.zarr"
    build_synthetic_cache(str(location), SyntheticSpec(segments=12, unlabelled=0.5))
    opened = cache.open_cache(location, mode="r+")
    n, heads = len(opened.segments), opened.segments.heads
    logits = {h: np.zeros((n, c), np.float32) for h, c in heads.items()}
    provenance = cache.Provenance(modality="fusion", backbone="fusion_head", fit={"views": 2})
    views = cache.Views(8, (0.0, 1.0))
    with pytest.raises(cache.CacheError, match="views and view_logits together"):
        opened.create_logits_teacher(provenance.teacher_key(), provenance, logits, views=views)
    view_logits = {h: np.zeros((n, 2, c), np.float32) for h, c in heads.items()}
    teacher = opened.create_logits_teacher(provenance.teacher_key(), provenance, logits, views=views, view_logits=view_logits)
    assert cache.open_cache(location).teacher(teacher.key).views == views
    stored = zarr.open_group(str(location), mode="r")
    attrs = stored[f"teachers/{teacher.key}"].attrs["teacher"]["views"]
    assert attrs == {"frames": 8, "placements": [0.0, 1.0]} and list(attrs) == ["frames", "placements"]
    label = stored[f"segments/label_{next(iter(heads))}"]
    assert cache.UNLABELLED == label.fill_value == -1 and (label[:] == -1).any()  # docs/cache-format.md: -1 = unlabelled
