"""The demo as an experiment: its statistics (paired bootstrap, verdict rule) and `egodistill demo --small` end to end."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from egodistill.demo import stats
from egodistill.demo.protocol import PROTOCOL_VERSION, protocol_doc
from egodistill.student import metrics

ROOT = Path(__file__).resolve().parents[1]


def _logits(rng, seeds: int, clips: int, classes: int, labels: np.ndarray, skill: float) -> np.ndarray:
    """Random logits with the label's logit raised by `skill`."""
    x = rng.normal(size=(seeds, clips, classes))
    x[:, np.arange(clips), labels] += skill
    return x


def test_point_estimates_are_the_trainers_metrics_averaged_over_seeds():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 12, 300)
    logits = _logits(rng, 3, 300, 12, labels, 1.5)
    draws = stats.Draws.make(300, 3, 200, seed=1)
    got = stats.metrics(logits, labels, draws)
    assert got["top1"].value == pytest.approx(100 * np.mean([metrics.topk_accuracy(x, labels, 1) for x in logits]))
    assert got["ece"].value == pytest.approx(np.mean([metrics.ece(x, labels) for x in logits]))
    assert got["nll"].value == pytest.approx(np.mean([metrics.nll(x, labels) for x in logits]))
    assert got["brier"].value == pytest.approx(np.mean([metrics.brier(x, labels) for x in logits]))
    lo, hi = got["top1"].interval()
    assert lo < got["top1"].value < hi and len(got["top1"].draws) == 200


def test_a_draw_counts_clips_and_seeds_as_drawn():
    labels = np.array([0, 1, 2])
    correct = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])  # seed 0 gets clip 0 right; seed 1 gets all
    draws = stats.Draws(clips=np.array([[3.0, 0, 0], [0, 3.0, 0]]), seeds=np.array([[2.0, 0], [1.0, 1.0]]))
    e = stats.per_clip_mean(correct, draws)
    assert e.value == pytest.approx(4 / 6)
    np.testing.assert_allclose(e.draws, [1.0, 0.5])  # draw 1: clip 0 three times, seed 0 twice; draw 2: clip 1, both seeds
    logits = np.eye(3)[None].repeat(2, 0) * 10
    assert stats.accuracy(logits, labels, draws).value == pytest.approx(100)


def test_paired_differences_cancel_what_two_arms_share():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 12, 600)
    shared = _logits(rng, 5, 600, 12, labels, 1.0)
    better = shared.copy()
    better[:, :60, :] = 0
    better[:, np.arange(60), labels[:60]] = 10  # the same model, plus 60 clips (10 points) made right
    draws = stats.Draws.make(600, 5, 1000, seed=3)
    a, b = stats.accuracy(better, labels, draws), stats.accuracy(shared, labels, draws)
    diff = a - b
    lo, hi = diff.interval()
    assert 0 < lo <= diff.value <= hi <= 10
    unpaired = np.percentile(a.draws - np.roll(b.draws, 1), [2.5, 97.5])
    assert hi - lo < (unpaired[1] - unpaired[0]) / 1.5  # pairing removes the clips' shared difficulty
    assert stats.verdict(diff, 3.0) == stats.HOLDS
    same = b - b
    assert same.interval() == (0.0, 0.0) and stats.verdict(same, 3.0) == stats.DOES_NOT_HOLD


@pytest.mark.parametrize("draws, verdict", [
    (np.linspace(0.5, 6, 101), stats.HOLDS),            # above 0: holds, however small
    (np.linspace(-2, 2.5, 101), stats.DOES_NOT_HOLD),   # excludes the margin (3) without being above 0
    (np.linspace(-6, -1, 101), stats.DOES_NOT_HOLD),    # the opposite
    (np.linspace(-1, 5, 101), stats.INCONCLUSIVE),      # contains 0 and the margin
])
def test_verdict_rule(draws, verdict):
    assert stats.verdict(stats.Estimate(float(np.median(draws)), draws), 3.0) == verdict


def test_parts_combine_and_worst_case_is_taken_draw_by_draw():
    assert stats.combine([stats.HOLDS, stats.HOLDS]) == stats.HOLDS
    assert stats.combine([stats.HOLDS, stats.INCONCLUSIVE]) == stats.INCONCLUSIVE
    assert stats.combine([stats.INCONCLUSIVE, stats.DOES_NOT_HOLD]) == stats.DOES_NOT_HOLD
    a, b = stats.Estimate(1.0, np.array([1.0, 5.0])), stats.Estimate(2.0, np.array([3.0, 2.0]))
    worst = stats.min_of([a, b])
    assert worst.value == 1.0 and list(worst.draws) == [1.0, 2.0]
    assert stats.mean_of([a, b]).value == 1.5


def test_protocol_doc_is_the_versioned_file():
    doc = protocol_doc()
    assert doc is not None and f"**Protocol version {PROTOCOL_VERSION}**" in doc.read_text()


def test_small_demo_end_to_end_and_the_report(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "demo-run"
    result = subprocess.run([sys.executable, "-m", "egodistill", "demo", "--out", str(out), "--small", "--workers", "0"],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "NOT the protocol" in result.stdout and "P1.1 " in result.stdout and "P2.4 " in result.stdout and "U1 " in result.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"]["version"] == PROTOCOL_VERSION and not results["protocol"]["followed"]
    assert results["data"]["generator_version"] >= 1 and results["seeds"] == [0, 1]
    arms = {"rgb-gt", "rgb-kd-uniform", "rgb-kd-per-sample", "rgb-kd-dataset", "mm-unmasked", "mm-masked", "mm-masked-gt", "rgb-kd-uniform-unl"}
    assert set(results["students"]) == arms
    for arm in arms:
        metrics_ = results["students"][arm]["metrics"]
        assert all(metrics_[m]["lo"] <= metrics_[m]["hi"] for m in ("top1", "ece", "nll", "brier"))
        assert metrics_["top1"]["lo"] <= metrics_["top1"]["estimate"] <= metrics_["top1"]["hi"]  # binned ECE's draws are biased up: no such check
    assert list(results["students"]["rgb-gt"]["frames"]) == ["8", "4", "2", "1"]
    assert len(results["students"]["mm-masked"]["subsets"]) == 7  # every non-empty subset of rgb, flow, audio
    assert {"rgb", "flow", "audio", "fusion", "ensemble-uniform", "ensemble-dataset"} <= set(results["teachers"])
    assert len(results["gate"]["tests"]) == 5 and isinstance(results["gate"]["passed"], bool)
    primary = {c["id"]: c for c in results["claims"] if c["primary"]}
    assert {"P1.1", "P1.2", "P1", "P1.3", "P2.1", "P2.2", "P2.3", "P2.4", "U1"} <= set(primary)
    # Version 4: one window per unlabelled clip, appended and extracted, and only the new arm trains on them.
    assert results["data"]["unlabelled"]["clips"] == results["data"]["unlabelled"]["windows"] == 24
    assert {"rgb (unlabelled)", "flow (unlabelled)", "audio (unlabelled)"} <= set(results["timings"]["extract"])
    for arm in ("rgb-kd-uniform", "rgb-kd-uniform-unl"):
        record = json.loads((out / "runs" / arm / "seed0" / "config.json").read_text())
        assert record.get("unlabelled_segments") == (24 if arm.endswith("-unl") else None)
    for claim in results["claims"]:
        assert claim["verdict"] in (stats.HOLDS, stats.DOES_NOT_HOLD, stats.INCONCLUSIVE)
        if "improvement" in claim:
            assert claim["improvement"]["lo"] <= claim["improvement"]["hi"]
    assert primary["P2.4"]["flops_ratio"] > 0
    for stage in ("generate", "generate_unlabelled", "windows", "extract", "fit_teachers_mean", "student_run_mean", "seeds_wall", "statistics", "report", "total"):
        assert stage in results["timings"]
    with np.load(out / "predictions.npz") as saved:
        assert saved["seed1/students/rgb-gt/frames8"].shape == (24, 12)

    html = (out / "report.html").read_text()
    assert "Not the protocol" in html and (protocol_doc() is None or 'href="demo-protocol.md"' in html)
    assert f"version {PROTOCOL_VERSION}" in html and "95 %" in html
    images = html.split('src="data:image/png;base64,')[1:]
    assert len(images) >= 6
    for image in images:
        assert base64.b64decode(image.split('"')[0]).startswith(b"\x89PNG")
    _shows_in_a_browser(out / "report.html", tmp_path)


def _shows_in_a_browser(report: Path, tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian's chromium is not installed: the report was checked without a browser")
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,7000",
                    f"--screenshot={shot}", report.as_uri()], capture_output=True, timeout=120)
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)
    colourful = np.abs(pixels[..., 0] - pixels[..., 2]) > 0.15  # chart bars are coloured; text and page are grey
    assert colourful.mean() > 0.005, "the screenshot shows no chart"


def test_end_to_end_claims_compare_the_distilled_network_with_the_same_network_on_ground_truth():
    """Protocol v3's E1 claims: a distilled end-to-end student clearly better (and calibrated) holds, the
    representation claim E0 compares it with the frozen-feature head; a failed gate vetoes E1, not E0."""
    from egodistill.demo.claims import _end_to_end

    rng = np.random.default_rng(4)
    labels = rng.integers(0, 12, 400)
    draws = stats.Draws.make(400, 5, 300, seed=5)
    weak = _logits(rng, 5, 400, 12, labels, 1.0) * 4          # overconfident, often wrong
    strong = _logits(rng, 5, 400, 12, labels, 3.0)            # right more often, about calibrated
    arm = lambda x: {f"frames{k}": stats.metrics(x, labels, draws) for k in (8, 4, 2, 1)}
    e = {"e2e-gt": arm(weak), "e2e-kd-uniform": arm(strong), "rgb-gt": arm(weak), "rgb-kd-uniform": arm(weak)}
    claims = {c["id"]: c for c in _end_to_end(e, {}, None, True)}
    assert claims["E1.1"]["verdict"] == stats.HOLDS and claims["E1.2"]["verdict"] == stats.HOLDS and claims["E1"]["verdict"] == stats.HOLDS
    assert claims["E1.1"]["primary"] and not claims["E0"]["primary"] and "P2.4k" not in claims  # no cost: no P2.4k
    assert claims["E0"]["verdict"] == stats.DOES_NOT_HOLD  # e2e-gt and rgb-gt are the same logits here
    vetoed = {c["id"]: c for c in _end_to_end(e, {}, None, False)}
    assert vetoed["E1.1"]["verdict"] == stats.INCONCLUSIVE and vetoed["E1.1"]["gate_vetoed"] and vetoed["E0"]["verdict"] == stats.DOES_NOT_HOLD
