"""`egodistill export` of a frozen-feature student: a head over an rgb teacher's cached features, exported as the
teacher's backbone (rebuilt from its provenance and its weights file) composed with the head, with extraction's
transform rewritten in torch ops. Real encoded videos, a real backbone (timm's test_resnet) extracted by
`extract`, a student trained a few steps; the file is loaded in a process without egodistill."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from egodistill import cache, testing
from egodistill.cache.records import SamplingPolicy
from egodistill.extract.decode import open_video
from egodistill.extract.modalities import _rgb_settings, rgb_preprocess
from egodistill.extract.run import ExtractConfig, run_extraction
from egodistill.extract.sampling import sample_indices
from egodistill.student.data import CacheLoader, frame_indices
from egodistill.student.evaluate import load_student
from egodistill.student.export import ExportedFeatureStudent, frame_preprocess, window_rows
from egodistill.student.network import student_logits
from egodistill.student.train import TrainConfig, train

from helpers import one_line, run_cli as cli

ROWS = 4         # rows the teacher stores per segment
HEAD_ROWS = 3    # rows the head reads: the centred window of them, as evaluate reads it
SEGMENTS = 8
REAL_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "real" / "videos"

# optimized_execution(False) here and below: the profiling executor's warm-up calls cost seconds on a test's 2 cores
# and change no value.
FRESH = """
import sys, json
import numpy as np, torch
model = torch.jit.load(sys.argv[1])
frames = np.load(sys.argv[2])
with torch.jit.optimized_execution(False):
    out = [model(torch.from_numpy(f)) for f in frames]
np.savez(sys.argv[3], **{h: np.stack([o[h].numpy() for o in out]) for h in model.head_names})
assert not any(m.split('.')[0] in ('egodistill', 'torchvision', 'timm', 'PIL') for m in sys.modules), 'more than torch was imported'
print(json.dumps({"frames": model.frames, "heads": list(model.head_names)}))
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """8 one-second clips at 64x48; an rgb teacher (test_resnet from a weights file, 4 frames a segment) extracted
    from them; a 3-row head trained 5 steps on it and exported with that weights file."""
    if not testing.have_ffmpeg():
        pytest.skip("ffmpeg is not on PATH: install it (apt-get install -y ffmpeg) to make test videos")
    import timm

    folder = tmp_path_factory.mktemp("export-frozen")
    rows = ["segment_id,video,start_sec,stop_sec,split,label:verb,label:noun"]
    for i in range(SEGMENTS):
        testing.make_video(folder / "videos" / f"clip{i}.mp4", seconds=1.0, fps=12, size=(64, 48), seed=i, audio=False)
        rows.append(f"clip{i},clip{i}.mp4,0,1,{'train' if i < 6 else 'val'},{i % 3},{i % 2}")
    (folder / "segments.csv").write_text("\n".join(rows) + "\n")
    weights = folder / "backbone.pt"
    torch.manual_seed(3)
    torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), weights)
    location = str(folder / "cache.zarr")
    summary = run_extraction(ExtractConfig(manifest=str(folder / "segments.csv"), videos=str(folder / "videos"), cache=location, backbone="test_resnet",
                                           weights=str(weights), frames=ROWS, workers=0, device="cpu", precision="fp32"), log=lambda _: None)
    assert summary.ok, summary.ledger
    train(TrainConfig(cache=location, inputs=["rgb"], out=str(folder / "run"), steps=5, batch_size=4, frames=HEAD_ROWS, device="cpu",
                      prefetch=2, buffer_blocks=1), log=lambda _: None)
    out = folder / "model.pt"
    code, err = cli("export", "--run", folder / "run", "--out", out, "--weights", weights)
    assert code == 0, err
    return {"cache": location, "run": str(folder / "run"), "key": summary.teacher_key, "folder": folder, "weights": weights, "model": out}


def _evaluated(run) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """evaluate's logits per segment (its loader in cache order, through `student_logits`) and each segment's cached rows."""
    _, model = load_student(run["run"])
    root = cache.open_cache(run["cache"])
    teacher = root.teacher(run["key"])
    loader = CacheLoader(root, [run["key"]], np.arange(SEGMENTS), root.segments.labels, batch_size=SEGMENTS, frames=HEAD_ROWS, train=False)
    batch = next(iter(loader.epoch(0)))
    assert batch.index.tolist() == list(range(SEGMENTS))
    with torch.no_grad():
        logits = {h: v.numpy() for h, v in student_logits(model, batch, batch.present).items()}
    offsets = teacher.offsets
    return logits, [teacher.read_features([(int(offsets[i]), int(offsets[i + 1]))]) for i in range(SEGMENTS)]


def _decoded(folder: Path) -> np.ndarray:
    """Each segment's frames decoded and sampled as extraction sampled them: uint8 [S, T, 3, H, W]."""
    out = []
    for i in range(SEGMENTS):
        video = open_video(folder / "videos" / f"clip{i}.mp4")
        indices = sample_indices(SamplingPolicy(frames=ROWS), ROWS, 0.0, 1.0, video.fps, video.num_frames)
        out.append(video.frames(indices).transpose(0, 3, 1, 2))
        video.close()
    return np.ascontiguousarray(np.stack(out))


def test_the_head_on_cached_rows_gives_evaluates_logits(run):
    model = torch.jit.load(str(run["model"]))
    expected, cached = _evaluated(run)
    assert cached[0].shape == (ROWS, 96) and cached[0].dtype == np.float16
    gaps = []
    for i, rows in enumerate(cached):
        with torch.jit.optimized_execution(False):
            got = model.from_features(torch.from_numpy(rows.astype(np.float32)))
        gaps += [float(np.abs(got[h].numpy() - expected[h][i]).max()) for h in ("verb", "noun")]
    print(f"head on cached rows: max |from_features - evaluate| {max(gaps):.2e} over {SEGMENTS} segments")
    assert max(gaps) < 1e-4, gaps


def test_the_module_refuses_frames_that_are_not_uint8_t3hw_in_one_line(run):
    model = torch.jit.load(str(run["model"]))
    frames = torch.zeros(ROWS, 3, 48, 64, dtype=torch.uint8)
    assert set(model(frames)) == {"verb", "noun"}
    for bad, says in ((frames.float(), "takes uint8 frames"), (frames.permute(0, 2, 3, 1), "got shape [4, 48, 64, 3]"), (frames[:0], "T >= 1")):
        with pytest.raises(torch.jit.Error) as refused:
            model(bad)
        assert says in str(refused.value).splitlines()[-1]


def test_the_row_window_is_evaluates(run):
    """window_rows is student/data.py frame_indices (centred) for segments shorter and longer than the head's window."""
    for rows in range(1, 20):
        for frames in (1, 3, 4, 8):
            assert window_rows(rows, frames, 0.5).tolist() == frame_indices(np.array([rows]), frames, np.array([0.5]))[0].tolist(), (rows, frames)


def test_the_module_on_decoded_frames_matches_evaluate_in_a_process_without_egodistill(run, tmp_path):
    expected, cached = _evaluated(run)
    frames = _decoded(run["folder"])
    assert frames.shape == (SEGMENTS, ROWS, 3, 48, 64) and frames.dtype == np.uint8
    np.save(tmp_path / "frames.npy", frames)
    (tmp_path / "fresh.py").write_text(FRESH)
    done = subprocess.run([sys.executable, str(tmp_path / "fresh.py"), str(run["model"]), str(tmp_path / "frames.npy"), str(tmp_path / "logits.npz")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"frames": HEAD_ROWS, "heads": ["verb", "noun"]}
    got = np.load(tmp_path / "logits.npz")
    # The module's own rows against the cache's: the backbone sees the baked-in transform's pixels, not PIL's.
    model = torch.jit.load(str(run["model"]))
    with torch.jit.optimized_execution(False):
        rows = [model.rows(torch.from_numpy(f)).numpy() for f in frames]
    row_gap = max(float(np.abs(r - c.astype(np.float32)).max()) for r, c in zip(rows, cached))
    scale = max(float(np.abs(c.astype(np.float32)).max()) for c in cached)
    # The tolerance: the baked-in transform gives extraction's input values exactly (test below) and rows are rounded
    # to float16 as the cache stores them, so the rows agree up to a rare rounding flip (one float16 step, where the
    # backbone's float32 sums land on the other side of a half-step: batches of other sizes sum in other orders); the
    # head then reads the same numbers as in evaluate: the same 1e-4 as the head alone, at fp32.
    assert row_gap <= scale * 2.0 ** -10, (row_gap, scale)
    for h in ("verb", "noun"):
        gap = float(np.abs(got[h] - expected[h]).max())
        print(f"{h}: max |exported - evaluate| {gap:.2e} of logits up to {np.abs(expected[h]).max():.3f}; rows {row_gap:.2e} of {scale:.3f}")
        assert gap < 1e-4, (h, gap)
        assert (got[h].argmax(axis=1) == expected[h].argmax(axis=1)).all(), h
    extra = {"egodistill.json": ""}
    torch.jit.load(str(run["model"]), _extra_files=extra)
    meta = json.loads(extra["egodistill.json"])
    assert meta["kind"] == "frozen-feature" and meta["teacher"] == run["key"] and meta["heads"] == {"verb": 3, "noun": 2}
    assert meta["preprocess"]["resize_short"] == 168 and meta["preprocess"]["crop"] == [160, 160] and meta["sampling"] == {"frames": ROWS}


# --- the baked-in transform against extraction's own (timm's PIL transform, a torchvision preset) ---------------


class _Rows(torch.nn.Module):
    """A stand-in head (the transform alone is under test here)."""

    def forward(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x": rows}


def _frames_of(path: Path, count: int = 1) -> np.ndarray:
    video = open_video(path)
    frames = video.frames(np.linspace(0, video.num_frames - 1, count + 2).astype(np.int64)[1:-1])  # inner frames
    video.close()
    return frames


def _settings(backbone: str) -> dict:
    from egodistill.backbones import backbone_family

    return _rgb_settings({}, backbone_family(backbone).preset(backbone, 3))


@pytest.mark.parametrize("backbone", ["test_resnet", "test_efficientnet", "resnet50", "r3d_18"])
def test_the_baked_in_transform_gives_extractions_inputs(backbone, tmp_path):
    """bilinear (test_resnet) and bicubic (test_efficientnet, resnet50: crop 0.95 and 0.875) PIL transforms and a
    torchvision video preset (r3d_18), on a generated clip (enlarged) and on the real videos (shrunk, 1080p among
    them): the baked-in transform gives extraction's input values exactly (Pillow's bytes, then the same float ops)."""
    if not testing.have_ffmpeg():
        pytest.skip("ffmpeg is not on PATH")
    sources = [testing.make_video(tmp_path / "clip.mp4", seconds=0.5, fps=12, size=(64, 48), audio=False)]
    sources += sorted(REAL_VIDEOS.glob("*")) if REAL_VIDEOS.is_dir() else []
    settings = _settings(backbone)
    module = torch.jit.script(ExportedFeatureStudent(torch.nn.Identity(), _Rows(), frame_preprocess(settings, backbone), 1, ["x"]))
    for path in sources:
        frames = _frames_of(path)
        reference = rgb_preprocess(frames, settings)
        with torch.jit.optimized_execution(False):
            got = module.preprocess(torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2)))).numpy()
        assert got.shape == reference.shape, (path.name, got.shape, reference.shape)
        gap = float(np.abs(got - reference).max())
        print(f"{backbone} {path.name} {frames.shape[1:3]} -> {got.shape[2:]}: max |baked-in - extraction| {gap:.1e}")
        assert gap < 1e-6, (path.name, gap)


# --- refusals: one line each, nothing written ---------------------------------------------------------------


def test_bad_inputs_give_one_line_each_and_write_nothing(run, tmp_path):
    out = tmp_path / "m.pt"
    other = tmp_path / "other.pt"
    torch.save({k: v + 1 for k, v in torch.load(run["weights"]).items()}, other)
    from egodistill.common import file_sha256

    line = one_line(*cli("export", "--run", run["run"], "--out", out, "--weights", other))
    assert file_sha256(run["weights"]) in line and file_sha256(other) in line
    assert "give that file again with --weights" in one_line(*cli("export", "--run", run["run"], "--out", out))
    assert "no such file" in one_line(*cli("export", "--run", run["run"], "--out", out, "--weights", tmp_path / "gone.pt"))
    location = str(tmp_path / "features.zarr")
    testing.build_synthetic_cache(location, testing.SyntheticSpec(segments=12))
    # A synthetic cache's teachers were written, not extracted: its rgb teacher has no transform to rebuild.
    for inputs, message in ((["flow"], "is flow features"), (["rgb", "flow"], "reads 2 input teachers"), (["rgb"], "not made by egodistill's rgb transform")):
        folder = tmp_path / "-".join(inputs)
        train(TrainConfig(cache=location, out=str(folder), inputs=inputs, steps=1, device="cpu", prefetch=2, buffer_blocks=1), log=lambda _: None)
        assert message in one_line(*cli("export", "--run", folder, "--out", out))
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["other.pt"]


def test_a_clip_backbone_exports_with_its_windows(tmp_path):
    """r3d_18 (random init, a torchvision video preset) on a segment of 4 frames read as 2 windows of 2: the
    module's rows are the cache's up to a float16 rounding flip (extraction batches windows, the module runs one
    at a time) and its head gives evaluate's logits. One segment: a clip model's forward is the test's cost."""
    if not testing.have_ffmpeg():
        pytest.skip("ffmpeg is not on PATH")
    testing.make_video(tmp_path / "videos" / "clip.mp4", seconds=1.0, fps=12, size=(64, 48), audio=False)
    (tmp_path / "segments.csv").write_text("segment_id,video,start_sec,stop_sec,split,label:verb:2\nclip,clip.mp4,0,1,train,1\n")
    location = str(tmp_path / "clips.zarr")
    summary = run_extraction(ExtractConfig(manifest=str(tmp_path / "segments.csv"), videos=str(tmp_path / "videos"), cache=location, backbone="r3d_18",
                                           frames=4, clip_frames=2, clip_stride=2, workers=0, device="cpu", precision="fp32"), log=lambda _: None)
    assert summary.ok, summary.ledger
    train(TrainConfig(cache=location, inputs=["rgb"], out=str(tmp_path / "run"), steps=2, batch_size=1, frames=2, device="cpu", prefetch=2, buffer_blocks=1),
          log=lambda _: None)
    code, err = cli("export", "--run", tmp_path / "run", "--out", tmp_path / "clip.pt")
    assert code == 0, err
    model = torch.jit.load(str(tmp_path / "clip.pt"))
    _, student = load_student(str(tmp_path / "run"))
    root = cache.open_cache(location)
    teacher = root.teacher(summary.teacher_key)
    batch = next(iter(CacheLoader(root, [summary.teacher_key], np.arange(1), {}, batch_size=1, frames=2, train=False).epoch(0)))
    with torch.no_grad():
        expected = student_logits(student, batch, batch.present)["verb"].numpy()[0]
    video = open_video(tmp_path / "videos" / "clip.mp4")
    frames = torch.from_numpy(np.ascontiguousarray(video.frames(sample_indices(SamplingPolicy(frames=4), 4, 0.0, 1.0, video.fps, video.num_frames)).transpose(0, 3, 1, 2)))
    video.close()
    cached = teacher.read_features([(0, int(teacher.offsets[1]))]).astype(np.float32)
    with torch.jit.optimized_execution(False):
        rows = model.rows(frames)  # the module's forward is from_features(rows(frames)) for a clip backbone
        got = model.from_features(rows)["verb"].numpy()
    assert rows.shape == cached.shape == (2, 512)
    assert float(np.abs(rows.numpy() - cached).max()) <= float(np.abs(cached).max()) * 2.0 ** -10
    print(f"r3d_18: max |exported - evaluate| {np.abs(got - expected).max():.2e}")
    # A flipped float16 row moves a logit by its step times the head's weight: 1e-3 covers it at these weights.
    assert float(np.abs(got - expected).max()) < 1e-3 and got.argmax() == expected.argmax()


def test_onnx_export_runs_in_onnxruntime_and_gives_evaluates_logits(run, tmp_path):
    """--format onnx (the optional extra: onnxruntime): the graph at the clips' 64x48, on the frames the head reads."""
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    code, err = cli("export", "--run", run["run"], "--out", out, "--weights", run["weights"], "--format", "onnx", "--frame-size", "64x48")
    assert code == 0, err
    meta = json.loads((tmp_path / "model.onnx.json").read_text())
    assert meta["frames"] == HEAD_ROWS and meta["heads"] == {"verb": 3, "noun": 2}
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    expected, _ = _evaluated(run)
    frames = _decoded(run["folder"])
    chosen = window_rows(ROWS, HEAD_ROWS, 0.5).numpy()  # the graph takes exactly the frames the head reads
    gaps = []
    for i in range(SEGMENTS):
        verb, noun = session.run(["verb", "noun"], {"frames": frames[i][chosen]})
        gaps += [float(np.abs(verb - expected["verb"][i]).max()), float(np.abs(noun - expected["noun"][i]).max())]
        assert verb.argmax() == expected["verb"][i].argmax() and noun.argmax() == expected["noun"][i].argmax()
    print(f"onnxruntime: max |onnx - evaluate| {max(gaps):.2e} over {SEGMENTS} segments")
    assert max(gaps) < 1e-4, gaps
    assert "--frame-size WIDTHxHEIGHT" in one_line(*cli("export", "--run", run["run"], "--out", tmp_path / "x.onnx", "--weights", run["weights"], "--format", "onnx"))
    assert not (tmp_path / "x.onnx").exists()
