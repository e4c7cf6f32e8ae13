"""Extraction on an existing Dask cluster (`--scheduler`): a scheduler and two worker processes on
127.0.0.1; one worker is killed with SIGKILL mid-run and the run still finishes, nothing lost or doubled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from egodistill import cache
from egodistill.cache.verify import verify_cache
from helpers import ROOT, teacher_key_of


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)


@pytest.fixture
def cluster(tmp_path):
    """`dask scheduler` and two `dask worker` processes (no nanny: a killed worker stays dead)."""
    address_file = tmp_path / "scheduler.json"
    procs = [_start([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                     "--scheduler-file", str(address_file)], tmp_path / "scheduler.log")]
    try:
        deadline = time.time() + 60
        while not address_file.exists() and time.time() < deadline:
            time.sleep(0.2)
        assert address_file.exists(), (tmp_path / "scheduler.log").read_text()
        for i in range(2):
            procs.append(_start([sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", str(address_file), "--nthreads", "1",
                                 "--no-nanny", "--no-dashboard", "--host", "127.0.0.1", "--name", f"w{i}"], tmp_path / f"worker{i}.log"))
        from distributed import Client

        address = json.loads(address_file.read_text())["address"]
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        yield address, procs[1:]
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_killing_a_worker_mid_run_loses_and_doubles_nothing(cluster, extracted_cache, tmp_path):
    from egodistill.extract.run import ExtractConfig, run_extraction

    address, workers = cluster
    folder = extracted_cache.parent
    lines = (folder / "segments.csv").read_text().splitlines()
    rows = [f"r{k}-{line}" for k in range(3) for line in lines[1:]]  # 54 segments: enough tasks to kill a worker among them
    (tmp_path / "m.csv").write_text("\n".join([lines[0], *rows]) + "\n")
    cfg = ExtractConfig(manifest=str(tmp_path / "m.csv"), videos=str(folder / "videos"), cache=str(tmp_path / "c.zarr"), modality="rgb",
                        backbone="test_resnet", frames=4, scheduler=address, device="cpu", precision="fp32", segments_per_task=2)
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(summary=run_extraction(cfg, log=lambda _: None)))
    runner.start()
    killed_after = None
    deadline = time.time() + 120
    while runner.is_alive() and time.time() < deadline:
        tasks = tmp_path / "c.zarr" / "teachers"
        done = len(list(tasks.glob("*/tasks/*/zarr.json"))) if tasks.exists() else 0
        if done >= 3:
            workers[0].send_signal(signal.SIGKILL)  # mid-run: most tasks are still to do
            killed_after = done
            break
        time.sleep(0.05)
    runner.join(timeout=180)
    assert killed_after is not None and killed_after < 27, "the run finished before a worker could be killed"
    assert workers[0].wait(timeout=10) == -signal.SIGKILL
    summary = result["summary"]
    assert summary.ok and not summary.crashed_tasks
    opened = cache.open_cache(tmp_path / "c.zarr")
    teacher = opened.teacher(summary.teacher_key)
    assert sorted(teacher.records()) == list(range(27))  # every task recorded exactly once
    features = teacher.read_rows(0, teacher.layout.rows)[0].astype(np.float32)
    assert teacher.usable_segments().all() and not np.isnan(features).any()
    assert verify_cache(opened)["ok"]
    # the same features as the in-process extraction of those clips (each clip appears three times)
    assert summary.teacher_key == teacher_key_of(extracted_cache, "rgb")
    reference = cache.open_cache(extracted_cache).teacher(summary.teacher_key)
    reference_features = reference.read_rows(0, reference.layout.rows)[0].astype(np.float32)
    np.testing.assert_allclose(features, np.concatenate([reference_features] * 3), atol=2e-3)
