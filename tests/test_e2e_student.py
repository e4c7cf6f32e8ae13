"""The end-to-end student (`train-student --inputs frames`): a tiny timm network trained on frames that
`extract --modality frames` stored from real encoded videos, against cached teacher logits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from egodistill import cache, testing
from egodistill.extract.run import ExtractConfig, run_extraction
from egodistill.student import rundir
from egodistill.student.data import Augment, CacheLoader, random_crop_boxes
from egodistill.student.evaluate import EvalConfig, evaluate, load_student
from egodistill.student.network import FramesStudent, NetworkConfig
from egodistill.student.train import TrainConfig, accumulation_group, train

from helpers import one_line, run_cli as cli

CLASSES = 3
FRAMES = 4
# test_resnet: timm's 0.37 M-parameter resnet; 32-pixel crops of 40-pixel stored frames.
SMALL = dict(inputs=["frames"], backbone="test_resnet", image_size=32, frames=FRAMES, batch_size=3, lr=2e-3, device="cpu",
             precision="fp32", prefetch=2, buffer_blocks=1)


def _extract(manifest, videos, location, modality, **overrides):
    base = dict(manifest=str(manifest), videos=str(videos), cache=str(location), modality=modality, frames=FRAMES, workers=0,
                device="cpu", precision="fp32", segments_per_task=3)
    summary = run_extraction(ExtractConfig(**{**base, **overrides}), log=lambda _: None)
    assert summary.ok, summary.ledger
    return summary.teacher_key


def _logits_teacher(root: cache.Cache, modality: str, shift: int, strength: float = 6.0) -> str:
    """A logits-only teacher (what fit-teachers writes) that names class (label + shift) % classes."""
    y = np.clip(root.segments.labels["action"], 0, CLASSES - 1)
    provenance = cache.Provenance(modality=modality, backbone="temporal_head", fit={"shift": shift})
    root.create_logits_teacher(provenance.teacher_key(), provenance, {"action": (strength * np.eye(CLASSES)[(y + shift) % CLASSES]).astype(np.float32)})
    return provenance.teacher_key()


@pytest.fixture(scope="module")
def frames_cache(tmp_path_factory):
    """12 one-second clips whose hue says the label (3 classes, 9 train / 3 val), their frames stored at 40 px;
    an rgb teacher extracted from a weights file; teachers 'fusion' (right) and 'flow' (always one class off)."""
    if not testing.have_ffmpeg():
        pytest.skip("ffmpeg is not on PATH: install it (apt-get install -y ffmpeg) to make test videos")
    folder = tmp_path_factory.mktemp("e2e")
    rows = ["segment_id,video,start_sec,stop_sec,split,label:action"]
    for i in range(12):
        label = i % CLASSES
        testing.make_video(folder / "videos" / f"clip{i:02d}.mp4", seconds=1.0, fps=12, size=(64, 48), seed=label * 3 + i % 2, audio=False)
        rows.append(f"clip{i:02d},clip{i:02d}.mp4,0,1,{'train' if i < 9 else 'val'},{label}")
    manifest = folder / "segments.csv"
    manifest.write_text("\n".join(rows) + "\n")
    location = folder / "cache.zarr"
    frames_key = _extract(manifest, folder / "videos", location, "frames", options={"frame_size": 40})
    import timm

    weights = folder / "test_resnet.pt"
    torch.manual_seed(7)
    torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), weights)
    _extract(manifest, folder / "videos", location, "rgb", backbone="test_resnet", weights=str(weights))
    root = cache.open_cache(str(location), mode="a")
    teachers = {"fusion": _logits_teacher(root, "fusion", 0), "flow": _logits_teacher(root, "flow", 1)}
    return {"cache": str(location), "frames": frames_key, "weights": weights, "teachers": teachers, "folder": folder}


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: a 0.4 M-parameter network on a shared 2-core machine runs 7x faster so (0.08 against 0.59 s a step)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def config(frames_cache, out, **overrides) -> TrainConfig:
    return TrainConfig(**{"cache": frames_cache["cache"], "out": str(out), **SMALL, **overrides})






# --- the loader: the frames the student sees ------------------------------------------------

def test_loader_hands_over_the_stored_frames_with_seeded_crops(frames_cache):
    root = cache.open_cache(frames_cache["cache"])
    teacher = root.teacher(frames_cache["frames"])
    segments = np.flatnonzero(root.segments.split == "train")
    loader = CacheLoader(root, [teacher.key], segments, root.segments.labels, batch_size=4, frames=FRAMES, train=True, seed=3, buffer_blocks=1)
    batches = list(loader.epoch(0))
    stored = teacher.read_frames([(int(teacher.offsets[0]), int(teacher.offsets[-1]))])
    for batch in batches:
        frames = batch.features[0].numpy()
        assert frames.dtype == np.uint8 and frames.shape[1:] == (FRAMES, 40, 40, 3)
        for row, seg in zip(frames, batch.index.numpy()):  # 4 stored rows, 4 frames: each segment's rows, in order
            assert np.array_equal(row, stored[teacher.offsets[seg]:teacher.offsets[seg + 1]])
        boxes = batch.crops.numpy()
        assert ((boxes[:, 2:] - boxes[:, :2]) > 0).all() and (boxes >= 0).all() and (boxes <= 1 + 1e-6).all()
    again = list(loader.epoch(0, start_batch=1))  # a resumed epoch: the same batches from batch 1 on
    for a, b in zip(batches[1:], again):
        assert torch.equal(a.index, b.index) and torch.equal(a.crops, b.crops) and torch.equal(a.flip, b.flip)
    held = CacheLoader(root, [teacher.key], segments, root.segments.labels, batch_size=4, frames=FRAMES, train=False, augment=Augment(eval_fraction=0.75))
    box = next(iter(held.epoch(0))).crops[0].numpy()
    assert np.allclose(box, [0.125, 0.125, 0.875, 0.875]) and not next(iter(held.epoch(0))).flip.any()


def test_random_crops_keep_area_and_ratio_bounds():
    augment = Augment(scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3))
    boxes = random_crop_boxes(np.random.default_rng(0), 4000, (40, 60), augment)
    w, h = (boxes[:, 2] - boxes[:, 0]) * 60, (boxes[:, 3] - boxes[:, 1]) * 40
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 1 + 1e-6).all()
    assert (w * h >= 0.35 * 2400 - 1e-3).all() and (w / h >= 3 / 4 - 1e-4).all() and (w / h <= 4 / 3 + 1e-4).all()


def test_the_network_crops_flips_and_normalises_on_the_device():
    model = FramesStudent(NetworkConfig("test_resnet", {"action": 3}, frames=2, image_size=8)).eval()
    frames = torch.zeros(1, 2, 16, 16, 3, dtype=torch.uint8)
    frames[..., :8, :] = 255  # left half white
    whole = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    plain = model.preprocess(frames, whole, torch.tensor([False]))
    mirrored = model.preprocess(frames, whole, torch.tensor([True]))
    assert plain.shape == (2, 3, 8, 8) and torch.allclose(mirrored, plain.flip(-1))
    white = (1.0 - model.mean) / model.std
    assert torch.allclose(plain[:, :, :, 0], white.view(1, 3, 1).expand(2, 3, 8))  # normalised by the data config's mean/std
    left = model.preprocess(frames, torch.tensor([[0.0, 0.0, 0.25, 1.0]]), None)
    assert torch.allclose(left, white.expand_as(left))  # a crop inside the white half is white everywhere


# --- training -------------------------------------------------------------------------------

def test_trains_end_to_end_and_evaluates_with_its_cost(frames_cache, tmp_path):
    out = tmp_path / "run"
    metrics = train(config(frames_cache, out, teachers=["fusion"], steps=6), log=lambda _: None)
    assert metrics[-1]["step"] == 6 and all(np.isfinite(m["train_loss"]) for m in metrics)
    record, model = load_student(str(out))
    assert isinstance(model, FramesStudent) and record["input_keys"] == [frames_cache["frames"]]
    result = evaluate(EvalConfig(cache=frames_cache["cache"], run=str(out), split="val", device="cpu"))
    assert result["segments"] == 3 and 0 <= result["subsets"][0]["metrics"]["action_top1"] <= 1
    student = result["cost"]["student"]
    assert student["parts"][0]["backbone"] == "test_resnet" and student["flops"] > 0 and student["params"] == sum(p.numel() for p in model.parameters())
    json.loads((out / "eval-val" / "metrics.json").read_text())


def test_distillation_pulls_the_student_toward_its_teacher(frames_cache, tmp_path):
    """The 'flow' teacher always names the next class: a student distilled from it alone ends up agreeing
    with it, one trained on the labels with the labels."""
    common = dict(steps=24, batch_size=9, lr=3e-3, crop_scale=1.0, flip=False)
    train(config(frames_cache, tmp_path / "gt", **common), log=lambda _: None)
    train(config(frames_cache, tmp_path / "kd", teachers=["flow"], gt_weight=0.0, **common), log=lambda _: None)
    table = cache.open_cache(frames_cache["cache"]).segments
    y = table.labels["action"][:9]
    agreement = {}
    for arm in ("gt", "kd"):
        result = evaluate(EvalConfig(cache=frames_cache["cache"], run=str(tmp_path / arm), split="train", device="cpu", cost=False))
        _, model = load_student(str(tmp_path / arm))
        loader = CacheLoader(cache.open_cache(frames_cache["cache"]), [frames_cache["frames"]], np.arange(9), table.labels, batch_size=9, frames=FRAMES, train=False)
        batch = next(iter(loader.epoch(0)))
        with torch.no_grad():
            predicted = model.eval()(batch.features[0], batch.crops, batch.flip)["action"].argmax(-1).numpy()
        agreement[arm] = {"labels": float((predicted == y).mean()), "teacher": float((predicted == (y + 1) % CLASSES).mean())}
        assert result["segments"] == 9
    assert agreement["kd"]["teacher"] > agreement["gt"]["teacher"] and agreement["kd"]["teacher"] > agreement["kd"]["labels"], agreement
    assert agreement["gt"]["labels"] > agreement["kd"]["labels"], agreement


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(frames_cache, tmp_path):
    # 9 segments in batches of 3 with --accumulate 2: steps of 2 batches and of the epoch's last one.
    assert [accumulation_group(b, 3, 2) for b in range(3)] == [(0, 2), (0, 2), (2, 1)]
    common = dict(teachers=["fusion", "flow"], weighting="per-sample", steps=5, accumulate=2)
    train(config(frames_cache, tmp_path / "whole", **common), log=lambda _: None)
    train(config(frames_cache, tmp_path / "cut", **common), log=lambda _: None, stop_after=3)
    train(config(frames_cache, tmp_path / "cut", **common), resume=True, log=lambda _: None)
    whole = rundir.load_checkpoint(tmp_path / "whole", rundir.LAST)["model"]
    cut = rundir.load_checkpoint(tmp_path / "cut", rundir.LAST)["model"]
    assert max(float((whole[k].double() - cut[k].double()).abs().max()) for k in whole if whole[k].is_floating_point()) == 0.0
    assert [m["step"] for m in rundir.read_metrics(tmp_path / "cut")] == [m["step"] for m in rundir.read_metrics(tmp_path / "whole")] == [2, 4, 5]


def test_a_run_killed_before_its_first_checkpoint_resumes_with_a_clean_log(frames_cache, tmp_path):
    out = tmp_path / "run"
    cfg = config(frames_cache, out, steps=20, batch_size=9)  # one batch a pass; checkpoints every 2 steps, the first at step 2

    def killed(step, *_):
        if step == 2:  # after the line of pass 1 is written, before the checkpoint of step 2
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, log=lambda _: None, on_step=killed)
    assert not (out / rundir.LAST).exists() and len(rundir.read_metrics(out)) == 1
    train(cfg, resume=True, log=lambda _: None)
    assert [m["step"] for m in rundir.read_metrics(out)] == list(range(1, 21))


def test_init_from_the_rgb_teacher_loads_its_own_weights_file(frames_cache, tmp_path):
    code, err = cli("train-student", "--cache", frames_cache["cache"], "--inputs", "frames", "--init-from", "rgb", "--frames", FRAMES, "--out", tmp_path / "a", "--device", "cpu")
    assert "give that file again with --weights" in one_line(code, err)
    other = tmp_path / "other.pt"
    torch.save({"x": torch.zeros(1)}, other)
    code, err = cli("train-student", "--cache", frames_cache["cache"], "--inputs", "frames", "--init-from", "rgb", "--weights", other, "--frames", FRAMES, "--out", tmp_path / "b", "--device", "cpu")
    assert "give the weights file it was extracted with" in one_line(code, err)
    from egodistill.student.train import setup

    s = setup(config(frames_cache, tmp_path / "c", backbone=None, init_from="rgb", weights=str(frames_cache["weights"])))
    saved = torch.load(frames_cache["weights"], weights_only=True)
    mine = s.network.backbone.state_dict()
    assert s.model.backbone == "test_resnet" and all(torch.equal(mine[k], v) for k, v in saved.items())


# --- bad inputs: one line each ---------------------------------------------------------------

def test_bad_inputs_give_one_line_each(frames_cache, tmp_path):
    base = ["train-student", "--cache", frames_cache["cache"], "--inputs", "frames", "--device", "cpu", "--steps", "1", "--frames", FRAMES]
    features_only = tmp_path / "features.zarr"
    testing.build_synthetic_cache(str(features_only), testing.SyntheticSpec(segments=12))
    code, err = cli("train-student", "--cache", features_only, "--inputs", "frames", "--backbone", "test_resnet", "--out", tmp_path / "r0")
    assert "extract --modality frames" in one_line(code, err)
    code, err = cli(*base, "--backbone", "no_such_net", "--out", tmp_path / "r1")
    assert "unknown backbone 'no_such_net'" in one_line(code, err)
    another = tmp_path / "efficientnet.pt"
    import timm

    torch.save(timm.create_model("test_efficientnet", num_classes=0).state_dict(), another)
    code, err = cli(*base, "--backbone", "test_resnet", "--weights", another, "--out", tmp_path / "r2")
    assert "do not fit backbone test_resnet" in one_line(code, err)
    code, err = cli(*base[:-2], "--backbone", "test_resnet", "--frames", FRAMES * 2, "--out", tmp_path / "r3")
    assert f"--frames {FRAMES * 2} is more than the {FRAMES} frames" in one_line(code, err)
    for name in ("r0", "r1", "r2", "r3"):
        assert not (tmp_path / name).exists()  # refused before the run dir is claimed


def test_flips_are_refused_on_ssv2(frames_cache, tmp_path):
    """A real SSv2 manifest (JSON + labels file, whole videos named by id): its labels say left and right."""
    videos = tmp_path / "videos"
    for i, seed in enumerate((0, 1)):
        testing.make_video(videos / f"{100 + i}.webm", seconds=1.0, fps=12, size=(64, 48), codec="vp9", seed=seed, audio=False)
    (tmp_path / "labels.json").write_text(json.dumps({"Pushing something from left to right": "0", "Pushing something from right to left": "1"}))
    manifest = tmp_path / "train.json"
    manifest.write_text(json.dumps([{"id": "100", "template": "Pushing [something] from left to right"},
                                    {"id": "101", "template": "Pushing [something] from right to left"}]))
    location = tmp_path / "ssv2.zarr"
    _extract(manifest, videos, location, "frames", segments_per_task=2, options={"frame_size": 40})
    args = ["train-student", "--cache", location, "--inputs", "frames", "--backbone", "test_resnet", "--frames", FRAMES, "--device", "cpu"]
    code, err = cli(*args, "--flip", "--out", tmp_path / "flipped")
    assert "labels name left and right" in one_line(code, err)
    from egodistill.student.train import setup

    s = setup(TrainConfig(cache=str(location), inputs=["frames"], out=str(tmp_path / "plain"), backbone="test_resnet", frames=FRAMES, image_size=32))
    assert s.augment.flip is False  # by default no flips on SSv2 ...
    assert setup(config(frames_cache, tmp_path / "generic")).augment.flip is False  # ... nor on a generic CSV, whose classes may name a direction
    assert setup(config(frames_cache, tmp_path / "asked", flip=True)).augment.flip is True  # unless asked


# --- more than one process: torchrun runs DDP, each rank its share of every global batch -------

# No dropout and no one-row draws: each rank draws those for its part of the batch, one process for the whole batch.
DDP_RUN = dict(inputs=["rgb", "flow"], teachers=["rgb"], steps=6, batch_size=16, lr=1e-2, input_dropout=0.0, single_row=0.0, device="cpu", prefetch=2, buffer_blocks=2)
DDP_SCRIPT = f"""
import sys
from egodistill.student.train import TrainConfig, train
train(TrainConfig(cache=sys.argv[1], out=sys.argv[2], **{DDP_RUN!r}), log=lambda _: None)
"""


def test_two_processes_under_torchrun_equal_one_at_the_same_global_batch(tmp_path):
    import subprocess
    import sys

    location = str(tmp_path / "features.zarr")
    testing.build_synthetic_cache(location, testing.SyntheticSpec(segments=48, feature_dim=8, segments_per_task=8))
    root = cache.open_cache(location, mode="a")
    provenance = cache.Provenance(modality="rgb", backbone="temporal_head", fit={"seed": 0})
    rng = np.random.default_rng(0)
    root.create_logits_teacher(provenance.teacher_key(), provenance, {h: rng.normal(size=(48, c)).astype(np.float32) for h, c in root.segments.heads.items()})
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517", str(script), location, str(tmp_path / "two")],
                          capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    train(TrainConfig(cache=location, out=str(tmp_path / "one"), **DDP_RUN), log=lambda _: None)
    one = rundir.load_checkpoint(tmp_path / "one", rundir.LAST)["model"]
    two = rundir.load_checkpoint(tmp_path / "two", rundir.LAST)["model"]
    assert max(float((one[k] - two[k]).abs().max()) for k in one) < 1e-5
    assert [m["step"] for m in rundir.read_metrics(tmp_path / "two")] == [m["step"] for m in rundir.read_metrics(tmp_path / "one")]
