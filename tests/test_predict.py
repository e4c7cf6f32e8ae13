"""`egodistill predict` (issue 16 §1): scores for every head and segment of a split or of new videos, and the
EPIC-KITCHENS-100 submission and evaluation files, read back by small readers written from the public
description (epic-kitchens/C1-Action-Recognition: create_submission.py, utils/challenge.py, utils/results.py)."""

from __future__ import annotations

import json
import pickle
import shutil
import zipfile

import numpy as np
import pytest
import torch

from egodistill import cache
from egodistill.student.evaluate import EvalConfig, evaluate
from egodistill.student.train import TrainConfig, train
from egodistill.testing import SyntheticSpec, build_synthetic_cache
from tests.helpers import egodistill, in_process_cli


@pytest.fixture
def cli(capsys):
    return in_process_cli(capsys)


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as strict readers (browsers, jq) do."""
    return json.loads(text, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(f"not strict JSON: {name}")))


def read_epic_submission(text: str, narration_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The challenge's JSON as its description has it: version, challenge, sls_pt/tl/td in 0..5 and, per
    narration id, a score for every verb class "0".."96" and noun class "0".."299"."""
    doc = strict_json(text)
    assert set(doc) == {"version", "challenge", "sls_pt", "sls_tl", "sls_td", "results"}
    assert doc["version"] == "0.2" and doc["challenge"] == "action_recognition"
    assert all(isinstance(doc[k], int) and 0 <= doc[k] <= 5 for k in ("sls_pt", "sls_tl", "sls_td"))
    assert sorted(doc["results"]) == sorted(narration_ids)
    verbs, nouns = [], []
    for i in narration_ids:
        entry = doc["results"][i]
        assert set(entry) == {"verb", "noun"}
        assert list(entry["verb"]) == [str(c) for c in range(97)] and list(entry["noun"]) == [str(c) for c in range(300)]
        verbs.append([entry["verb"][str(c)] for c in range(97)])
        nouns.append([entry["noun"][str(c)] for c in range(300)])
    return np.array(verbs), np.array(nouns)


@pytest.fixture(scope="module")
def epic_run(tmp_path_factory):
    """A student with EPIC's heads on a synthetic cache whose test split is unlabelled."""
    folder = tmp_path_factory.mktemp("predict")
    location = str(folder / "epic.zarr")
    spec = SyntheticSpec(segments=64, heads={"verb": 97, "noun": 300}, splits={"test": 0.25, "train": 0.5, "val": 0.25}, unlabelled=1.0,
                         modalities={"rgb": ("resnet18", 3, 224, 2.0)}, feature_dim=16, segments_per_task=8)
    build_synthetic_cache(location, spec)
    run = str(folder / "run")
    train(TrainConfig(cache=location, inputs=["rgb"], out=run, steps=30, batch_size=16, device="cpu"), log=lambda _: None)
    return location, run


def test_scores_for_an_unlabelled_test_split(epic_run, tmp_path):
    location, run = epic_run
    table = cache.open_cache(location).segments
    assert (table.labels["verb"][table.split == "test"] == -1).all()
    egodistill("predict", "--run", run, "--cache", location, "--out", tmp_path / "test.npz", "--device", "cpu", check=0)
    data = np.load(tmp_path / "test.npz")  # no pickles: strings are a fixed-width array
    ids = table.ids[table.split == "test"]
    assert list(data["segment_id"]) == list(ids) and set(data["split"]) == {"test"}
    assert data["scores_verb"].shape == (len(ids), 97) and data["scores_noun"].shape == (len(ids), 300)
    assert np.isfinite(data["scores_verb"]).all()
    doc = strict_json((tmp_path / "test.json").read_text())
    assert doc["heads"] == {"verb": 97, "noun": 300} and [s["id"] for s in doc["segments"]] == list(ids)
    assert np.allclose([s["scores"]["noun"] for s in doc["segments"]], data["scores_noun"])


def test_scores_on_validation_agree_with_evaluate(epic_run, tmp_path, cli):
    location, run = epic_run
    cli("predict", "--run", run, "--cache", location, "--split", "val", "--out", tmp_path / "val.npz", "--device", "cpu")
    data = np.load(tmp_path / "val.npz")
    table = cache.open_cache(location).segments
    index = {s: i for i, s in enumerate(table.ids)}
    labels = table.labels["verb"][[index[s] for s in data["segment_id"]]]
    top1 = float((data["scores_verb"].argmax(axis=1) == labels).mean())
    result = evaluate(EvalConfig(cache=location, run=run, split="val", device="cpu", cost=False))
    assert top1 == pytest.approx(result["subsets"][0]["metrics"]["verb_top1"])


def test_epic_100_submission_json_and_zip(epic_run, tmp_path, cli):
    location, run = epic_run
    cli("predict", "--run", run, "--cache", location, "--out", tmp_path / "scores.npz", "--device", "cpu")
    scores = np.load(tmp_path / "scores.npz")
    ids = list(scores["segment_id"])
    cli("predict", "--run", run, "--cache", location, "--format", "epic-100", "--sls-pt", "1", "--out", tmp_path / "test.json",
               "--device", "cpu")
    verbs, nouns = read_epic_submission((tmp_path / "test.json").read_text(), ids)
    assert np.allclose(verbs, scores["scores_verb"]) and np.allclose(nouns, scores["scores_noun"])
    assert strict_json((tmp_path / "test.json").read_text())["sls_pt"] == 1
    cli("predict", "--run", run, "--cache", location, "--format", "epic-100", "--out", tmp_path / "submission.zip", "--device", "cpu")
    with zipfile.ZipFile(tmp_path / "submission.zip") as z:
        assert z.namelist() == ["test.json"]
        read_epic_submission(z.read("test.json").decode(), ids)


def test_epic_100_eval_results_file(epic_run, tmp_path, cli):
    location, run = epic_run
    cli("predict", "--run", run, "--cache", location, "--split", "val", "--format", "epic-100-eval", "--out", tmp_path / "val.pkl",
               "--device", "cpu")
    with open(tmp_path / "val.pkl", "rb") as f:  # the dict layout evaluate.py's load_results takes from a .pkl
        results = pickle.load(f)
    table = cache.open_cache(location).segments
    n = int((table.split == "val").sum())
    assert set(results) == {"verb_output", "noun_output", "narration_id"}
    assert results["verb_output"].shape == (n, 97) and results["noun_output"].shape == (n, 300)
    assert results["verb_output"].dtype == np.float32 and len(results["narration_id"]) == n
    assert list(results["narration_id"]) == list(table.ids[table.split == "val"])


def test_bad_predict_inputs_are_one_line_and_write_nothing(epic_run, tmp_path, cli):
    location, run = epic_run
    cases = [
        (["--cache", location, "--out", tmp_path / "missing" / "x.npz"], "does not exist"),
        (["--cache", location, "--format", "epic-100-eval", "--out", tmp_path / "x.json"], "writes a .pkl file"),
        (["--cache", location, "--split", "nope", "--out", tmp_path / "x.npz"], "no 'nope' segments"),
        (["--out", tmp_path / "x.npz"], "give either --cache"),
    ]
    other = str(tmp_path / "other.zarr")  # a cache without the student's input teacher
    build_synthetic_cache(other, SyntheticSpec(segments=16, heads={"verb": 97, "noun": 300}, modalities={"flow": ("resnet18", 2, 224, 1.0)}, feature_dim=16))
    cases.append((["--cache", other, "--out", tmp_path / "x.npz"], "lacks the student's input teacher"))
    for args, expected in cases:
        assert expected in cli("predict", "--run", run, *args, "--device", "cpu", fails=True), args
    assert not list(tmp_path.glob("x.*"))


def test_a_format_whose_heads_do_not_match_the_run_is_one_line(tmp_path, cli):
    location = str(tmp_path / "small.zarr")
    build_synthetic_cache(location, SyntheticSpec(segments=32, modalities={"rgb": ("resnet18", 3, 224, 1.0)}, feature_dim=8))
    run = str(tmp_path / "run")
    train(TrainConfig(cache=location, inputs=["rgb"], out=run, steps=5, batch_size=8, device="cpu"), log=lambda _: None)
    line = cli("predict", "--run", run, "--cache", location, "--split", "val", "--format", "epic-100",
                                     "--out", tmp_path / "s.json", "--device", "cpu", fails=True)
    assert "needs heads verb (97 classes) and noun (300)" in line and "verb (4)" in line


# --- new videos: extracted as the student's input teacher was --------------------------------------------


def test_new_videos_are_extracted_with_the_recorded_weights_and_scored(tmp_path, media_dir, cli):
    from egodistill.extract.run import ExtractConfig, run_extraction

    videos = tmp_path / "videos"
    shutil.copytree(media_dir, videos)
    rows = ["segment_id,video,start_sec,stop_sec,split,label:action:3"]
    rows += [f"s{i},{v},{a},{a + 0.8},train,{i % 3}" for i, (v, a) in enumerate([(v, a) for v in ("h264_aac.mp4", "vp9_opus.webm") for a in (0.0, 0.5, 1.0)])]
    (tmp_path / "clips_train.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "new_clips.csv").write_text("segment_id,video,start_sec,stop_sec,split\nn0,vp9_opus.webm,0.2,1.2,test\nn1,h264_aac.mp4,0.1,1.9,test\n")
    import timm

    weights = tmp_path / "backbone.pt"
    torch.manual_seed(3)
    torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), weights)
    training = str(tmp_path / "train.zarr")
    run_extraction(ExtractConfig(manifest=str(tmp_path / "clips_train.csv"), videos=str(videos), cache=training, backbone="test_resnet", weights=str(weights),
                                 frames=4, workers=0, device="cpu", precision="fp32"), log=lambda _: None)
    run = str(tmp_path / "run")
    train(TrainConfig(cache=training, inputs=["rgb"], out=run, steps=5, batch_size=4, frames=4, device="cpu"), log=lambda _: None)

    other = tmp_path / "other.pt"
    torch.save({k: v + 1 for k, v in torch.load(weights).items()}, other)
    new = ["--manifest", tmp_path / "new_clips.csv", "--videos", videos, "--device", "cpu"]
    line = cli("predict", "--run", run, *new, "--weights", other, "--out", tmp_path / "new.npz", fails=True)
    from egodistill.common import file_sha256

    assert file_sha256(weights) in line and file_sha256(other) in line
    assert "give that file again with --weights" in cli("predict", "--run", run, *new, "--out", tmp_path / "new.npz", fails=True)
    assert not (tmp_path / "new.npz").exists()

    cli("predict", "--run", run, *new, "--weights", weights, "--out", tmp_path / "new.npz")
    data = np.load(tmp_path / "new.npz")
    assert list(data["segment_id"]) == ["n0", "n1"] and data["scores_action"].shape == (2, 3)
    # The new cache's teacher is the training teacher: same key, same identity.
    [key] = cache.open_cache(training).teacher_keys()
    assert cache.open_cache(tmp_path / "new.cache.zarr").teacher_keys() == [key]

    (tmp_path / "gone.csv").write_text("segment_id,video,start_sec,stop_sec,split\ng0,nowhere.mp4,0,1,test\n")
    line = cli("predict", "--run", run, "--manifest", tmp_path / "gone.csv", "--videos", videos, "--weights", weights,
                                     "--out", tmp_path / "gone.npz", "--device", "cpu", fails=True)
    assert "nowhere.mp4" in line and not (tmp_path / "gone.cache.zarr").exists()


def test_a_weights_file_for_a_random_init_teacher_is_refused_by_predict_and_export(tmp_path, media_dir, cli):
    """A teacher extracted from a random init (its seed) is rebuilt from that seed: a --weights file would be
    silently unused, so predict and export refuse it, before the manifest is read."""
    from egodistill.extract.run import ExtractConfig, run_extraction

    (tmp_path / "clips_train.csv").write_text("segment_id,video,start_sec,stop_sec,split,label:action:2\na,h264_aac.mp4,0,1,train,0\nb,h264_aac.mp4,1,2,train,1\n")
    training = str(tmp_path / "train.zarr")
    run_extraction(ExtractConfig(manifest=str(tmp_path / "clips_train.csv"), videos=str(media_dir), cache=training, backbone="test_resnet", seed=5,
                                 frames=2, workers=0, device="cpu", precision="fp32"), log=lambda _: None)
    run = str(tmp_path / "run")
    train(TrainConfig(cache=training, inputs=["rgb"], out=run, steps=2, batch_size=2, frames=2, device="cpu"), log=lambda _: None)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"garbage\n")
    [key] = cache.open_cache(training).teacher_keys()
    refusal = f"teacher {key} was extracted with random-init weights (seed 5)"
    line = cli("predict", "--run", run, "--manifest", tmp_path / "never-read.csv", "--videos", media_dir, "--weights", junk,
               "--out", tmp_path / "x.npz", "--device", "cpu", fails=True)
    assert refusal in line and "drop --weights" in line
    line = cli("export", "--run", run, "--weights", junk, "--out", tmp_path / "m.pt", fails=True)
    assert refusal in line and "drop --weights" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clips_train.csv", "junk.pth", "run", "train.zarr"]


def test_recorded_settings_give_the_modality_options_back():
    """predict re-extracts new videos with each teacher's options, read back from its recorded settings."""
    from egodistill.extract.modalities import get_modality

    data_cfg = {"input_size": (3, 32, 32), "crop_pct": 0.875, "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    for name, options in (("frames", {"frame_size": 40}), ("flow", {"flow": "dis", "flow_stack": 3}), ("audio", {"audio_window": 0.4}), ("rgb", {})):
        modality = get_modality(name)
        settings = modality.settings(modality.resolve_options(options), data_cfg)
        assert modality.recorded_options(settings) == options
        assert modality.settings(modality.resolve_options(modality.recorded_options(settings)), data_cfg) == settings


def test_ssv2_lines_name_the_top_class_and_need_the_class_names(tmp_path, cli):
    from egodistill.student.predict import PredictConfig, Predictions, write_predictions

    location = str(tmp_path / "ssv2.zarr")
    build_synthetic_cache(location, SyntheticSpec(segments=32, heads={"action": 174}, modalities={"rgb": ("resnet18", 3, 224, 1.0)}, feature_dim=8))
    run = str(tmp_path / "run")
    train(TrainConfig(cache=location, inputs=["rgb"], out=run, steps=5, batch_size=8, device="cpu"), log=lambda _: None)
    line = cli("predict", "--run", run, "--cache", location, "--split", "val", "--format", "ssv2", "--out", tmp_path / "s.csv", "--device", "cpu", fails=True)
    assert "needs the class names" in line and not (tmp_path / "s.csv").exists()
    scores = np.zeros((2, 174), dtype=np.float32)
    scores[0, 7], scores[1, 0] = 1.0, 1.0
    result = Predictions(ids=np.array(["101", "102"]), split=np.array(["test", "test"]), scores={"action": scores}, unscored=[], cache=location, files=[])
    names = [f"class {i}" for i in range(174)]
    [path] = write_predictions(result, PredictConfig(run=run, out=str(tmp_path / "s.csv"), format="ssv2"), tmp_path / "s.csv", {}, names)
    assert [line.split(";") for line in path.read_text().splitlines()] == [["101", "class 7"], ["102", "class 0"]]
