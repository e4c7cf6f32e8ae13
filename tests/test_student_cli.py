"""A user's session on a cache made by `extract` from generated videos: fit-teachers, train-student, evaluate."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from egodistill import cache
from egodistill.cli import app
from egodistill.student.fit import FitConfig, fit_teachers
from egodistill.student.sources import resolve_teachers
from helpers import one_line, run_cli


@pytest.fixture
def session_cache(extracted_cache, tmp_path):
    """A private copy: fit-teachers writes into the cache, other tests share the original."""
    copy = tmp_path / "cache.zarr"
    shutil.copytree(extracted_cache, copy)
    return copy


def test_cross_fitting_on_an_extracted_cache_never_uses_a_model_trained_on_the_segment(session_cache):
    fitted = fit_teachers(FitConfig(cache=str(session_cache), modalities=["rgb", "audio"], fusion=True, folds=5, steps=20, dim=32), log=lambda _: None)
    split = cache.open_cache(session_cache).segments.split
    for teacher in fitted:
        assert (teacher.source_model[split == "train"] >= 0).all() and (teacher.source_model[split == "val"] == -1).all()
        for i, model in enumerate(teacher.source_model):
            assert i not in set(teacher.trained_on[int(model)].tolist())


def test_fit_train_and_evaluate_through_the_cli(session_cache, tmp_path):
    runner = CliRunner()
    c = str(session_cache)
    result = runner.invoke(app, ["fit-teachers", "--cache", c, "--modalities", "rgb,flow,audio", "--fusion", "--steps", "20", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "--teachers rgb,flow,audio,fusion" in result.output
    small = ["--steps", "6", "--dim", "32", "--depth", "1", "--batch-size", "4", "--lr", "1e-3", "--device", "cpu"]
    rgb_student = tmp_path / "rgb-student"
    result = runner.invoke(app, ["train-student", "--cache", c, "--inputs", "rgb", "--teachers", "rgb,flow,audio",
                                 "--weighting", "per-sample", "--temperature", "2", "--out", str(rgb_student), *small])
    assert result.exit_code == 0, result.output
    any_subset = tmp_path / "any-subset-student"
    result = runner.invoke(app, ["train-student", "--cache", c, "--inputs", "rgb,flow,audio", "--teachers", "fusion", "--mask-prob", "0.5",
                                 "--out", str(any_subset), *small])
    assert result.exit_code == 0, result.output
    assert json.loads((any_subset / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 6
    result = runner.invoke(app, ["evaluate", "--cache", c, "--run", str(any_subset), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads((any_subset / "eval-val" / "metrics.json").read_text())
    assert report["segments"] == 6 and len(report["subsets"]) == 7
    assert np.isfinite(report["subsets"][0]["metrics"]["action_top1"])
    costs = report["cost"]
    assert costs["student"]["parts"][0]["backbone"] == "test_resnet" and costs["teachers"][0]["flops"] > costs["student"]["parts"][-1]["flops"]
    assert "student[rgb+flow+audio]" in result.output
    # A second rgb teacher makes "rgb" ambiguous: the advice names the key just written, which --teachers takes.
    result = runner.invoke(app, ["fit-teachers", "--cache", c, "--modalities", "rgb", "--steps", "2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    named = " ".join(result.output.split()).split("use them with `egodistill train-student --teachers ")[1].split()[0]  # as rich wrapped it
    assert named != "rgb" and resolve_teachers(cache.open_cache(c), [named], cache.open_cache(c).segments.heads)[0] == named


def test_bad_input_is_one_line_on_stderr(extracted_cache, tmp_path):
    code, err = run_cli("train-student", "--cache", extracted_cache, "--inputs", "depth", "--out", tmp_path / "run")
    assert one_line(code, err).startswith("error: --inputs 'depth'") and not (tmp_path / "run").exists()


def test_ctrl_c_during_training_says_to_resume_with_the_flag_that_resumes(extracted_cache, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    args = ["train-student", "--cache", str(extracted_cache), "--inputs", "rgb", "--steps", "100000", "--batch-size", "4", "--out", str(out), "--device", "cpu"]
    run = subprocess.Popen([sys.executable, "-m", "egodistill", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "metrics.jsonl").exists() and run.poll() is None:
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=120) == 130
    assert run.stderr.read().strip().splitlines()[-1] == "interrupted: rerun the same command with --resume to resume"
    help_text = CliRunner().invoke(app, ["train-student", "--help"], env={"COLUMNS": "400"}).output
    from egodistill.student.schedule import MAX_SEGMENTS_SEEN

    assert f"{MAX_SEGMENTS_SEEN:,} segments seen" in help_text  # the default budget as the code computes it
