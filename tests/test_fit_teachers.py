"""fit-teachers: grouped cross-fitting, step budgets, depth chosen out of fold, logits never from a model that saw the segment."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from egodistill import cache
from egodistill.student.sources import SourceError, resolve_teachers
from egodistill.testing import SyntheticSpec, build_synthetic_cache
from egodistill.student.fit import FitConfig, FitError, fit_head, fit_teachers, load_features, predict_head
from egodistill.student.folds import grouped_folds, segment_groups

QUIET = lambda _: None  # noqa: E731


@pytest.fixture(autouse=True)
def one_thread():
    """The tests' own fit_head calls on one intra-op thread, as fit_teachers runs its fits: on a busy 2-core machine
    two threads made the 150-step in-sample fit take 36 s instead of 1 s."""
    from egodistill.student.schedule import head_threads

    with head_threads("cpu"):
        yield


def test_folds_are_balanced_seeded_and_cover_every_sample():
    fold = grouped_folds(np.arange(23), 5, seed=1)
    assert sorted(np.bincount(fold).tolist()) == [4, 4, 5, 5, 5]
    assert np.array_equal(fold, grouped_folds(np.arange(23), 5, seed=1)) and not np.array_equal(fold, grouped_folds(np.arange(23), 5, seed=2))


def test_grouped_folds_keep_every_video_in_one_fold_and_epic_groups_by_participant():
    videos = np.array([f"v{i % 9}" for i in range(60)])  # 9 videos of uneven size, interleaved as EPIC's segments are
    fold = grouped_folds(segment_groups(videos), 4, seed=0)
    for v in np.unique(videos):
        assert len(np.unique(fold[videos == v])) == 1
    assert len(np.unique(fold)) == 4
    epic = np.array(["P01_11", "P01_12", "P02_01", "P03_04", "P01_11"])
    groups = segment_groups(epic)
    assert groups[0] == groups[1] == groups[4] and len(np.unique(groups)) == 3
    assert len(np.unique(segment_groups(np.array(["P01_11", "kitchen"])))) == 2  # not all EPIC-named: by video


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("fit") / "cache.zarr")
    spec = SyntheticSpec(segments=60, feature_dim=16, segments_per_task=10, failed={"audio": [3, 40]},
                         modalities={"rgb": ("resnet18", 3, 64, 0.5), "audio": ("resnet18", 1, 64, 0.3)})
    build_synthetic_cache(path, spec)
    cfg = FitConfig(cache=path, modalities=["rgb", "audio"], fusion=True, folds=3, steps=40, dim=32, device="cpu")
    return path, cfg, fit_teachers(cfg, log=QUIET)


def test_every_segments_logits_come_from_a_model_that_never_saw_it(fitted):
    path, cfg, teachers = fitted
    table = cache.open_cache(path).segments
    train = np.flatnonzero(table.split == "train")
    for t in teachers:
        for i, model in enumerate(t.source_model):
            if model == -2:
                continue
            assert i not in set(t.trained_on[int(model)].tolist())
        assert set(np.unique(t.source_model[train]).tolist()) <= set(range(cfg.folds)) | {-2}
        assert (t.source_model[table.split != "train"] == -1).all()  # val: the all-train model


def test_fitted_teachers_are_written_with_provenance_and_resolve_by_modality(fitted):
    path, cfg, teachers = fitted
    root = cache.open_cache(path)
    assert [t.modality for t in teachers] == ["rgb", "audio", "fusion"]
    keys = resolve_teachers(root, ["rgb", "audio", "fusion"], {"verb": 4, "noun": 6})
    assert keys == [t.key for t in teachers]
    p = root.teacher(keys[2]).provenance
    assert p.fit["folds"] == 3 and p.fit["depths"] == [0] and p.fit["seed"] == 0 and len(p.source_teachers) == 2 and p.backbone == "fusion_head"
    audio = root.teacher(keys[1])
    # The audio extraction failed on segments 3 and 40: no audio logits there, but fusion stands in with rgb.
    assert not np.isfinite(audio.read_logits("verb")[[3, 40]]).any()
    assert [f.segment for f in audio.ledger()] == [3, 40]
    assert np.isfinite(root.teacher(keys[2]).read_logits("verb")).all()


def test_cross_fitted_logits_do_not_carry_memorised_labels(tmp_path):
    # Pure-noise features with random labels: a model can only memorise them. In-sample predictions
    # then look perfect while honest held-out predictions stay near chance (1/4).
    path = str(tmp_path / "noise.zarr")
    keys = build_synthetic_cache(path, SyntheticSpec(segments=40, heads={"verb": 4}, splits={"train": 1.0}, feature_dim=16, segments_per_task=10,
                                              modalities={"rgb": ("resnet18", 3, 64, 0.0)}, seed=5))
    cfg = FitConfig(cache=path, modalities=["rgb"], folds=4, steps=150, depths=(1,), dim=16, lr=3e-3, batch_size=64, device="cpu")
    [teacher] = fit_teachers(cfg, log=QUIET)
    labels = cache.open_cache(path).segments.labels["verb"]
    cross_fitted = (teacher.logits["verb"].argmax(1) == labels).mean()
    features, present = load_features(cache.open_cache(path), [keys["rgb"]], cfg)
    every = np.arange(40)
    model = fit_head(features, present, {"verb": labels}, every, cfg, {"verb": 4}, depth=1, seed=1)
    in_sample = (predict_head(model, features, present, every, cfg)["verb"].argmax(1) == labels).mean()
    assert in_sample > 0.9
    assert cross_fitted < 0.5


def test_every_segments_video_is_in_one_fold(fitted):
    path, cfg, teachers = fitted
    table = cache.open_cache(path).segments
    for t in teachers:
        fold_of = {}
        for i in np.flatnonzero((t.source_model >= 0)):
            assert fold_of.setdefault(str(table.videos[i]), int(t.source_model[i])) == int(t.source_model[i])


def test_a_fit_takes_its_step_budget_whatever_the_batch_size(tmp_path, monkeypatch):
    path = str(tmp_path / "c.zarr")
    keys = build_synthetic_cache(path, SyntheticSpec(segments=40, heads={"verb": 4}, feature_dim=8, segments_per_task=10, modalities={"rgb": ("resnet18", 3, 64, 1.0)}))
    steps = []
    original = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: (steps.append(1), original(self, *a, **k))[1])
    for batch in (8, 256):  # 256 > the 28 training segments: one batch per pass, still 25 steps
        steps.clear()
        cfg = FitConfig(cache=path, modalities=["rgb"], steps=25, batch_size=batch, device="cpu")
        features, present = load_features(cache.open_cache(path), [keys["rgb"]], cfg)
        labels = cache.open_cache(path).segments.labels
        fit_head(features, present, labels, np.arange(28), cfg, {"verb": 4}, depth=0, seed=0)
        assert len(steps) == 25


def test_standardisation_statistics_come_from_the_fitted_segments_only(tmp_path):
    path = str(tmp_path / "c.zarr")
    keys = build_synthetic_cache(path, SyntheticSpec(segments=40, heads={"verb": 4}, feature_dim=8, segments_per_task=10, modalities={"rgb": ("resnet18", 3, 64, 1.0)}))
    cfg = FitConfig(cache=path, modalities=["rgb"], steps=1, device="cpu")
    features, present = load_features(cache.open_cache(path), [keys["rgb"]], cfg)
    features[0][30:] += 100.0  # segments the fit never sees: far away
    model = fit_head(features, present, cache.open_cache(path).segments.labels, np.arange(30), cfg, {"verb": 4}, depth=0, seed=0)
    expected = features[0][:30].astype(np.float64).reshape(-1, 8).mean(axis=0)
    assert np.allclose(model.standardise[0].mean.numpy(), expected, atol=1e-3)


def test_fit_teachers_refuses_bad_requests(tmp_path):
    path = str(tmp_path / "c.zarr")
    build_synthetic_cache(path, SyntheticSpec(segments=12, feature_dim=8, unlabelled=0.0, modalities={"rgb": ("resnet18", 3, 64, 1.0)}))
    with pytest.raises(FitError) as err:  # 12 segments in 2 videos, the training ones in 1: no --folds works
        fit_teachers(FitConfig(cache=path, modalities=["rgb"], folds=20), log=QUIET)
    assert "\n" not in str(err.value) and "lower --folds" not in str(err.value)
    assert str(err.value) == "cross-fitting needs labelled 'train' segments of at least 2 videos (or participants), the cache has 1: label segments of more videos"
    with pytest.raises(FitError, match="at least 2 folds"):
        fit_teachers(FitConfig(cache=path, modalities=["rgb"], folds=1), log=QUIET)
    with pytest.raises(SourceError, match="'flow'"):
        fit_teachers(FitConfig(cache=path, modalities=["rgb", "flow"]), log=QUIET)
    unlabelled = str(tmp_path / "u.zarr")
    build_synthetic_cache(unlabelled, SyntheticSpec(segments=12, feature_dim=8, unlabelled=1.0, modalities={"rgb": ("resnet18", 3, 64, 1.0)}))
    with pytest.raises(FitError, match="no labelled 'train' segments"):
        fit_teachers(FitConfig(cache=unlabelled, modalities=["rgb"]), log=QUIET)


def test_thin_data_is_refused_in_one_line_naming_the_counts(tmp_path):
    # As a box file matching few videos leaves it: audio features for 2 of the 28 labelled training segments.
    path = str(tmp_path / "thin.zarr")
    build_synthetic_cache(path, SyntheticSpec(segments=40, feature_dim=8, segments_per_task=10, failed={"audio": list(range(2, 28))},
                                              modalities={"rgb": ("resnet18", 3, 64, 1.0), "audio": ("resnet18", 1, 64, 1.0)}))
    with pytest.raises(FitError) as err:
        fit_teachers(FitConfig(cache=path, modalities=["rgb", "audio"], fusion=True, folds=3, steps=2, device="cpu"), log=QUIET)
    message = str(err.value)
    assert "\n" not in message and "audio teacher" in message and "2 of the 28 labelled 'train' segments" in message
    # Both usable segments are in one video, so in one fold: 2 folds fail too, and the fix is more data, not fewer folds.
    assert "verb 2, noun 2" in message and "fold 0 of --folds 2 leaves no labelled segment" in message and "lower --folds" not in message
    assert message.endswith("extract features for labelled segments of more videos")
    with pytest.raises(FitError, match="fold 0 of --folds 2 leaves no labelled segment"):
        fit_teachers(FitConfig(cache=path, modalities=["audio"], folds=2, steps=2, device="cpu"), log=QUIET)
    with pytest.raises(FitError, match="lower --folds to 3 \\(the most this cache allows\\)"):  # 3 labelled training videos
        fit_teachers(FitConfig(cache=path, modalities=["rgb"], folds=5, steps=2, device="cpu"), log=QUIET)
    [rgb] = fit_teachers(FitConfig(cache=path, modalities=["rgb"], folds=3, steps=2, device="cpu"), log=QUIET)  # rgb is whole: it fits
    assert np.isfinite(rgb.logits["verb"]).all()


def test_fits_side_by_side_write_the_same_teachers_as_fits_one_at_a_time(tmp_path):
    spec = SyntheticSpec(segments=60, feature_dim=8, segments_per_task=10, modalities={"rgb": ("resnet18", 3, 64, 1.0), "audio": ("resnet18", 1, 64, 0.5)})
    teachers = {}
    for workers in (1, 2):
        path = str(tmp_path / f"w{workers}.zarr")
        build_synthetic_cache(path, spec)
        done = []
        teachers[workers] = fit_teachers(FitConfig(cache=path, modalities=["rgb", "audio"], fusion=True, folds=3, steps=30, workers=workers, device="cpu"),
                                         log=QUIET, on_fit=lambda d, t: done.append((d, t)))
        assert done == [(i, 12) for i in range(1, 13)]  # 3 teachers x (3 folds + the all-train model), each reported once
    for one, two in zip(teachers[1], teachers[2]):
        assert one.key == two.key and np.array_equal(one.logits["noun"], two.logits["noun"], equal_nan=True)


def test_a_head_fitted_on_rows_pooled_once_is_the_student_on_its_rows(tmp_path):
    from egodistill.student.fit import pool_features

    path = str(tmp_path / "c.zarr")
    keys = build_synthetic_cache(path, SyntheticSpec(segments=40, feature_dim=8, segments_per_task=10, offset=5.0, modalities={"rgb": ("resnet18", 3, 64, 1.0)}))
    cfg = FitConfig(cache=path, modalities=["rgb"], steps=50, device="cpu")
    features, present = load_features(cache.open_cache(path), [keys["rgb"]], cfg)
    labels = cache.open_cache(path).segments.labels
    model = fit_head(features, present, labels, np.arange(28), cfg, {"verb": 4, "noun": 6}, depth=0, seed=0)
    every = np.arange(40)
    pooled = predict_head(model, features, present, every, cfg, pooled=pool_features(features, present))
    rows = predict_head(model, features, present, every, cfg)  # Student.forward on the rows, in fp32
    assert np.abs(pooled["noun"] - rows["noun"]).max() < 0.05 * np.abs(rows["noun"]).max()
    assert (pooled["noun"].argmax(1) == rows["noun"].argmax(1)).mean() > 0.95


def test_cli_defaults_and_choices_are_the_packages():
    from dataclasses import MISSING, fields

    import typer

    from egodistill.cli import Schedule, Weighting, app
    from egodistill.student.step import SCHEDULES, SCHEMES, StepConfig

    commands = {c.name: c for c in typer.main.get_command(app).commands.values()}

    def check(command: str, config) -> int:
        options, compared = {p.name: p for p in commands[command].params}, 0
        for f in fields(config):
            if f.name in options and f.default is not MISSING:
                shown = options[f.name].default
                if (command, f.name) == ("train-student", "lr"):  # chosen by the student's kind: 1e-2 for heads, 1e-4 end to end
                    assert shown is None
                    continue
                assert getattr(shown, "value", shown) == (",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default), (command, f.name)
                compared += 1
        return compared

    assert check("fit-teachers", FitConfig) >= 8 and check("train-student", StepConfig) >= 8
    assert {p.name: p for p in commands["fit-teachers"].params}["depths"].default == "0"  # once "0,1" in the CLI and (0,) in FitConfig
    assert tuple(m.value for m in Schedule) == SCHEDULES and tuple(m.value for m in Weighting) == SCHEMES
