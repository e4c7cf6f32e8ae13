"""`egodistill demo --small` end to end: generated data, every stage, results.json and the HTML report."""

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

from egodistill.extract.decode import open_video, read_audio_track
from egodistill.demo.data import DemoSpec, class_names, generate_demo_data, render_clip

ROOT = Path(__file__).resolve().parents[1]


def test_generator_makes_decodable_clips_with_sound_and_balanced_labels(tmp_path):
    spec = DemoSpec(clips_train=12, clips_val=6, seconds=1.0)
    manifest = generate_demo_data(tmp_path, spec, workers=2)
    rows = [line.split(",") for line in manifest.read_text().splitlines()[1:]]
    assert len(rows) == 18 and {r[4] for r in rows} == {"train", "val"}
    assert {int(r[5]) for r in rows if r[4] == "train"} == set(range(len(class_names(spec))))
    for row in rows[:3]:
        video = open_video(tmp_path / "videos" / row[1])
        assert video.num_frames == spec.fps * spec.seconds and video.fps == spec.fps
        audio = read_audio_track(tmp_path / "videos" / row[1], sample_rate=spec.sample_rate)
        assert abs(len(audio) / spec.sample_rate - spec.seconds) < 0.1 and np.abs(audio).max() > 0.01
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.mp4")}
    assert generate_demo_data(tmp_path, spec) == manifest
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.mp4")} == mtimes  # reused, not rewritten


def test_generator_is_deterministic_from_its_seed():
    frames, audio = render_clip(DemoSpec(seed=0), 3, 5)
    again, audio_again = render_clip(DemoSpec(seed=0), 3, 5)
    other, _ = render_clip(DemoSpec(seed=1), 3, 5)
    np.testing.assert_array_equal(frames, again)
    np.testing.assert_array_equal(audio, audio_again)
    assert not np.array_equal(frames, other)


def test_small_demo_end_to_end_and_the_report(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "demo-run"
    result = subprocess.run([sys.executable, "-m", "egodistill", "demo", "--out", str(out), "--small", "--workers", "0"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "paper1" in result.stdout and "paper2" in result.stdout
    results = json.loads((out / "results.json").read_text())
    for field in ("data", "backbones", "seeds", "timings", "students", "teachers", "claims", "explanations", "commands", "ratio_student_run_over_extraction"):
        assert field in results
    assert len(results["seeds"]) == 3
    assert set(results["students"]) == {"rgb-gt", "rgb-kd-uniform", "rgb-kd-per-sample", "rgb-kd-dataset", "mm-unmasked", "mm-masked"}
    for student in results["students"].values():
        assert len(student["top1"]["values"]) == 3 and 0 <= student["top1"]["mean"] <= 100
    assert len(results["students"]["mm-masked"]["subsets"]) == 7  # every non-empty subset of rgb, flow, audio
    assert {"holds", "ground_truth", "distilled"} <= set(results["claims"]["paper1"])
    assert {"holds_mean", "holds_worst", "drops"} <= set(results["claims"]["paper2"])
    assert set(results["teachers"]) and all(k.split("-")[0] in {"rgb", "flow", "audio", "fusion"} for k in results["teachers"])

    html = (out / "report.html").read_text()
    images = html.split('src="data:image/png;base64,')[1:]
    assert len(images) >= 4
    for image in images:
        assert base64.b64decode(image.split('"')[0]).startswith(b"\x89PNG")
    _shows_in_a_browser(out / "report.html", tmp_path)


def _shows_in_a_browser(report: Path, tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian's chromium is not installed: the report was checked without a browser")
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2400",
                    f"--screenshot={shot}", report.as_uri()], capture_output=True, timeout=120)
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)
    colourful = np.abs(pixels[..., 0] - pixels[..., 2]) > 0.15  # chart bars are coloured; text and page are grey
    assert colourful.mean() > 0.005, "the screenshot shows no chart"
