"""`egodistill export`: an end-to-end student, trained a few steps on frames of real encoded videos, written as
TorchScript and loaded in a fresh process that never imports egodistill."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from egodistill import cache, testing
from egodistill.extract.run import ExtractConfig, run_extraction
from egodistill.student.data import Augment, CacheLoader
from egodistill.student.evaluate import load_student
from egodistill.student.network import eval_crop_fraction
from egodistill.student.train import TrainConfig, train

from helpers import one_line, run_cli as cli

FRAMES = 4
# Frames are written by one process and read back by another with torch only (no egodistill, no torchvision).
FRESH = """
import sys, json
import numpy as np, torch
model = torch.jit.load(sys.argv[1])
frames = np.load(sys.argv[2])
out = {h: [] for h in model.head_names}
with torch.no_grad():
    for row in frames:
        for h, v in model(torch.from_numpy(row)).items():
            out[h].append(v.numpy())
np.savez(sys.argv[3], **{h: np.stack(v) for h, v in out.items()})
assert not any(m.split('.')[0] in ('egodistill', 'torchvision') for m in sys.modules), 'egodistill or torchvision was imported'
print(json.dumps({"frames": model.frames, "size": model.size}))
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """8 one-second clips at 64x48 (so the centre crop is not the whole frame), frames stored at 40 px; a
    test_resnet student trained 3 steps on them with two heads."""
    if not testing.have_ffmpeg():
        pytest.skip("ffmpeg is not on PATH: install it (apt-get install -y ffmpeg) to make test videos")
    folder = tmp_path_factory.mktemp("export")
    rows = ["segment_id,video,start_sec,stop_sec,split,label:verb,label:noun"]
    for i in range(8):
        testing.make_video(folder / "videos" / f"clip{i}.mp4", seconds=1.0, fps=12, size=(64, 48), seed=i, audio=False)
        rows.append(f"clip{i},clip{i}.mp4,0,1,{'train' if i < 6 else 'val'},{i % 3},{i % 2}")
    (folder / "segments.csv").write_text("\n".join(rows) + "\n")
    location = str(folder / "cache.zarr")
    summary = run_extraction(ExtractConfig(manifest=str(folder / "segments.csv"), videos=str(folder / "videos"), cache=location, modality="frames", frames=FRAMES,
                                           workers=0, device="cpu", precision="fp32", segments_per_task=4, options={"frame_size": 40}), log=lambda _: None)
    assert summary.ok, summary.ledger
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(TrainConfig(cache=location, out=str(folder / "run"), inputs=["frames"], backbone="test_resnet", image_size=32, frames=FRAMES, batch_size=3, steps=3,
                          lr=2e-3, device="cpu", precision="fp32", prefetch=2, buffer_blocks=1), log=lambda _: None)
    finally:
        torch.set_num_threads(before)
    return {"cache": location, "run": str(folder / "run"), "frames": summary.teacher_key, "folder": folder}


def test_the_exported_module_gives_evaluates_logits_in_a_process_without_egodistill(run, tmp_path):
    out = tmp_path / "model.pt"
    code, err = cli("export", "--run", run["run"], "--out", out)
    assert code == 0, err
    # evaluate's view: the loader's held-out batch with the backbone's centre crop, through the model's own forward.
    _, model = load_student(run["run"])
    root = cache.open_cache(run["cache"])
    loader = CacheLoader(root, [run["frames"]], np.arange(8), root.segments.labels, batch_size=8, frames=FRAMES, train=False,
                         augment=Augment(eval_fraction=eval_crop_fraction("test_resnet")))
    batch = next(iter(loader.epoch(0)))
    with torch.no_grad():
        expected = {h: v.numpy() for h, v in model(batch.features[0], batch.crops, batch.flip).items()}
    frames = batch.features[0].numpy().transpose(0, 1, 4, 2, 3)  # [B, T, H, W, 3] -> per segment [T, 3, H, W]
    assert frames.shape == (8, FRAMES, 3, 40, 40) and frames.dtype == np.uint8
    np.save(tmp_path / "frames.npy", np.ascontiguousarray(frames))
    script = tmp_path / "fresh.py"
    script.write_text(FRESH)
    done = subprocess.run([sys.executable, str(script), str(out), str(tmp_path / "frames.npy"), str(tmp_path / "logits.npz")], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"frames": FRAMES, "size": 32}
    got = np.load(tmp_path / "logits.npz")
    assert sorted(got.files) == ["noun", "verb"] and got["verb"].shape == (8, 3) and got["noun"].shape == (8, 2)
    for h in ("verb", "noun"):
        print(h, "max |exported - forward|", float(np.abs(got[h] - expected[h]).max()), "of logits up to", float(np.abs(expected[h]).max()))
        assert np.abs(got[h] - expected[h]).max() < 1e-4, (h, np.abs(got[h] - expected[h]).max())
    extra = {"egodistill.json": ""}
    torch.jit.load(str(out), _extra_files=extra)
    meta = json.loads(extra["egodistill.json"])
    assert meta["heads"] == {"verb": 3, "noun": 2} and meta["frames"] == FRAMES and meta["preprocess"]["size"] == 32


def test_the_resize_is_roi_align_on_frames_of_other_shapes(run):
    """The baked-in resize equals the student's own (torchvision's roi_align) on a wide and a tall frame."""
    from egodistill.student.export import ExportedStudent

    _, model = load_student(run["run"])
    exported = torch.jit.script(ExportedStudent(model, eval_crop_fraction("test_resnet")))
    from egodistill.student.data import centre_boxes

    for h, w in ((48, 64), (75, 31)):
        frames = torch.randint(0, 256, (1, 3, h, w, 3), dtype=torch.uint8)
        crops = torch.from_numpy(centre_boxes(1, (h, w), exported.crop_fraction))
        expected = model.preprocess(frames, crops, None)
        got = exported.preprocess(frames[0].permute(0, 3, 1, 2))
        assert got.shape == expected.shape and float((got - expected).abs().max()) < 1e-4


def test_bad_inputs_give_one_line_each(run, tmp_path):
    assert "is not a run directory" in one_line(*cli("export", "--run", tmp_path, "--out", tmp_path / "m.pt"))
    assert "does not exist: create it" in one_line(*cli("export", "--run", run["run"], "--out", tmp_path / "missing" / "m.pt"))
    # A frozen-feature student's options mean nothing to an end-to-end one (tests/test_export_frozen.py exports those).
    assert "drop --weights and --cache" in one_line(*cli("export", "--run", run["run"], "--out", tmp_path / "m.pt", "--cache", run["cache"]))
    assert not (tmp_path / "m.pt").exists()


# --- predict on the same end-to-end run: a split of its cache, and new videos ----------------------------


def test_predict_scores_an_end_to_end_student_as_evaluate_does(run, tmp_path):
    """predict feeds the network evaluate's view (the stored frames, the backbone's centre crop), not a list of rows."""
    code, err = cli("predict", "--run", run["run"], "--cache", run["cache"], "--split", "val", "--out", tmp_path / "val.npz", "--device", "cpu")
    assert code == 0, err
    got = np.load(tmp_path / "val.npz")
    _, model = load_student(run["run"])
    root = cache.open_cache(run["cache"])
    val = np.flatnonzero(root.segments.split == "val")
    loader = CacheLoader(root, [run["frames"]], val, {}, batch_size=8, frames=FRAMES, train=False, augment=Augment(eval_fraction=eval_crop_fraction("test_resnet")))
    batch = next(iter(loader.epoch(0)))
    with torch.no_grad():
        expected = model(batch.features[0], batch.crops, batch.flip)
    assert list(got["segment_id"]) == list(root.segments.ids[batch.index.numpy()]) == ["clip6", "clip7"]
    for h in ("verb", "noun"):
        assert np.abs(got[f"scores_{h}"] - expected[h].numpy()).max() < 1e-5


def test_predict_on_new_videos_extracts_the_recorded_frames(run, tmp_path):
    """New videos of an end-to-end student: its frames teacher has no model and no weights file; predict stores the
    new clips' frames as that teacher did (its frame size and sampling), so the same clips score as from the cache."""
    (tmp_path / "new.csv").write_text("segment_id,video,start_sec,stop_sec,split\nn7,clip7.mp4,0,1,test\nn6,clip6.mp4,0,1,test\n")
    new = ["--run", run["run"], "--manifest", tmp_path / "new.csv", "--videos", run["folder"] / "videos", "--device", "cpu"]
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"garbage\n")
    line = one_line(*cli("predict", *new, "--weights", junk, "--out", tmp_path / "x.npz"))
    assert f"teacher {run['frames']} runs no model" in line and "drop --weights" in line
    assert not (tmp_path / "x.npz").exists() and not (tmp_path / "x.cache.zarr").exists()
    code, err = cli("predict", *new, "--out", tmp_path / "new.npz")
    assert code == 0, err
    assert cache.open_cache(tmp_path / "new.cache.zarr").teacher_keys() == [run["frames"]]  # the same settings, so the same key
    code, err = cli("predict", "--run", run["run"], "--cache", run["cache"], "--split", "val", "--out", tmp_path / "val.npz", "--device", "cpu")
    assert code == 0, err
    got, cached = np.load(tmp_path / "new.npz"), np.load(tmp_path / "val.npz")
    assert list(got["segment_id"]) == ["n7", "n6"] and list(cached["segment_id"]) == ["clip6", "clip7"]
    for h in ("verb", "noun"):
        assert np.abs(got[f"scores_{h}"] - cached[f"scores_{h}"][::-1]).max() < 1e-5
