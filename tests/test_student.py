"""The student on a small synthetic cache: masking, the streaming loader, resume, evaluation, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from egodistill import cache
from egodistill.student.data import CacheLoader, frame_indices, teacher_logit_table
from egodistill.student.evaluate import EvalConfig, evaluate, input_subsets, load_student
from egodistill.student.model import ModelConfig, Student, mask_modalities
from egodistill.student.rundir import RunDirError
from egodistill.student.sources import SourceError
from egodistill.testing import SyntheticSpec, build_synthetic_cache
from egodistill.student.train import TrainConfig, TrainError, setup, train, training_statistics

HEADS = {"verb": 4, "noun": 6}
SMALL = dict(steps=10, batch_size=16, dim=32, depth=1, num_heads=2, lr=1e-3, device="cpu", prefetch=2, buffer_blocks=2)  # 5 batches a pass: 2 passes


def add_logits_teacher(root: cache.Cache, modality: str, quality: float, seed: int, heads: dict[str, int] = HEADS) -> str:
    """A logits-only teacher whose logits point at the label with strength `quality` (what fit-teachers writes)."""
    table = root.segments
    rng = np.random.default_rng(seed)
    logits = {}
    for head, classes in heads.items():
        y = np.clip(table.labels.get(head, np.zeros(len(table), np.int32)), 0, classes - 1)
        logits[head] = (rng.normal(size=(len(table), classes)) + quality * np.eye(classes)[y]).astype(np.float32)
    provenance = cache.Provenance(modality=modality, backbone="temporal_head", fit={"seed": seed})
    key = provenance.teacher_key()
    root.create_logits_teacher(key, provenance, logits)
    return key


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("synthetic") / "cache.zarr")
    keys = build_synthetic_cache(path, SyntheticSpec(segments=96, feature_dim=16, segments_per_task=8, unlabelled=0.2))
    root = cache.open_cache(path, mode="a")
    teachers = {m: add_logits_teacher(root, m, q, i) for i, (m, q) in enumerate({"rgb": 3.0, "flow": 2.0, "audio": 1.0}.items())}
    return path, keys, teachers


def config(path, out, **overrides):
    return TrainConfig(**{"cache": path, "inputs": ["rgb", "flow", "audio"], "teachers": ["rgb", "flow", "audio"], "out": str(out), **SMALL, **overrides})


# --- masking and the missing-modality token --------------------------------------------------

def test_masking_never_drops_every_input_and_never_invents_one():
    generator = torch.Generator().manual_seed(0)
    present = torch.rand(4000, 3, generator=generator) < 0.7
    for prob in (0.5, 0.9, 1.0):
        kept = mask_modalities(present, prob, generator)
        assert not (kept & ~present).any()
        assert (kept.any(dim=1) == present.any(dim=1)).all()  # a sample with inputs keeps at least one
    everything = torch.ones(1000, 3, dtype=torch.bool)
    assert (mask_modalities(everything, 1.0, generator).sum(dim=1) == 1).all()
    dropped = 1 - mask_modalities(everything, 0.3, generator).float().mean().item()
    assert 0.25 < dropped < 0.32  # ~p, slightly less because a sample never loses all three


def test_the_missing_token_stands_in_for_an_absent_input_and_gets_gradients():
    torch.manual_seed(0)
    model = Student(ModelConfig([5, 7], HEADS, frames=4, dim=16, depth=1, num_heads=2))
    features = [torch.randn(6, 4, 5), torch.full((6, 4, 7), float("nan"))]  # input 1 holds garbage (NaN rows)
    present = torch.tensor([[True, False]] * 6)
    for head in model.temporal_heads.values():  # zero at init (training starts from the pooled model): wake them
        torch.nn.init.normal_(head.weight)
    out = model(features, present)
    assert all(torch.isfinite(v).all() for v in out.values())
    sum(v.sum() for v in out.values()).backward()
    assert model.temporal.missing_token.grad[1].abs().sum() > 0
    assert model.temporal.missing_token.grad[0].abs().sum() == 0  # input 0 was never missing
    assert model.missing_pooled.grad[10:].abs().sum() > 0 and model.missing_pooled.grad[:10].abs().sum() == 0  # pooled: 2 x 5 for input 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# --- the streaming loader --------------------------------------------------------------------

def test_frame_indices_stride_centre_jitter_and_short_segments():
    assert frame_indices(np.array([16]), 8, np.array([0.5]))[0].tolist() == [1, 3, 5, 7, 9, 11, 13, 15]
    assert frame_indices(np.array([16]), 8, np.array([0.0]))[0].tolist() == [0, 2, 4, 6, 8, 10, 12, 14]
    assert frame_indices(np.array([4]), 8, np.array([0.9]))[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert frame_indices(np.array([10]), 4, np.array([0.999]))[0].tolist() == [3, 5, 7, 9]


def loader_for(path, keys, train_mode, **kw):
    root = cache.open_cache(path)
    table = root.segments
    segments = np.flatnonzero(table.split == "train")
    return root, segments, CacheLoader(root, keys, segments, table.labels, batch_size=10, frames=8, train=train_mode, seed=3, buffer_blocks=2, **kw)


def test_loader_reads_whole_blocks_and_gives_every_segment_its_own_rows(synthetic, monkeypatch):
    path, keys, _ = synthetic
    calls = []
    real = cache.Teacher.read_features

    def counting_read(teacher, spans):  # the real read, with the rows of every span it asks for noted
        calls.extend(b - a for a, b in spans)
        return real(teacher, spans)

    monkeypatch.setattr(cache.Teacher, "read_features", counting_read)
    inputs = [keys["rgb"], keys["audio"]]
    root, segments, loader = loader_for(path, inputs, train_mode=False, in_memory=False)  # streaming, as for a cache too big to hold
    seen = []
    teachers = [root.teacher(k) for k in inputs]
    for batch in loader.epoch(0):
        for row, i in enumerate(batch.index.tolist()):
            for m, t in enumerate(teachers):
                o = t.offsets
                np.testing.assert_array_equal(batch.features[m][row].numpy(), t.read_rows(o[i], o[i + 1])[0])
        seen += batch.index.tolist()
    assert sorted(seen) == segments.tolist()
    # Every block of every input read whole, once (8 segments x 8 rows = one shard).
    assert calls == [64] * (len(loader.blocks) * len(inputs))
    calls.clear()
    _, _, held = loader_for(path, inputs, train_mode=True)  # default: it fits, so it is read once and held
    for epoch in range(3):
        list(held.epoch(epoch))
    assert calls == [teachers[0].layout.rows, teachers[1].layout.rows]


def test_loader_shuffles_per_epoch_and_resumes_mid_epoch_with_the_same_batches(synthetic):
    path, keys, _ = synthetic
    _, segments, loader = loader_for(path, [keys["rgb"]], train_mode=True)
    epoch0 = list(loader.epoch(0))
    order0 = np.concatenate([b.index.numpy() for b in epoch0])
    order1 = np.concatenate([b.index.numpy() for b in loader.epoch(1)])
    assert sorted(order0.tolist()) == sorted(segments.tolist()) and not np.array_equal(order0, order1)
    resumed = list(loader.epoch(0, start_batch=3))
    assert len(resumed) == len(epoch0) - 3
    for a, b in zip(epoch0[3:], resumed):
        assert torch.equal(a.index, b.index) and torch.equal(a.features[0], b.features[0])


def test_temporal_jitter_in_training_centred_window_at_evaluation(synthetic):
    path, keys, _ = synthetic
    root = cache.open_cache(path)
    table = root.segments
    segments = np.flatnonzero(table.split == "train")
    make = lambda train_mode: CacheLoader(root, [keys["rgb"]], segments, table.labels, batch_size=200, frames=4, train=train_mode, seed=0)  # noqa: E731
    teacher = root.teacher(keys["rgb"])
    o = teacher.offsets

    def starts(batch):  # which of a segment's 8 rows each sample's first frame came from
        out = []
        for row, i in enumerate(batch.index.tolist()):
            rows = teacher.read_rows(o[i], o[i + 1])[0]
            out.append(int(np.flatnonzero((rows == batch.features[0][row, 0].numpy()).all(axis=1))[0]))
        return out

    assert set(starts(next(make(False).epoch(0)))) == {1}  # 8 rows, 4 frames, stride 2: centred at row 1
    assert set(starts(next(make(True).epoch(0)))) == {0, 1}


def test_in_memory_loader_gives_the_same_batches(synthetic):
    path, keys, _ = synthetic
    _, _, streaming = loader_for(path, [keys["rgb"], keys["flow"]], train_mode=True)
    _, _, memory = loader_for(path, [keys["rgb"], keys["flow"]], train_mode=True, in_memory=True)
    for a, b in zip(streaming.epoch(2), memory.epoch(2)):
        assert torch.equal(a.index, b.index) and all(torch.equal(x, y) for x, y in zip(a.features, b.features))


# --- training runs -----------------------------------------------------------------------------

def strip_times(metrics):
    return [{k: v for k, v in m.items() if k not in ("seconds", "segments_per_s")} for m in metrics]


def test_resume_gives_the_same_metrics_and_weights_as_an_uninterrupted_run(synthetic, tmp_path):
    path, _, _ = synthetic
    whole = train(config(path, tmp_path / "whole", mask_prob=0.5, weighting="per-sample"), log=lambda _: None)
    assert len(whole) == 2
    cut = config(path, tmp_path / "cut", mask_prob=0.5, weighting="per-sample")
    train(cut, log=lambda _: None, stop_after=6)  # killed mid-epoch 1 (5 batches per epoch), after a checkpoint
    with pytest.raises(RunDirError, match="--resume"):
        train(cut, log=lambda _: None)
    resumed = train(cut, resume=True, log=lambda _: None)
    assert strip_times(resumed) == strip_times(whole)
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert json.loads((tmp_path / "whole" / "config.json").read_text())["input_keys"]


def test_dataset_weighting_and_ground_truth_only_runs(synthetic, tmp_path):
    path, _, _ = synthetic
    metrics = train(config(path, tmp_path / "dataset", weighting="dataset", tau=0.5, temperature=2.0, steps=5), log=lambda _: None)
    assert np.isfinite(metrics[-1]["train_loss"])
    metrics = train(config(path, tmp_path / "gt", inputs=["rgb"], teachers=[], steps=5, holdout=0.2), log=lambda _: None)
    assert np.isfinite(metrics[-1]["holdout_loss"])


def test_the_step_budget_is_kept_and_the_model_scored_is_the_last_one(synthetic, tmp_path):
    path, _, _ = synthetic
    out = tmp_path / "run"
    metrics = train(config(path, out, inputs=["rgb"], teachers=[], steps=7), log=lambda _: None)
    assert metrics[-1]["step"] == 7 and sorted(p.name for p in out.glob("*.pt")) == ["last.pt"]
    _, model = load_student(str(out))
    last = torch.load(out / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(v, last[k]) for k, v in model.state_dict().items())


def test_a_default_student_learns_a_planted_signal_and_is_never_an_untrained_model(tmp_path):
    # Strong class signal under a large shared offset (as frozen features have): a model picked on an
    # early held-out loss, or one without standardisation, stays near chance; the default does not.
    path = str(tmp_path / "planted.zarr")
    build_synthetic_cache(path, SyntheticSpec(segments=200, heads={"verb": 4}, feature_dim=16, segments_per_task=20, offset=50.0,
                                              modalities={"rgb": ("resnet18", 3, 64, 0.6)}, seed=3))
    train(TrainConfig(cache=path, inputs=["rgb"], out=str(tmp_path / "run"), steps=300, device="cpu", in_memory=True), log=lambda _: None)
    result = evaluate(EvalConfig(cache=path, run=str(tmp_path / "run"), split="val", device="cpu", cost=False, baseline=True))
    student = result["subsets"][0]["metrics"]["verb_top1"]
    probe = result["baselines"][0]["metrics"]["verb_top1"]
    assert student > 0.6 and student >= probe - 0.05, (student, probe)


def test_standardisation_statistics_come_from_training_segments_only(synthetic, tmp_path):
    path, keys, _ = synthetic
    cfg = config(path, tmp_path / "s", inputs=["rgb"], teachers=[])
    s = setup(cfg)
    stats = training_statistics(cfg, s)
    teacher = s.root.teacher(keys["rgb"])
    rows = np.concatenate([teacher.read_rows(int(teacher.offsets[i]), int(teacher.offsets[i + 1]))[0] for i in s.train_segments]).astype(np.float64)
    assert np.allclose(stats[0][0].numpy(), rows.mean(axis=0), atol=1e-3)
    assert not (s.table.split[s.train_segments] != "train").any()


def test_distilled_and_ground_truth_arms_train_on_the_same_segments(synthetic, tmp_path):
    path, _, _ = synthetic
    root = cache.open_cache(path, mode="a")
    partial = add_logits_teacher(root, "audio-partial", 2.0, 9)
    logits = {h: root.teacher(partial).read_logits(h) for h in HEADS}
    for v in logits.values():
        v[::3] = np.nan  # this teacher has nothing for every third segment (e.g. videos without sound)
    provenance = cache.Provenance(modality="partial", backbone="temporal_head", fit={"seed": 9})
    root.create_logits_teacher(provenance.teacher_key(), provenance, logits)
    gt = setup(config(path, tmp_path / "gt", inputs=["rgb"], teachers=[]))
    kd = setup(config(path, tmp_path / "kd", inputs=["rgb"], teachers=["rgb", "partial"]))
    assert np.array_equal(gt.train_segments, kd.train_segments)
    metrics = train(config(path, tmp_path / "kd", inputs=["rgb"], teachers=["rgb", "partial"], weighting="per-sample", steps=5), log=lambda _: None)
    assert np.isfinite(metrics[-1]["train_loss"])


# --- evaluation ----------------------------------------------------------------------------------

def test_evaluation_reports_every_input_subset_teachers_and_cost(synthetic, tmp_path):
    path, _, _ = synthetic
    out = tmp_path / "run"
    train(config(path, out, mask_prob=0.5, steps=15), log=lambda _: None)
    result = evaluate(EvalConfig(cache=path, run=str(out), split="val", device="cpu", baseline=True))
    names = [s["name"] for s in result["subsets"]]
    assert names == ["rgb+flow+audio", "rgb+flow", "rgb+audio", "flow+audio", "rgb", "flow", "audio"]
    assert len(input_subsets(3)) == 7
    for s in result["subsets"]:
        m = s["metrics"]
        assert set(m) == {f"{h}_{k}" for h in HEADS for k in ("top1", "top5", "ece", "nll", "brier")} | {"action_top1"}
        assert 0 <= m["action_top1"] <= min(m["verb_top1"], m["noun_top1"]) <= 1 and m["verb_top1"] <= m["verb_top5"]
        assert 0 <= m["verb_ece"] <= 100 and m["verb_nll"] > 0 and 0 <= m["verb_brier"] <= 2
        assert s["segments"] == result["segments"]  # every val segment has every input here
    assert [t["teacher"] for t in result["teacher_metrics"]] == result["teachers"]
    assert [e["ensemble"] for e in result["ensembles"]] == ["uniform", "dataset"]
    assert abs(sum(result["ensembles"][1]["weights"]["verb"]) - 1) < 1e-5
    assert [b["probe"] for b in result["baselines"]] == ["rgb", "flow", "audio", "rgb+flow+audio"]
    cost = result["cost"]
    assert cost["student"]["flops"] > 0 and cost["student"]["parts"][0]["backbone"] == "resnet18"
    folder = out / "eval-val"
    assert json.loads((folder / "metrics.json").read_text())["segments"] == result["segments"]
    table = (folder / "table.txt").read_text()
    assert "student[rgb]" in table and "ensemble of teachers (dataset)" in table and "probe[rgb+flow+audio]" in table
    for png in ("reliability.png", "subsets.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- bad input -----------------------------------------------------------------------------------

def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_bad_inputs_and_teachers_are_one_line_errors(synthetic, tmp_path):
    path, keys, teachers = synthetic
    with pytest.raises(SourceError) as err:
        train(config(path, tmp_path / "a", inputs=["depth"]))
    assert "'depth'" in one_line(err) and "rgb" in one_line(err)
    with pytest.raises(SourceError) as err:
        train(config(path, tmp_path / "b", teachers=["layout"]))
    assert "fit-teachers" in one_line(err)
    with pytest.raises(SourceError) as err:
        train(config(path, tmp_path / "c", teachers=[keys["rgb"]]))  # features only, no logits
    assert "no logits" in one_line(err)
    assert not (tmp_path / "a").exists()  # nothing is written before the checks pass


def test_teachers_with_other_class_counts_or_ambiguous_names_are_refused(tmp_path):
    path = str(tmp_path / "cache.zarr")
    build_synthetic_cache(path, SyntheticSpec(segments=32, feature_dim=8, modalities={"rgb": ("resnet18", 3, 64, 1.0)}))
    root = cache.open_cache(path, mode="a")
    good = add_logits_teacher(root, "rgb", 2.0, 0)
    odd = add_logits_teacher(root, "flow", 2.0, 1, heads={"verb": 5, "noun": 6})
    with pytest.raises(SourceError) as err:
        train(config(path, tmp_path / "r", inputs=["rgb"], teachers=[good, odd]))
    assert odd in one_line(err) and "5 classes" in one_line(err)
    add_logits_teacher(root, "rgb", 1.0, 2)
    with pytest.raises(SourceError) as err:
        train(config(path, tmp_path / "r", inputs=["rgb"], teachers=["rgb"]))
    assert "ambiguous" in one_line(err) and good in one_line(err)


def test_a_cache_without_training_labels_is_refused(tmp_path):
    path = str(tmp_path / "cache.zarr")
    build_synthetic_cache(path, SyntheticSpec(segments=32, feature_dim=8, unlabelled=1.0, modalities={"rgb": ("resnet18", 3, 64, 1.0)}))
    teacher = add_logits_teacher(cache.open_cache(path, mode="a"), "fusion", 2.0, 0)
    with pytest.raises(TrainError) as err:
        train(config(path, tmp_path / "r", inputs=["rgb"], teachers=[teacher]))
    assert "no labels" in one_line(err)
    # Pure distillation needs no labels.
    metrics = train(config(path, tmp_path / "kd", inputs=["rgb"], teachers=[teacher], gt_weight=0.0, steps=5), log=lambda _: None)
    assert np.isfinite(metrics[0]["train_loss"])


def test_a_run_dir_with_another_config_is_refused(synthetic, tmp_path):
    path, _, _ = synthetic
    train(config(path, tmp_path / "run", inputs=["rgb"], steps=5), log=lambda _: None)
    with pytest.raises(RunDirError) as err:
        train(config(path, tmp_path / "run", inputs=["rgb"], steps=5, lr=5e-4), resume=True)
    assert "another config" in one_line(err) and "lr" in one_line(err)


# --- consistent teaching: per-view teacher logits ------------------------------------------------

def test_the_loader_hands_each_segment_the_rows_and_the_teacher_logits_of_one_view(tmp_path):
    n, rows, frames, placements = 12, 16, 8, (0.0, 0.5, 1.0)
    root = cache.open_cache(str(tmp_path / "views.zarr"), mode="a")
    root.write_segments(cache.SegmentTable(
        ids=np.array([f"s{i}" for i in range(n)]), videos=np.array([f"v{i}" for i in range(n)]), start_sec=np.zeros(n), stop_sec=np.ones(n),
        split=np.array(["train"] * n), labels={"verb": np.zeros(n, np.int32)}, heads={"verb": 4}), {"format": "test"})
    provenance = cache.Provenance(modality="rgb", backbone="counter", sampling={"frames": rows})
    offsets, layout = cache.plan_layout(np.full(n, rows), 4)
    teacher, _ = root.create_teacher(provenance.teacher_key(), provenance, 2, offsets, layout, {})
    for task in range(layout.tasks):  # feature 0 = the row's index inside its segment
        segs = layout.task_segments(task)
        index = np.tile(np.arange(rows), len(segs)).astype(np.float16)
        teacher.write_task(task, np.stack([index, index], axis=1), index.astype(np.float32), {}, failed=[], worker="test")
    view_logits = np.zeros((n, 3, 4), np.float32)
    view_logits[:, :, 0] = np.arange(3)  # class-0 logit = the view's number
    logits_teacher = cache.Provenance(modality="fusion", backbone="student_head", fit={"views": 3})
    root.create_logits_teacher(logits_teacher.teacher_key(), logits_teacher, {"verb": view_logits[:, 1]},
                               views=cache.Views(frames, placements), view_logits={"verb": view_logits})
    opened = cache.open_cache(str(tmp_path / "views.zarr"))
    keys = [teacher.key]
    table = teacher_logit_table(opened, [logits_teacher.teacher_key()], ["verb"], views=True)
    assert table["verb"].shape == (n, 1, 3, 4)
    loader = CacheLoader(opened, keys, np.arange(n), opened.segments.labels, teacher_logits=table, batch_size=5, frames=frames,
                         train=True, views=cache.Views(frames, placements))
    seen_views = set()
    for epoch in range(3):
        for batch in loader.epoch(epoch):
            for b in range(len(batch)):
                v = int(batch.teacher_logits["verb"][b, 0, 0])
                seen_views.add(v)
                expected = frame_indices(np.array([rows]), frames, np.array([placements[v]]))[0]
                assert batch.features[0][b, :, 0].numpy().astype(int).tolist() == expected.tolist()
    assert seen_views == {0, 1, 2}
    centred = next(CacheLoader(opened, keys, np.arange(n), {}, teacher_logits=table, frames=frames, train=False, views=cache.Views(frames, placements)).epoch(0))
    assert (centred.teacher_logits["verb"][:, 0, 0] == 1).all()


def test_fit_teachers_writes_per_view_logits_that_train_student_uses(tmp_path):
    path = str(tmp_path / "c.zarr")
    build_synthetic_cache(path, SyntheticSpec(segments=60, frames=12, feature_dim=8, segments_per_task=10, modalities={"rgb": ("resnet18", 3, 64, 1.0)}))
    from egodistill.student.fit import FitConfig, fit_teachers
    [fitted] = fit_teachers(FitConfig(cache=path, modalities=["rgb"], folds=3, steps=30, frames=8, views=3, device="cpu"), log=lambda _: None)
    teacher = cache.open_cache(path).teacher(fitted.key)
    assert teacher.views == cache.Views(8, (0.0, 0.5, 1.0))
    assert teacher.read_view_logits("verb").shape == (60, 3, 4)
    assert np.array_equal(teacher.read_logits("verb"), teacher.read_view_logits("verb")[:, 1], equal_nan=True)
    with pytest.raises(TrainError, match="--frames 8"):
        train(TrainConfig(cache=path, inputs=["rgb"], teachers=[fitted.key], out=str(tmp_path / "r"), frames=6, steps=2, device="cpu"))
    metrics = train(TrainConfig(cache=path, inputs=["rgb"], teachers=[fitted.key], out=str(tmp_path / "r"), frames=8, steps=4, device="cpu"), log=lambda _: None)
    assert metrics[-1]["step"] == 4


def test_weight_decay_only_on_weight_matrices():
    from egodistill.student.model import parameter_groups

    model = Student(ModelConfig([5, 7], HEADS, frames=4, dim=16, depth=1, num_heads=2))
    decay, plain = parameter_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    assert "heads.verb.weight" in decayed and "temporal.project.0.0.weight" in decayed
    assert not any(n.endswith(("bias", "missing_pooled", "missing_token", "time_embedding", "modality_embedding")) or ".norm" in n for n in decayed)
    assert len(decay["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_a_batch_without_labels_or_teachers_is_skipped_not_a_traceback(tmp_path):
    # 90 % of the training segments unlabelled, ground truth only, 2 segments a batch: most batches hold no
    # label at all. Their loss reaches no parameter; the step is skipped and the run goes on.
    path = str(tmp_path / "cache.zarr")
    build_synthetic_cache(path, SyntheticSpec(segments=60, feature_dim=8, unlabelled=0.9, segments_per_task=10, modalities={"rgb": ("resnet18", 3, 64, 1.0)}))
    metrics = train(config(path, tmp_path / "r", inputs=["rgb"], teachers=[], depth=0, batch_size=2, steps=40), log=lambda _: None)
    assert metrics[-1]["step"] == 40 and all(np.isfinite(m["train_loss"]) for m in metrics)


def test_the_one_step_skips_a_loss_that_reaches_no_parameter_and_steps_otherwise():
    from egodistill.student.schedule import make_optimiser
    from egodistill.student.step import StepConfig, optimiser_step

    model = torch.nn.Linear(3, 2)
    optimiser = make_optimiser(model, 0.1, 0.0)
    cfg = StepConfig(cache="unused", lr=0.1, warmup=0.0)
    before = [p.detach().clone() for p in model.parameters()]
    assert not optimiser_step(model, optimiser, torch.zeros(()), 0, 10, cfg)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert optimiser_step(model, optimiser, model(torch.ones(4, 3)).square().mean(), 0, 10, cfg)
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert optimiser.param_groups[0]["lr"] == pytest.approx(0.1)  # step 0 of 10 after no warm-up: the peak


def _rows_that_change_midway(seed: int, n: int = 600, d: int = 16, classes: int = 4):
    """Rows whose class shows in their level and in a change halfway (rows 4-7 differ from rows 0-3), with a
    change common to every clip and noise mostly per clip, as frozen features of real clips have: one row's
    mean is then far from its clip's, and late - early far from zero."""
    rng = np.random.default_rng(0)  # one world: the same classes for every sample drawn
    level, change, common = rng.normal(size=(classes, d)), rng.normal(size=(classes, d)), 3 * rng.normal(size=d)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    half = np.where(np.arange(8) < 4, -1.0, 1.0)[None, :, None]
    x = level[y][:, None] + half * (common + change[y])[:, None] + rng.normal(size=(n, 1, d)) + 0.3 * rng.normal(size=(n, 8, d))
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y)


def _fit(model: Student, x: torch.Tensor, y: torch.Tensor, steps: int = 300) -> Student:
    from egodistill.student.losses import student_loss
    from egodistill.student.schedule import head_threads, make_optimiser
    from egodistill.student.step import StepConfig, optimiser_step

    torch.manual_seed(0)
    cfg = StepConfig(cache="unused")
    rows = x.reshape(-1, x.shape[-1])
    model.set_statistics([(rows.mean(0), rows.std(0))])
    optimiser = make_optimiser(model, cfg.lr, cfg.weight_decay)
    present = torch.ones(64, 1, dtype=torch.bool)
    model.train()
    with head_threads("cpu"):
        for step in range(steps):
            idx = torch.randint(0, len(y), (64,))
            optimiser_step(model, optimiser, student_loss(model([x[idx]], present), {"verb": y[idx]}, None), step, steps, cfg)
    return model.eval()


@torch.no_grad()
def _accuracy_by_rows(model: Student, x: torch.Tensor, y: torch.Tensor) -> dict[int, float]:
    windows = {8: x, 2: x[:, 3:5], 1: x[:, 3:4]}  # centred windows, as evaluate's loader takes them
    present = torch.ones(len(y), 1, dtype=torch.bool)
    return {t: float((model([w], present)["verb"].argmax(1) == y).float().mean()) for t, w in windows.items()}


def test_a_head_trained_on_8_rows_keeps_its_accuracy_at_1_and_2_rows():
    x, y = _rows_that_change_midway(seed=1)
    test_x, test_y = _rows_that_change_midway(seed=2)
    fixed = _accuracy_by_rows(_fit(Student(ModelConfig([16], {"verb": 4})), x, y), test_x, test_y)
    # Without the learned one-row stand-in (never trained, zero: late - early = 0 after standardisation, as before).
    zero = _accuracy_by_rows(_fit(Student(ModelConfig([16], {"verb": 4}, single_row=0.0)), x, y), test_x, test_y)
    assert fixed[8] > 0.95 and fixed[2] > 0.95, fixed
    assert fixed[1] >= fixed[2] - 0.03, fixed  # issue 15: the 1-row point within 3 points of the 2-row point
    assert zero[1] < fixed[1] - 0.1, (zero, fixed)  # the defect this guards against is real on this data (measured: 81 % against 99 %)
