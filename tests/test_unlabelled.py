"""Distillation on unlabelled clips (issue 16 §3), on real encoded video: `manifest windows` over whole videos,
the windows appended to a labelled cache and extracted, teacher logits for them from `fit-teachers` (every
existing logit unchanged, byte for byte), and `train-student --unlabelled-split` distilling on them with their
labels ignored. The refusals on the way are the states a user meets in that order."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from egodistill import cache
from egodistill import testing as media
from egodistill.student.train import TrainConfig, setup
from tests.helpers import in_process_cli, teacher_key_of, write_manifest

pytestmark = pytest.mark.skipif(not media.have_ffmpeg(), reason="ffmpeg encodes the test videos")

EXTRACT = ("--modality", "rgb", "--backbone", "test_resnet", "--frames", "2", "--workers", "0", "--device", "cpu")
FIT = ("--modalities", "rgb", "--folds", "2", "--steps", "20", "--seed", "3", "--device", "cpu")
CLIPS = 6  # labelled clips, 2 s each, one labelled second each: [0, 1) of clip i


@pytest.fixture
def cli(capsys):
    return in_process_cli(capsys)


@pytest.fixture
def videos(tmp_path):
    folder = tmp_path / "videos"
    for i in range(CLIPS):
        media.make_video(folder / f"clip{i}.mp4", seconds=2.0, fps=8, size=(64, 48), seed=i)
    media.make_video(folder / "more" / "kitchen.mp4", seconds=2.0, fps=8, size=(64, 48), seed=9)  # no labelled segment at all
    labelled = write_manifest(tmp_path / "segments.csv", [(f"c{i}", f"clip{i}.mp4", 0, 1, "train" if i < 4 else "val", i % 2) for i in range(CLIPS)],
                              heads=["action"])
    return folder, labelled


def _logits(location, key: str) -> np.ndarray:
    return cache.open_cache(location).teacher(key).read_logits("action")


def test_unlabelled_windows_from_manifest_to_a_distilled_student(tmp_path, videos, cli):
    folder, labelled = videos
    location = tmp_path / "c.zarr"
    windows = tmp_path / "windows.csv"
    cli("extract", "--manifest", labelled, "--videos", folder, "--cache", location, *EXTRACT)
    rgb = teacher_key_of(location, "rgb")
    cli("fit-teachers", "--cache", location, *FIT)
    [fitted] = [t.key for t in cache.open_cache(location).teachers() if t.key != rgb]
    without = _logits(location, fitted)
    assert without.shape == (CLIPS, 2) and np.isfinite(without).all()

    cli("manifest", "windows", "--videos", folder, "--window", "1", "--stride", "1", "--exclude", labelled, "--split", "unlabelled", "--out", windows)
    rows = list(csv.DictReader(windows.open()))
    # Each clip keeps [1, 2) (its labelled second is excluded); kitchen.mp4 gives both of its seconds.
    assert sorted((r["video"], float(r["start_sec"])) for r in rows) == sorted([(f"clip{i}.mp4", 1.0) for i in range(CLIPS)] + [("more/kitchen.mp4", 0.0), ("more/kitchen.mp4", 1.0)])
    train = ["train-student", "--cache", location, "--inputs", "rgb", "--teachers", "rgb", "--unlabelled-split", "unlabelled",
             "--steps", "6", "--batch-size", "4", "--device", "cpu"]

    cli("cache", "init", "--manifest", windows, "--cache", location)  # appended, not extracted yet
    assert "none of the 8 'unlabelled' segments has features of" in cli(*train, "--out", tmp_path / "never", fails=True)
    cli("extract", "--manifest", windows, "--videos", folder, "--cache", location, *EXTRACT)  # the same teacher fills in the new segments
    assert "the teachers have no logits for the 8 'unlabelled' segments" in cli(*train, "--out", tmp_path / "never", fails=True)
    assert not (tmp_path / "never").exists()

    cli("fit-teachers", "--cache", location, *FIT)
    assert {t.key for t in cache.open_cache(location).teachers()} == {rgb, fitted}  # same keys: the windows change no setting
    with_windows = _logits(location, fitted)
    assert with_windows.shape == (CLIPS + 8, 2) and np.isfinite(with_windows).all()
    assert with_windows[:CLIPS].tobytes() == without.tobytes()  # labelled training segments alone fix folds, statistics and models

    run = tmp_path / "run"
    cli(*train, "--out", run)
    record = json.loads((run / "config.json").read_text())
    assert record["unlabelled_segments"] == 8 and record["config"]["unlabelled_split"] == "unlabelled"
    s = setup(TrainConfig(cache=str(location), inputs=["rgb"], teachers=["rgb"], unlabelled_split="unlabelled", device="cpu"))
    table = s.table
    assert list(s.unlabelled) == list(np.flatnonzero(table.split == "unlabelled"))
    assert sorted(s.train_segments) == sorted([*np.flatnonzero(table.split == "train"), *s.unlabelled])
    assert (s.labels()["action"][s.unlabelled] == -1).all() and (table.labels["action"][s.unlabelled] == -1).all()

    # A labelled split named as unlabelled: its labels are ignored, not learned from.
    s = setup(TrainConfig(cache=str(location), inputs=["rgb"], teachers=["rgb"], unlabelled_split="val", device="cpu"))
    val = np.flatnonzero(table.split == "val")
    assert (table.labels["action"][val] >= 0).all() and (s.labels()["action"][val] == -1).all() and set(val) <= set(s.train_segments)
    assert (s.labels()["action"][table.split == "train"] == table.labels["action"][table.split == "train"]).all()

    # --holdout: windows of a held-out video would carry its labels through the all-train teacher: they stay out.
    s = setup(TrainConfig(cache=str(location), inputs=["rgb"], teachers=["rgb"], unlabelled_split="unlabelled", holdout=0.3, device="cpu"))
    held_videos = set(table.videos[s.holdout_segments])
    assert held_videos and not held_videos & set(table.videos[s.unlabelled])
    assert "more/kitchen.mp4" in set(table.videos[s.unlabelled])
