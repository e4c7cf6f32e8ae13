"""The `egodistill extract` command as a user runs it: exit codes, one-line errors, kill and resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from egodistill import cache
from helpers import ROOT, egodistill, one_line_error

@pytest.fixture
def videos(tmp_path, media_dir):
    folder = tmp_path / "videos"
    shutil.copytree(media_dir, folder)
    return folder


def manifest(path: Path, rows: list[str], header="segment_id,video,start_sec,stop_sec,split,label:action") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def base_args(tmp_path, videos, csv, *extra):
    return ["extract", "--manifest", csv, "--videos", videos, "--cache", tmp_path / "c.zarr", "--backbone", "test_resnet",
            "--frames", "2", "--workers", "0", "--device", "cpu", "--precision", "fp32", *extra]


def test_extract_then_info_through_the_cli(tmp_path, videos):
    csv = manifest(tmp_path / "m.csv", ["a,h264_aac.mp4,0,1,train,0", "b,vp9_opus.webm,0,2,val,1", "c,empty.mp4,0,1,train,1"])
    result = egodistill(*base_args(tmp_path, videos, csv), check=3)  # 3: finished, but a segment failed
    assert "failed" in result.stdout and "empty" in result.stdout
    info = json.loads(egodistill("cache", "info", tmp_path / "c.zarr", "--json", check=0).stdout)
    [teacher] = info["teachers"]
    assert info["segments"]["count"] == 3 and info["segments"]["heads"] == {"action": 2}
    assert (teacher["segments_done"], teacher["segments_failed"], teacher["segments_pending"]) == (2, 1, 0)
    assert teacher["arrays"]["features"]["shape"] == [6, 96] and teacher["provenance"]["weights"] == "random-init:0"
    assert teacher["failures"][0]["id"] == "c"
    assert "rgb" in egodistill("cache", "info", tmp_path / "c.zarr", check=0).stdout


def test_dry_run_reports_missing_videos_and_writes_nothing(tmp_path, videos):
    csv = manifest(tmp_path / "m.csv", ["a,h264_aac.mp4,0,1,train,0", "b,gone.mp4,0,2,val,1"])
    result = egodistill(*base_args(tmp_path, videos, csv, "--dry-run"), check=0)
    assert "missing videos (1): gone.mp4" in result.stdout and "4 rows" in result.stdout
    assert not (tmp_path / "c.zarr").exists()


@pytest.fixture(scope="module")
def finished(tmp_path_factory, media_dir):
    """A cache that one successful run wrote; each bad-input test gets a copy and must leave it as it was."""
    tmp_path = tmp_path_factory.mktemp("finished")
    csv = manifest(tmp_path / "m.csv", ["a,h264_aac.mp4,0,1,train,0", "b,h264_aac.mp4,1,2,val,1"])
    egodistill(*base_args(tmp_path, media_dir, csv), check=0)
    return tmp_path / "c.zarr"


def test_dry_run_on_a_cache_holding_the_teacher_says_what_the_run_will_do(tmp_path, videos, finished):
    """The dry run of a teacher the cache holds tells its tasks left to run, as the run itself then does, writing nothing."""
    shutil.copytree(finished, tmp_path / "c.zarr")
    [key] = cache.open_cache(tmp_path / "c.zarr").teacher_keys()
    csv = manifest(tmp_path / "m.csv", ["a,h264_aac.mp4,0,1,train,0", "b,h264_aac.mp4,1,2,val,1"])
    more = manifest(tmp_path / "more.csv", ["c,vp9_opus.webm,0,1,test,0"])
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "c.zarr").rglob("*") if p.is_file()}
    said = lambda *extra: " ".join(egodistill(*base_args(tmp_path, videos, csv, *extra), check=0).stdout.split())  # noqa: E731
    assert f"teacher {key} exists: 0 of 1 tasks to run (2 of 2 segments done" in said("--dry-run")
    assert "exists" not in said("--dry-run", "--seed", "1") and "1 tasks of" in said("--dry-run", "--seed", "1")  # another teacher: a fresh plan
    dry = said("--manifest", more, "--dry-run")
    assert f"teacher {key} exists: 1 of 2 tasks to run (2 of 3 segments done" in dry, dry
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "c.zarr").rglob("*") if p.is_file()} == before
    assert "resuming, 1 of 2 tasks to run" in said("--manifest", more)


@pytest.mark.parametrize("problem, extra, expected", [
    ("unknown backbone", ["--backbone", "resnet_does_not_exist"], "unknown backbone"),
    ("weights that do not fit", ["--weights", "WEIGHTS"], "do not fit"),
    ("class-count mismatch", ["--head", "HEAD"], "classes"),
    ("missing manifest", ["--manifest", "nowhere.csv"], "nowhere.csv"),
    ("cache not writable", ["--cache", "/proc/c.zarr"], "not writable"),
    ("both samplings", ["--fps", "2"], "--frames or --fps"),
])
def test_bad_input_is_one_line_and_nothing_is_lost(tmp_path, videos, finished, problem, extra, expected):
    csv = manifest(tmp_path / "m.csv", ["a,h264_aac.mp4,0,1,train,0", "b,h264_aac.mp4,1,2,val,1"])
    shutil.copytree(finished, tmp_path / "c.zarr")
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "c.zarr").rglob("*") if p.is_file()}
    torch.save({"conv1.weight": torch.zeros(3, 3, 3, 3)}, tmp_path / "weights.pt")
    torch.save({"action.weight": torch.zeros(5, 96), "action.bias": torch.zeros(5)}, tmp_path / "head.pt")
    extra = [str(tmp_path / "weights.pt") if e == "WEIGHTS" else str(tmp_path / "head.pt") if e == "HEAD" else e for e in extra]
    line = one_line_error(egodistill(*base_args(tmp_path, videos, csv), *extra))
    assert expected in line, line
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "c.zarr").rglob("*") if p.is_file()}
    assert after == before


def test_malformed_manifest_names_file_and_line(tmp_path, videos):
    csv = manifest(tmp_path / "m.csv", ["a,h264_aac.mp4,0,1,train,0", "b,h264_aac.mp4,zero,2,val,1"])
    line = one_line_error(egodistill(*base_args(tmp_path, videos, csv)))
    assert "m.csv:3" in line


def test_killed_run_resumes_to_the_same_result(tmp_path, videos):
    rows = [f"s{i},h264_aac.mp4,{(i % 4) * 0.5},{(i % 4) * 0.5 + 0.5},train,{i % 2}" for i in range(12)]
    csv = manifest(tmp_path / "m.csv", rows)
    args = ["extract", "--manifest", csv, "--videos", videos, "--backbone", "test_resnet", "--frames", "3",
            "--workers", "0", "--device", "cpu", "--precision", "fp32", "--segments-per-task", "1"]
    egodistill(*args, "--cache", tmp_path / "whole.zarr", check=0)

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "egodistill", *map(str, args), "--cache", str(tmp_path / "killed.zarr")], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((tmp_path / "killed.zarr").glob("teachers/*/tasks/*/zarr.json"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = len(list((tmp_path / "killed.zarr").glob("teachers/*/tasks/*/zarr.json")))
    assert 3 <= done_at_kill < 12, "the run must be killed mid-way for this test to mean anything"

    result = egodistill(*args, "--cache", tmp_path / "killed.zarr", check=0)
    assert "resuming" in result.stdout
    whole = cache.open_cache(tmp_path / "whole.zarr")
    killed = cache.open_cache(tmp_path / "killed.zarr")
    [key] = whole.teacher_keys()
    assert killed.teacher_keys() == [key]
    a, b = whole.teacher(key), killed.teacher(key)
    for x, y in zip(a.read_rows(0, a.layout.rows), b.read_rows(0, b.layout.rows)):
        np.testing.assert_array_equal(x, y)
    assert (b.segment_status() == 1).all()


def test_python_dash_m_cli_and_console_script_agree():
    result = egodistill("--help", process=True, check=0)
    assert "extract" in result.stdout
    script = shutil.which("egodistill")
    if script:
        assert "extract" in subprocess.run([script, "--help"], capture_output=True, text=True).stdout


def _lease_holder(folder: Path) -> int | None:
    """The pid in a teacher's lease file under `folder`, once the file is whole."""
    for lease in folder.glob("teachers/*/egodistill-lease.json"):
        try:
            return json.loads(lease.read_text())["pid"]
        except (OSError, ValueError, KeyError):
            return None
    return None


def test_two_writers_same_teacher_refused_other_teacher_side_by_side(tmp_path, videos):
    rows = [f"s{i},h264_aac.mp4,{(i % 4) * 0.5},{(i % 4) * 0.5 + 0.5},train,{i % 2}" for i in range(8)]
    csv = manifest(tmp_path / "m.csv", rows)
    # The first writer is a process of its own, stopped (SIGSTOP) while it holds the lease: alive and mid-run for as
    # long as the other commands take, whatever the machine's load. resnet18 at 8 frames leaves over a second to catch it in.
    args = [*base_args(tmp_path, videos, csv), "--segments-per-task", "1", "--backbone", "resnet18", "--frames", "8"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen([sys.executable, "-m", "egodistill", *map(str, args)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and _lease_holder(tmp_path / "c.zarr") != first.pid and first.poll() is None:
            time.sleep(0.01)
        first.send_signal(signal.SIGSTOP)
        assert _lease_holder(tmp_path / "c.zarr") == first.pid, "the first run must hold its lease for this test to mean anything"
        second = egodistill(*args)
        assert "being extracted by" in one_line_error(second) and f"pid {first.pid}" in second.stderr
        flow = egodistill(*base_args(tmp_path, videos, csv, "--modality", "flow"), check=0)  # another teacher, same cache, meanwhile
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    teachers = cache.open_cache(tmp_path / "c.zarr").teachers()
    assert len(teachers) == 2 and "flow" in flow.stdout
    for teacher in teachers:
        assert (teacher.segment_status() == 1).all()
    assert not list((tmp_path / "c.zarr").glob("teachers/*/egodistill-lease.json"))


def test_a_newer_egodistill_resumes_and_re_extracts_nothing(tmp_path, videos, monkeypatch):
    from importlib import metadata

    from egodistill.student.sources import resolve_inputs

    csv = manifest(tmp_path / "m.csv", ["a,h264_aac.mp4,0,1,train,0", "b,h264_aac.mp4,1,2,val,1"])
    egodistill(*base_args(tmp_path, videos, csv), check=0)
    keys = cache.open_cache(tmp_path / "c.zarr").teacher_keys()
    # The same command under another installed version (what `pip install -U egodistill` leaves).
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "9.9.9" if name == "egodistill" else real(name))
    assert cache.egodistill_version() == "9.9.9"
    result = egodistill(*base_args(tmp_path, videos, csv), check=0)
    assert "resuming, 0 of" in result.stdout and "extracted now" in result.stdout
    opened = cache.open_cache(tmp_path / "c.zarr")
    assert opened.teacher_keys() == keys
    assert opened.teacher(keys[0]).provenance.egodistill != "9.9.9"  # the creator's version stays the note
    assert resolve_inputs(opened, ["rgb"]) == keys  # `--inputs rgb` still finds exactly one teacher
