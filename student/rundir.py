"""The run directory: config.json, metrics.jsonl and last.pt, and the guard against mixing runs.

Checkpoints hold state dicts, tensors and plain Python values only, so
`torch.load(path, weights_only=True)` opens them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from egodistill.common import EgodistillError, atomic_write, dumps

CONFIG = "config.json"
METRICS = "metrics.jsonl"
LAST = "last.pt"
# Settings that change where and how fast a run goes, not what it computes: a resume may change them.
# "model" is derived from the config and the inputs' feature sizes, which the keys already pin.
RUNTIME_FIELDS = frozenset({"device", "in_memory", "prefetch", "out", "cache", "model"})


class RunDirError(EgodistillError):
    """A run directory that holds another run, or none where one is needed."""


def differences(stored: dict, wanted: dict) -> list[str]:
    keys = sorted((set(stored) | set(wanted)) - RUNTIME_FIELDS)
    return [f"{k}: {stored.get(k)!r} there, {wanted.get(k)!r} now" for k in keys if stored.get(k) != wanted.get(k)]


def claim_run_dir(out: str | os.PathLike, record: dict, resume: bool) -> bool:
    """Write config.json into a new run dir, or check the existing one. Returns True to resume.

    `record` is {"config": ..., plus resolved keys}; everything but RUNTIME_FIELDS must match."""
    folder = Path(out)
    path = folder / CONFIG
    if folder.exists() and not folder.is_dir():
        raise RunDirError(f"--out {folder} is a file, not a run directory: choose another --out")
    if path.exists():
        stored = json.loads(path.read_text())
        flat_stored = {**stored.get("config", {}), **{k: v for k, v in stored.items() if k != "config"}}
        flat_wanted = {**record["config"], **{k: v for k, v in record.items() if k != "config"}}
        changed = differences(flat_stored, flat_wanted)
        if changed:
            raise RunDirError(f"run dir {folder} holds another config ({'; '.join(changed[:3])}): choose another --out, or pass the options it was started with")
        started = (folder / LAST).exists() or (folder / METRICS).exists()
        if started and not resume:
            raise RunDirError(f"run dir {folder} already holds this run: pass --resume to continue it, or choose another --out")
        return started and (folder / LAST).exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(f"cannot create run dir {folder} ({err.strerror or type(err).__name__}): choose an --out under a folder you can write to") from err
    atomic_write(path, dumps(record, indent=2) + "\n")
    return False


def read_run_config(run: str | os.PathLike) -> dict:
    path = Path(run) / CONFIG
    if not path.exists():
        raise RunDirError(f"{run} is not a run directory (no {CONFIG}): pass the --out of a train-student run")
    return json.loads(path.read_text())


def save_checkpoint(out: str | os.PathLike, name: str, state: dict) -> None:
    path = Path(out) / name
    atomic_write(path, lambda tmp: torch.save(state, tmp))  # a kill mid-save never leaves a broken checkpoint behind


def load_checkpoint(run: str | os.PathLike, name: str) -> dict:
    path = Path(run) / name
    if not path.exists():
        raise RunDirError(f"{path} does not exist: the run has not finished an epoch yet, or pass another --run")
    return torch.load(path, map_location="cpu", weights_only=True)


def append_metrics(out: str | os.PathLike, line: dict) -> None:
    with open(Path(out) / METRICS, "a") as f:
        f.write(dumps(line) + "\n")


def read_metrics(run: str | os.PathLike) -> list[dict]:
    path = Path(run) / METRICS
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def truncate_metrics(out: str | os.PathLike, epochs: int, step: int) -> None:
    """Keep only the lines a checkpoint at (`epochs` epochs finished, `step` steps) had already written.

    A run killed after writing a line but before saving last.pt would otherwise log that stretch twice
    when resumed; a run killed before its first checkpoint starts again from (0, 0), with an empty log."""
    path = Path(out) / METRICS
    if not path.exists():
        return
    lines = [m for m in read_metrics(out) if m["epoch"] < epochs and m["step"] <= step]
    atomic_write(path, "".join(dumps(m) + "\n" for m in lines))
