"""`egodistill.dataset(...)`: the cache as a map-style Dataset for a lab's own loop, equal to what train-student's loader yields."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import egodistill
from egodistill import cache, testing
from egodistill.common import EgodistillError
from egodistill.student.data import CacheLoader, present_inputs, teacher_logit_table

SEGMENTS = 40
ROWS = 12  # rows per segment; windows of 8 leave room, so where the window sits is tested


def _cache(location: str, views: bool) -> str:
    """A synthetic cache (rgb, flow with a failed segment, audio) and a logits-only 'fusion' teacher, with views or not."""
    testing.build_synthetic_cache(location, testing.SyntheticSpec(segments=SEGMENTS, frames=ROWS, feature_dim=8, segments_per_task=8,
                                                                  failed={"flow": [3, 30]}, modalities={m: testing.DEFAULT_MODALITIES[m] for m in ("rgb", "flow")}))
    root = cache.open_cache(location, mode="a")
    rng = np.random.default_rng(1)
    heads = root.segments.heads
    logits = {h: rng.normal(size=(SEGMENTS, c)).astype(np.float32) for h, c in heads.items()}
    logits["verb"][5] = np.nan  # a segment this teacher has no logits for
    placements = (0.0, 0.5, 1.0)
    per_view = {h: rng.normal(size=(SEGMENTS, len(placements), c)).astype(np.float32) for h, c in heads.items()} if views else None
    provenance = cache.Provenance(modality="fusion", backbone="temporal_head", fit={"views": views})
    root.create_logits_teacher(provenance.teacher_key(), provenance, logits, views=cache.Views(8, placements) if views else None, view_logits=per_view)
    _frames_teacher(root, rng)
    return location


def _frames_teacher(root: cache.Cache, rng) -> None:
    """Stored frames (what `extract --modality frames` writes): uint8 [ROWS per segment, 6, 4, 3], random pixels."""
    provenance = cache.Provenance(modality="frames", backbone="frames", sampling={"frames": ROWS})
    offsets, layout = cache.plan_layout(np.full(SEGMENTS, ROWS), 8)
    teacher, _ = root.create_teacher(provenance.teacher_key(), provenance, 0, offsets, layout, {}, frame_shape=(6, 4, 3))
    for task in range(layout.tasks):
        segs = layout.task_segments(task)
        rows = int(offsets[segs.stop] - offsets[segs.start])
        teacher.write_task(task, rng.integers(0, 256, size=(rows, 6, 4, 3), dtype=np.uint8), np.zeros(rows, dtype=np.float32), {}, worker="test")


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dsapi")
    return {views: _cache(str(folder / f"views{views}.zarr"), views) for views in (False, True)}


def _through_workers(data) -> dict[int, dict]:
    """Every item, batched by a DataLoader with 2 worker processes, keyed by segment index. Spawned: this process has
    read the store with tensorstore (the other test's loader), and tensorstore aborts a forked child."""
    out = {}
    for batch in torch.utils.data.DataLoader(data, batch_size=6, num_workers=2, shuffle=True, generator=torch.Generator().manual_seed(0),
                                             multiprocessing_context="spawn"):
        for j, seg in enumerate(batch["index"].tolist()):
            out[seg] = {"features": {k: v[j] for k, v in batch["features"].items()}, "present": batch["present"][j],
                        "labels": {h: y[j] for h, y in batch["labels"].items()}, "teacher_logits": {h: t[j] for h, t in batch["teacher_logits"].items()}}
    return out


@pytest.mark.parametrize("views", [False, True])
def test_two_workers_yield_what_the_evaluation_loader_yields(caches, views):
    location = caches[views]
    data = egodistill.dataset(location, split="train", inputs=["rgb", "flow"], teachers=["fusion"], frames=8)
    root = cache.open_cache(location)
    table = root.segments
    keys = data.input_keys
    present = present_inputs(root, keys)
    segments = np.flatnonzero((table.split == "train") & present.any(axis=1))
    assert np.array_equal(data.segments, segments) and not present[segments].all()  # flow's failed segment 3 is in, marked absent
    logits = teacher_logit_table(root, data.teacher_keys, list(table.heads), views=views)
    loader = CacheLoader(root, keys, segments, table.labels, teacher_logits=logits, batch_size=7, frames=8, train=False,
                         present=present, views=data.views)
    items = _through_workers(data)
    assert sorted(items) == segments.tolist()
    seen = 0
    for batch in loader.epoch(0):
        for j, seg in enumerate(batch.index.tolist()):
            item = items[seg]
            for m, name in enumerate(["rgb", "flow"]):
                assert item["features"][name].dtype == torch.float16 and item["features"][name].shape == (8, 8)
                assert torch.equal(item["features"][name], batch.features[m][j])
            assert torch.equal(item["present"], batch.present[j])
            for head in table.heads:
                assert int(item["labels"][head]) == int(batch.labels[head][j])
                mine = item["teacher_logits"][head]
                if views:  # every view; the loader hands over the one its window is
                    assert mine.shape == (1, 3, table.heads[head]) and data.view == 1
                    mine = mine[:, data.view]
                np.testing.assert_array_equal(mine.numpy(), batch.teacher_logits[head][j].numpy())  # NaN where the teacher has none
            seen += 1
    assert seen == len(segments)
    stored = root.teacher(keys[0]).read_features([(0, SEGMENTS * ROWS)])  # centred: rows 2..9 of the segment's 12
    first = int(segments[0])
    assert torch.equal(items[first]["features"]["rgb"], torch.from_numpy(stored[first * ROWS + 2:first * ROWS + 10]))


def test_stored_frames_come_as_the_loader_hands_them_over(caches):
    data = egodistill.dataset(caches[False], split="val", inputs=["frames"], teachers=["fusion"], frames=5)
    root = cache.open_cache(caches[False])
    loader = CacheLoader(root, data.input_keys, data.segments, root.segments.labels, batch_size=len(data), frames=5, train=False)
    batch = next(iter(loader.epoch(0)))
    item = data[3]
    assert item["features"]["frames"].dtype == torch.uint8 and item["features"]["frames"].shape == (5, 6, 4, 3)
    assert int(item["index"]) == int(batch.index[3]) and torch.equal(item["features"]["frames"], batch.features[0][3])


def test_bad_split_and_unknown_input_are_one_line_errors(caches):
    for kwargs, words in [(dict(split="test"), "split 'test'"), (dict(inputs=["layout"]), "'layout'"),
                          (dict(teachers=["audio"]), "teachers 'audio'"), (dict(frames=0), "frames=0"), (dict(window=1.5), "window=1.5")]:
        with pytest.raises(EgodistillError) as err:
            egodistill.dataset(caches[False], **kwargs)
        assert words in str(err.value) and "\n" not in str(err.value), str(err.value)
        assert "--teachers" not in str(err.value) and "--inputs" not in str(err.value), "the Python API has arguments, not CLI options"
    assert egodistill.dataset(caches[False], inputs="rgb,flow", teachers="fusion").input_names == ["rgb", "flow"]  # as the CLI writes them


def test_import_egodistill_stays_light():
    code = "import sys, egodistill; assert 'torch' not in sys.modules; egodistill.dataset; assert 'torch' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_package_says_its_version_as_installed():
    import importlib.metadata

    assert egodistill.__version__ == importlib.metadata.version("egodistill")
