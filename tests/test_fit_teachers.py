"""fit-teachers: cross-fitted logits never come from a model that trained on the segment."""

from __future__ import annotations

import numpy as np
import pytest

from egodistill import cache
from egodistill.student.sources import SourceError, resolve_teachers
from egodistill.cache.testing import SyntheticSpec, build_synthetic_cache
from egodistill.student.teachers import FitConfig, FitError, fit_head, fit_teachers, fold_assignment, load_features, predict_head

QUIET = lambda _: None  # noqa: E731


def test_folds_are_balanced_seeded_and_cover_every_sample():
    fold = fold_assignment(23, 5, seed=1)
    assert sorted(np.bincount(fold).tolist()) == [4, 4, 5, 5, 5]
    assert np.array_equal(fold, fold_assignment(23, 5, seed=1)) and not np.array_equal(fold, fold_assignment(23, 5, seed=2))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("fit") / "cache.zarr")
    spec = SyntheticSpec(segments=60, feature_dim=16, segments_per_task=10, failed={"audio": [3, 40]},
                         modalities={"rgb": ("resnet18", 3, 64, 0.5), "audio": ("resnet18", 1, 64, 0.3)})
    build_synthetic_cache(path, spec)
    cfg = FitConfig(cache=path, modalities=["rgb", "audio"], fusion=True, folds=5, epochs=4, dim=32, device="cpu")
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
    assert p.fit["folds"] == 5 and p.fit["seed"] == 0 and len(p.source_teachers) == 2 and p.backbone == "fusion_transformer"
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
    cfg = FitConfig(cache=path, modalities=["rgb"], folds=4, epochs=60, dim=32, lr=3e-3, batch_size=64, device="cpu")
    [teacher] = fit_teachers(cfg, log=QUIET)
    labels = cache.open_cache(path).segments.labels["verb"]
    cross_fitted = (teacher.logits["verb"].argmax(1) == labels).mean()
    features, present = load_features(cache.open_cache(path), [keys["rgb"]], cfg)
    every = np.arange(40)
    model = fit_head(features, present, {"verb": labels}, every, cfg, {"verb": 4}, seed=1)
    in_sample = (predict_head(model, features, present, every, cfg)["verb"].argmax(1) == labels).mean()
    assert in_sample > 0.9
    assert cross_fitted < 0.5


def test_fit_teachers_refuses_bad_requests(tmp_path):
    path = str(tmp_path / "c.zarr")
    build_synthetic_cache(path, SyntheticSpec(segments=12, feature_dim=8, unlabelled=0.0, modalities={"rgb": ("resnet18", 3, 64, 1.0)}))
    with pytest.raises(FitError, match="lower --folds") as err:
        fit_teachers(FitConfig(cache=path, modalities=["rgb"], folds=20), log=QUIET)
    assert "\n" not in str(err.value)
    with pytest.raises(FitError, match="at least 2 folds"):
        fit_teachers(FitConfig(cache=path, modalities=["rgb"], folds=1), log=QUIET)
    with pytest.raises(SourceError, match="'flow'"):
        fit_teachers(FitConfig(cache=path, modalities=["rgb", "flow"]), log=QUIET)
    unlabelled = str(tmp_path / "u.zarr")
    build_synthetic_cache(unlabelled, SyntheticSpec(segments=12, feature_dim=8, unlabelled=1.0, modalities={"rgb": ("resnet18", 3, 64, 1.0)}))
    with pytest.raises(FitError, match="no labelled 'train' segments"):
        fit_teachers(FitConfig(cache=unlabelled, modalities=["rgb"]), log=QUIET)
