"""The cache is a format: the doc's snippets run as written with zarr-python, tensorstore and xarray;
HDF5 export and import give back the same bits; public-style feature files import as a teacher."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from egodistill import cache
from egodistill.cache.verify import verify_cache
from helpers import ROOT, copy_cache, egodistill, one_line_error, teacher_key_of

DOC = ROOT / "docs" / "cache-format.md"
DOC_KEY = "rgb-resnet50-0123456789"
HEADS = {"verb": 97, "noun": 300}


def doc_snippets() -> dict[str, str]:
    section = DOC.read_text().split("## Reading without egodistill", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return {("zarr" if "import zarr" in b else "tensorstore" if "tensorstore" in b else "xarray"): b for b in blocks}


@pytest.fixture(scope="module")
def doc_cache(tmp_path_factory) -> Path:
    """A cache shaped like the doc's example: teacher `rgb-resnet50-0123456789` with features and verb/noun logits."""
    folder = tmp_path_factory.mktemp("doc")
    rng = np.random.default_rng(0)
    n, t, d = 10, 4, 16
    opened = cache.open_cache(folder / "epic.zarr", mode="a")
    opened.write_segments(cache.SegmentTable(
        ids=np.array([f"P01_11_{i}" for i in range(n)], dtype=object), videos=np.array(["P01_11"] * n, dtype=object),
        start_sec=np.arange(n, dtype=np.float64), stop_sec=np.arange(n, dtype=np.float64) + 1, split=np.array(["train"] * n, dtype=object),
        labels={h: rng.integers(0, c, n).astype(np.int32) for h, c in HEADS.items()}, heads=HEADS), {"format": "test"})
    provenance = cache.Provenance(modality="rgb", backbone="resnet50", weights="random-init:0", head="sha256:0", in_chans=3,
                                  sampling={"frames": t}, precision="fp32")
    offsets, layout = cache.plan_layout(np.full(n, t), segments_per_task=4)
    teacher, _ = opened.create_teacher(DOC_KEY, provenance, d, offsets, layout, HEADS)
    for task in range(layout.tasks):
        segs = layout.task_segments(task)
        rows = int(offsets[segs.stop] - offsets[segs.start])
        teacher.write_task(task, rng.normal(size=(rows, d)).astype(np.float16), np.arange(rows, dtype=np.float32),
                           {h: rng.normal(size=(len(segs), c)).astype(np.float32) for h, c in HEADS.items()})
    return folder


@pytest.mark.parametrize("reader", ["zarr", "tensorstore", "xarray"])
def test_doc_snippet_reads_features_and_logits_without_egodistill(doc_cache, reader, tmp_path):
    code = doc_snippets()[reader]
    dump = tmp_path / "out.npz"
    epilogue = (
        "\nimport sys, numpy\n"
        "assert not {'cache', 'extract', 'student', 'cli'} & set(sys.modules), 'the snippet imported egodistill'\n"
        f"numpy.savez({str(dump)!r}, features=numpy.asarray(features), verb_logits=numpy.asarray(verb_logits), segment_id=numpy.asarray(segment_id))\n"
    )
    result = subprocess.run([sys.executable, "-c", code + epilogue], cwd=doc_cache, capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    got = np.load(dump)
    opened = cache.open_cache(doc_cache / "epic.zarr")
    teacher = opened.teacher(DOC_KEY)
    o = teacher.offsets
    expected, _ = teacher.read_rows(o[3], o[4])
    np.testing.assert_array_equal(got["features"].astype(np.float16), expected)
    np.testing.assert_array_equal(got["verb_logits"], teacher.read_logits("verb")[3])
    assert str(got["segment_id"]) == opened.segments.ids[3] == "P01_11_3"


def test_export_h5_then_import_h5_is_bit_identical(tmp_path, extracted_cache, doc_cache):
    for source, key in ((extracted_cache, teacher_key_of(extracted_cache, "audio")), (doc_cache / "epic.zarr", DOC_KEY)):
        out = tmp_path / f"{key}.h5"
        egodistill("cache", "export-h5", source, out, "--teacher", key, check=0)
        with h5py.File(out) as f:  # readable as plain HDF5, named as in the Zarr layout
            assert f["teacher/features"].dtype == np.float16 and "egodistill_export" in f.attrs
        target = tmp_path / f"back-{key}.zarr"
        egodistill("cache", "import-h5", out, "--cache", target, check=0)
        a = cache.open_cache(source).teacher(key)
        b = cache.open_cache(target).teacher(key)
        for x, y in zip([*a.read_rows(0, a.layout.rows), a.offsets], [*b.read_rows(0, b.layout.rows), b.offsets]):
            assert x.tobytes() == y.tobytes()  # bit for bit, NaN payloads included
        for head in a.heads:
            assert a.read_logits(head).tobytes() == b.read_logits(head).tobytes(), head
        assert b.provenance == a.provenance and b.layout == a.layout and b.created_at == a.created_at
        assert b.imported["from"] == str(out) and b.imported["sha256"].startswith("sha256:")
        assert cache.open_cache(target).segments.ids.tolist() == cache.open_cache(source).segments.ids.tolist()
        assert verify_cache(cache.open_cache(target))["ok"]
        # importing it again is refused rather than silently overwriting
        assert "already in" in one_line_error(egodistill("cache", "import-h5", out, "--cache", target))


def test_public_per_segment_and_per_video_feature_files_import_as_teachers(tmp_path, extracted_cache):
    target = copy_cache(extracted_cache, tmp_path / "cache.zarr")
    table = cache.open_cache(target).segments
    rng = np.random.default_rng(1)
    per_segment = {str(s): rng.normal(size=(3 + i % 3, 24)).astype(np.float32) for i, s in enumerate(table.ids[:-1])}  # the last is missing
    with h5py.File(tmp_path / "by_segment.h5", "w") as f:
        for sid, values in per_segment.items():
            f[sid] = values
    with h5py.File(tmp_path / "by_video.h5", "w") as f:  # EPIC-style: features of whole videos at 10 rows/s, with times
        for video in sorted(set(map(str, table.videos))):
            group = f.create_group(video)  # named as the manifest's video column (an EPIC video_id such as P01_11)
            group["features"] = rng.normal(size=(20, 24)).astype(np.float32)
            group["timestamps"] = np.arange(20, dtype=np.float32) / 10
    egodistill("cache", "import-h5", tmp_path / "by_segment.h5", "--cache", target, "--modality", "rgb", "--backbone", "tsm_r50", check=0)
    [key] = [k for k in cache.open_cache(target).teacher_keys() if k.startswith("rgb-tsm_r50-")]
    teacher = cache.open_cache(target).teacher(key)
    o = teacher.offsets
    for i in (0, 4):
        features, times = teacher.read_rows(o[i], o[i + 1])
        np.testing.assert_array_equal(features, per_segment[str(table.ids[i])].astype(np.float16))
        assert np.all((times >= table.start_sec[i]) & (times <= table.stop_sec[i]))
    info = json.loads(egodistill("cache", "info", target, "--json", check=0).stdout)
    [t] = [t for t in info["teachers"] if t["key"] == key]
    assert t["provenance"]["backbone"] == "tsm_r50" and t["provenance"]["weights"].startswith("sha256:")
    assert t["segments_failed"] == 1 and t["failures"][0]["id"] == str(table.ids[-1]) and t["imported"]["from"].endswith("by_segment.h5")

    egodistill("cache", "import-h5", tmp_path / "by_video.h5", "--cache", target, "--modality", "flow", "--name", "flow-epic-released", check=0).stdout
    teacher = cache.open_cache(target).teacher("flow-epic-released")
    assert teacher.usable_segments().all()
    o = teacher.offsets
    _, times = teacher.read_rows(o[0], o[1])
    np.testing.assert_allclose(times, np.arange(10, dtype=np.float32) / 10)  # clip00 spans 0-1 s: 10 rows
    assert verify_cache(cache.open_cache(target))["ok"]
