"""`egodistill extract` on real encoded videos: features, timestamps, ledger, resume, readers."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import zarr

from egodistill import cache
from egodistill.common import ExtractError
from egodistill.backbones import BackboneSpec, create_backbone
from egodistill.extract.modalities import MediaSource, get_modality
from egodistill.extract.run import ExtractConfig, plan_extraction, run_extraction
from egodistill.cache.records import SamplingPolicy
from egodistill.extract.sampling import sample_indices
from egodistill.extract.worker import embed

from helpers import write_manifest

BACKBONE = "test_resnet"  # timm's tiny test model: real convolutions, random init, fast on CPU


@pytest.fixture
def dataset(tmp_path, media_dir):
    videos = tmp_path / "videos"
    shutil.copytree(media_dir, videos)
    manifest = write_manifest(tmp_path / "segments.csv", [
        ("a0", "h264_aac.mp4", 0.0, 1.0, "train", 0),
        ("a1", "h264_aac.mp4", 1.0, 2.0, "train", 1),
        ("b0", "vp9_opus.webm", 0.2, 1.8, "val", 2),
        ("c0", "no_audio.mp4", 0.0, 1.5, "train", 0),
    ], heads=("action",))
    return tmp_path, manifest, videos


def config(tmp_path, manifest, videos, **overrides):
    base = dict(manifest=str(manifest), videos=str(videos), cache=str(tmp_path / "cache.zarr"), modality="rgb",
                backbone=BACKBONE, frames=4, workers=0, device="cpu", precision="fp32", batch_size=8, segments_per_task=2)
    return ExtractConfig(**{**base, **overrides})


def teacher_of(cache_path, key) -> cache.Teacher:
    return cache.open_cache(cache_path, mode="r").teacher(key)


def test_rgb_features_match_a_direct_model_call(dataset):
    tmp_path, manifest, videos = dataset
    cfg = config(tmp_path, manifest, videos)
    summary = run_extraction(cfg, log=lambda _: None)
    assert summary.ok and summary.extracted == 4 and summary.failed == 0

    stored = teacher_of(cfg.cache, summary.teacher_key)
    offsets = stored.offsets
    assert offsets.tolist() == [0, 4, 8, 12, 16]
    backbone = create_backbone(BackboneSpec(BACKBONE, in_chans=3), {})
    settings = stored.provenance.preprocessing
    for i, (name, start, stop) in enumerate([("h264_aac.mp4", 0.0, 1.0), ("h264_aac.mp4", 1.0, 2.0), ("vp9_opus.webm", 0.2, 1.8)]):
        source = MediaSource(videos / name)
        indices = sample_indices(SamplingPolicy(frames=4), 4, start, stop, source.video.fps, source.video.num_frames)
        direct = embed(backbone, get_modality("rgb").make_inputs(source, indices, settings), "cpu", "fp32")
        features, times = stored.read_rows(offsets[i], offsets[i + 1])
        np.testing.assert_allclose(features.astype(np.float32), direct, rtol=2e-3, atol=2e-3)  # float16 storage
        np.testing.assert_allclose(times, indices / source.video.fps, atol=1e-5)
        assert start <= times.min() and times.max() < stop
    assert summary.fallbacks and "vp9_opus.webm" in summary.fallbacks[0]


def test_bad_media_goes_to_the_ledger_and_the_rest_is_written(dataset):
    tmp_path, _, videos = dataset
    manifest = write_manifest(tmp_path / "bad.csv", [
        ("ok", "h264_aac.mp4", 0.0, 1.0, "train"),
        ("truncated", "truncated.mp4", 2.0, 2.9, "train"),
        ("empty", "empty.mp4", 0.0, 1.0, "train"),
        ("missing", "nowhere.mp4", 0.0, 1.0, "train"),
        ("late", "h264_aac.mp4", 5.0, 6.0, "train"),
        ("silent", "no_audio.mp4", 0.0, 1.0, "train"),
        ("garbage", "garbage.mp4", 0.0, 1.0, "train"),
    ])
    (videos / "garbage.mp4").write_bytes(b"this is not a video" * 100)
    cfg = config(tmp_path, manifest, videos, modality="audio", cache=str(tmp_path / "bad.zarr"))
    summary = run_extraction(cfg, log=lambda _: None)
    reasons = {entry.id: entry.reason for entry in summary.ledger}
    assert set(reasons) == {"truncated", "empty", "missing", "late", "silent", "garbage"}
    assert "no audio" in reasons["silent"]
    assert "empty" in reasons["empty"] and "not found" in reasons["missing"]
    assert "after the end" in reasons["late"]
    assert all(e.expected_rows == 4 and e.written_rows == 0 for e in summary.ledger)
    teacher = teacher_of(cfg.cache, summary.teacher_key)
    assert teacher.segment_status().tolist() == [1, -1, -1, -1, -1, -1, -1]
    assert np.isfinite(teacher.read_rows(0, 4)[0]).all() and np.isnan(teacher.read_rows(4, 8)[0]).all()


def test_rerun_is_a_no_op_and_other_settings_live_side_by_side(dataset):
    tmp_path, manifest, videos = dataset
    first = run_extraction(config(tmp_path, manifest, videos), log=lambda _: None)
    features = teacher_of(str(tmp_path / "cache.zarr"), first.teacher_key).read_rows(0, 16)[0]
    again = run_extraction(config(tmp_path, manifest, videos), log=lambda _: None)
    assert again.teacher_key == first.teacher_key and again.extracted == 0 and again.done_before == 4
    other = run_extraction(config(tmp_path, manifest, videos, frames=2), log=lambda _: None)
    assert other.teacher_key != first.teacher_key
    assert set(cache.open_cache(str(tmp_path / "cache.zarr")).teacher_keys()) == {first.teacher_key, other.teacher_key}
    np.testing.assert_array_equal(teacher_of(str(tmp_path / "cache.zarr"), first.teacher_key).read_rows(0, 16)[0], features)
    with pytest.raises(cache.CacheError, match="other settings"):
        run_extraction(config(tmp_path, manifest, videos, frames=3, name=first.teacher_key), log=lambda _: None)


def test_flow_and_audio_inputs(dataset):
    tmp_path, manifest, videos = dataset
    source = MediaSource(videos / "h264_aac.mp4")
    indices = np.array([3, 10, 20])
    flow = get_modality("flow")
    settings = flow.settings(flow.resolve_options({"flow": "dis", "flow_stack": 2}), {"input_size": (2, 64, 64), "crop_pct": 1.0, "interpolation": "bilinear"})
    x = flow.make_inputs(source, indices, settings)
    assert x.shape == (3, 4, 64, 64) and x.dtype == np.float32
    assert np.abs(x).max() <= 1.0 and np.abs(x).mean() > 1e-3  # the test pattern moves
    audio = get_modality("audio")
    settings = audio.settings(audio.resolve_options({}), {"input_size": (1, 96, 96)})
    a = audio.make_inputs(source, indices, settings)
    assert a.shape == (3, 1, 96, 96) and np.isfinite(a).all()
    np.testing.assert_allclose(a.mean(), 0.0, atol=0.2)


def test_bf16_fast_path_agrees_with_fp32(dataset):
    tmp_path, manifest, videos = dataset
    backbone = create_backbone(BackboneSpec(BACKBONE, in_chans=3), {})
    source = MediaSource(videos / "h264_aac.mp4")
    x = get_modality("rgb").make_inputs(source, np.arange(0, 40, 5), get_modality("rgb").settings({}, backbone.data_config))
    fp32 = embed(backbone, x, "cpu", "fp32")
    backbone.model.to(memory_format=torch.channels_last)
    bf16 = embed(backbone, x, "cpu", "bf16")
    cosine = (fp32 * bf16).sum(1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(bf16, axis=1))
    # Stated tolerance (README): cosine similarity >= 0.99 per frame between bf16 and fp32 features.
    assert cosine.min() >= 0.99


def test_tensorstore_and_zarr_read_what_extract_wrote(dataset):
    ts = pytest.importorskip("tensorstore")
    tmp_path, manifest, videos = dataset
    summary = run_extraction(config(tmp_path, manifest, videos), log=lambda _: None)
    path = tmp_path / "cache.zarr" / "teachers" / summary.teacher_key
    plain = zarr.open_group(str(tmp_path / "cache.zarr"), mode="r")
    offsets = plain[f"teachers/{summary.teacher_key}/offsets"][:]
    via_zarr = plain[f"teachers/{summary.teacher_key}/features"][offsets[2]: offsets[3]]
    store = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path / "features")}}).result()
    np.testing.assert_array_equal(store[offsets[2]: offsets[3]].read().result(), via_zarr)
    times = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path / "timestamps")}}).result()
    assert np.isfinite(times[offsets[2]: offsets[3]].read().result()).all()
    ids = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(tmp_path / "cache.zarr" / "segments" / "id_bytes")}}).result()
    assert ids.read().result().tobytes() == b"a0a1b0c0"


def test_dry_run_plans_without_a_model(dataset):
    tmp_path, manifest, videos = dataset
    plan = plan_extraction(config(tmp_path, manifest, videos, fps=2.0, frames=None))
    assert plan.rows_per_segment.tolist() == [2, 2, 3, 3]
    assert plan.missing_videos == []
    assert not (tmp_path / "cache.zarr").exists()


def test_head_writes_logits_from_pooled_features(dataset):
    tmp_path, manifest, videos = dataset
    torch.manual_seed(1)
    head = {"action.weight": torch.randn(3, 96), "action.bias": torch.randn(3)}
    torch.save(head, tmp_path / "head.pt")
    summary = run_extraction(config(tmp_path, manifest, videos, head=str(tmp_path / "head.pt")), log=lambda _: None)
    teacher = teacher_of(str(tmp_path / "cache.zarr"), summary.teacher_key)
    logits = teacher.read_logits("action")
    features = teacher.read_rows(0, 4)[0].astype(np.float32).mean(0)
    expected = features @ head["action.weight"].numpy().T + head["action.bias"].numpy()
    np.testing.assert_allclose(logits[0], expected, rtol=1e-2, atol=1e-2)
    assert teacher.heads == {"action": 3}


def test_dask_workers_write_the_same_rows_as_one_process_also_into_shared_shards(dataset):
    """--fps gives segments of different lengths, so tasks share shards: every row must still arrive from two Dask
    worker processes, and equal the rows one process writes (H.264 through decord and VP9 through PyAV alike)."""
    tmp_path, _, videos = dataset
    rows = [(f"s{i}", ("h264_aac.mp4", "vp9_opus.webm")[i % 2], 0.0, 0.4 + 0.1 * (i % 5), "train") for i in range(10)]
    manifest = write_manifest(tmp_path / "ragged.csv", rows)
    common = dict(frames=None, fps=10.0, segments_per_task=1)
    cfg = config(tmp_path, manifest, videos, cache=str(tmp_path / "dask.zarr"), workers=2, **common)
    plan = plan_extraction(cfg)
    assert len(set(plan.rows_per_segment.tolist())) > 1
    task_starts = plan.offsets[:-1]  # one segment per task
    assert any(start % plan.layout.rows_per_shard for start in task_starts)  # some shards are shared by two tasks
    dask = run_extraction(cfg, plan, log=lambda _: None)
    here = run_extraction(config(tmp_path, manifest, videos, cache=str(tmp_path / "here.zarr"), workers=0, **common), log=lambda _: None)
    assert dask.ok and dask.mode == "local Dask, 2 workers" and dask.teacher_key == here.teacher_key and dask.extracted == 10
    a = teacher_of(str(tmp_path / "here.zarr"), here.teacher_key)
    b = teacher_of(str(tmp_path / "dask.zarr"), dask.teacher_key)
    (fa, ta), (fb, tb) = a.read_rows(0, a.layout.rows), b.read_rows(0, b.layout.rows)
    assert np.isfinite(fb).all() and np.isfinite(tb).all()
    np.testing.assert_allclose(fa.astype(np.float32), fb.astype(np.float32), rtol=1e-2, atol=1e-2)
    np.testing.assert_array_equal(ta, tb)


def test_weights_file_loads_strictly_and_is_hashed(dataset):
    tmp_path, manifest, videos = dataset
    torch.manual_seed(5)
    import timm
    torch.save(timm.create_model(BACKBONE, num_classes=10).state_dict(), tmp_path / "w.pt")
    rgb = run_extraction(config(tmp_path, manifest, videos, weights=str(tmp_path / "w.pt")), log=lambda _: None)
    flow = run_extraction(config(tmp_path, manifest, videos, modality="flow", weights=str(tmp_path / "w.pt")), log=lambda _: None)
    opened = cache.open_cache(str(tmp_path / "cache.zarr"), mode="r")
    for key in (rgb.teacher_key, flow.teacher_key):
        weights = opened.teacher(key).provenance.weights
        assert weights.startswith("sha256:") and len(weights) == 7 + 64
    assert opened.teacher(flow.teacher_key).provenance.in_chans == 2


def test_raft_flow_from_a_local_weights_file(dataset, tmp_path):
    from torchvision.models.optical_flow import raft_small

    _, _, videos = dataset
    torch.manual_seed(0)
    torch.save(raft_small(weights=None).state_dict(), tmp_path / "raft_small.pth")
    flow = get_modality("flow")
    geometry = {"input_size": (2, 48, 48), "crop_pct": 1.0, "interpolation": "bilinear"}
    with pytest.raises(ExtractError, match="--flow-weights"):
        flow.settings(flow.resolve_options({"flow": "raft_small"}), geometry)
    settings = flow.settings(flow.resolve_options({"flow": "raft_small", "flow_weights": str(tmp_path / "raft_small.pth")}), geometry)
    assert settings["weights"].startswith("sha256:")
    x = flow.make_inputs(MediaSource(videos / "h264_aac.mp4"), np.array([2, 9]), settings)
    assert x.shape == (2, 2, 48, 48) and np.isfinite(x).all() and np.abs(x).max() <= 1.0


@pytest.mark.parametrize("modality", ["rgb", "flow", "audio"])
def test_retry_failed_rewrites_a_fixed_video_and_only_with_the_flag(dataset, modality):
    """A video that is broken at first and then fixed: a rerun leaves its ledger entry, --retry-failed writes its
    rows (the same rows as the same clip elsewhere) and empties the ledger."""
    tmp_path, _, videos = dataset
    (videos / "later.mp4").write_bytes(b"not a video yet" * 50)
    manifest = write_manifest(tmp_path / "retry.csv", [("ok", "h264_aac.mp4", 0.0, 1.0, "train"), ("later", "later.mp4", 0.0, 1.0, "train")])
    cfg = config(tmp_path, manifest, videos, modality=modality, segments_per_task=1)
    first = run_extraction(cfg, log=lambda _: None)
    assert [f.id for f in first.ledger] == ["later"]
    shutil.copy(videos / "h264_aac.mp4", videos / "later.mp4")
    again = run_extraction(cfg, log=lambda _: None)
    assert again.extracted == 0 and [f.id for f in again.ledger] == ["later"]
    retried = run_extraction(ExtractConfig(**{**cfg.__dict__, "retry_failed": True}), log=lambda _: None)
    assert retried.ok and retried.extracted == 1 and retried.done_before == 1 and not retried.ledger
    teacher = teacher_of(cfg.cache, first.teacher_key)
    assert teacher.segment_status().tolist() == [1, 1]
    ok, later = teacher.read_rows(0, 4), teacher.read_rows(4, 8)
    np.testing.assert_array_equal(later[0], ok[0])
    np.testing.assert_array_equal(later[1], ok[1])


def test_summary_says_where_the_time_went(dataset):
    """decode, preprocess, forward, write and wait are each counted (issue 17); in process is the default."""
    tmp_path, manifest, videos = dataset
    summary = run_extraction(config(tmp_path, manifest, videos, workers=None, cache=str(tmp_path / "timed.zarr")), log=lambda _: None)
    t = summary.timings
    assert summary.ok and summary.mode == "in process"
    assert min(t.decode, t.preprocess, t.forward, t.write) > 0 and t.wait >= 0
    assert t.forward + t.wait + t.write <= summary.seconds  # the model's own thread cannot exceed the wall
    record = summary.to_json()
    assert set(record["timings"]) == {"decode", "preprocess", "forward", "write", "wait"} and record["mode"] == "in process"


def test_extract_json_is_strict_and_holds_the_timings(dataset):
    from typer.testing import CliRunner

    from egodistill.cli import app

    tmp_path, manifest, videos = dataset
    args = ["extract", "--manifest", str(manifest), "--videos", str(videos), "--cache", str(tmp_path / "json.zarr"), "--backbone", BACKBONE,
            "--frames", "2", "--device", "cpu", "--precision", "fp32", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    import json

    record = json.loads(result.stdout, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert record["ok"] and record["extracted"] == 4 and record["timings"]["forward"] > 0


def test_extraction_records_the_backbone_cost_that_evaluate_reads(extracted_cache):
    """Parameters and FLOPs per row are counted once at extraction; evaluate's cost reads them, building nothing."""
    from egodistill.student.cost import backbone_cost, extractor_cost

    root = cache.open_cache(extracted_cache)
    for teacher in root.teachers():
        if teacher.modality not in ("rgb", "flow", "audio"):
            continue
        p = teacher.provenance
        size = p.preprocessing["input_size"]
        assert teacher.cost == {"params": backbone_cost(p.backbone, p.in_chans, size[-2], size[-1])[0],
                                "flops_per_row": float(backbone_cost(p.backbone, p.in_chans, size[-2], size[-1])[1])}
        assert teacher.cost["params"] > 0 and teacher.cost["flops_per_row"] > 0
        assert extractor_cost(teacher, 4)["flops"] == 4 * teacher.cost["flops_per_row"]
