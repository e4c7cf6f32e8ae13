"""A user's mistakes on every command: each ends as one line `error: ...` naming the thing and the fix, never a traceback.

Commands run in this process through `egodistill.cli.main` (what the `egodistill` script runs); a few
run as real subprocesses. Also here: every JSON egodistill writes or prints parses strictly (no NaN),
and the cost of a student whose input was imported from HDF5 is reported as unknown.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import stat
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from egodistill.common import atomic_write, dumps, write_json
from egodistill.testing import SyntheticSpec, build_synthetic_cache
from egodistill.cli import main
from egodistill import testing as media

from helpers import egodistill, one_line_error

SEGMENTS = 24


def cli(*args) -> tuple[int, str, str]:
    """Run `egodistill ARGS` here; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def ok(*args) -> str:
    code, out, err = cli(*args)
    assert code == 0, out + err
    return out


def strict_json(text: str):
    """json.loads that refuses NaN, Infinity and -Infinity, as jq, browsers and Go do."""
    def refuse(constant):
        raise ValueError(f"non-strict JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    """What the bad commands point at: a synthetic cache with fitted teachers, a trained run, a manifest
    with a real video, HDF5 features, and broken weights and head files."""
    d = tmp_path_factory.mktemp("bad-inputs")
    syn = d / "syn.zarr"
    keys = build_synthetic_cache(str(syn), SyntheticSpec(segments=SEGMENTS, feature_dim=8, segments_per_task=8,
                                                         modalities={"rgb": ("resnet18", 3, 64, 1.0), "flow": ("resnet18", 2, 64, 0.7)}))
    ok("fit-teachers", "--cache", syn, "--modalities", "rgb", "--folds", "2", "--steps", "2", "--device", "cpu")
    run = d / "run"
    ok("train-student", "--cache", syn, "--inputs", "rgb,flow", "--teachers", "rgb", "--out", run,
       "--steps", "2", "--dim", "8", "--depth", "1", "--batch-size", "8", "--device", "cpu")
    videos = d / "videos"
    videos.mkdir()
    if media.have_ffmpeg():
        media.make_video(videos / "clip.mp4", seconds=1.0, fps=8, size=(64, 48))
    else:  # no case below decodes it: every one fails before
        (videos / "clip.mp4").write_bytes(b"")
    manifest = d / "segments.csv"
    manifest.write_text("segment_id,video,start_sec,stop_sec,split,label:action\nclip,clip.mp4,0,1,train,0\n")
    with h5py.File(d / "features.h5", "w") as f:
        for i in range(SEGMENTS):
            f.create_dataset(f"seg{i:05d}", data=np.random.default_rng(i).normal(size=(4, 8)).astype(np.float32))
    (d / "garbage.pt").write_bytes(b"not a torch file")
    torch.save([1, 2, 3], d / "list.pt")
    torch.save({"fc9.weight": torch.zeros(3, 3)}, d / "wrong.pt")
    torch.save({"action.weight": torch.zeros(5, 8), "action.bias": torch.zeros(5)}, d / "head.pt")
    # Thin data: rgb features of one labelled training segment only (the others failed), and no labels at all.
    build_synthetic_cache(str(d / "thin.zarr"), SyntheticSpec(segments=SEGMENTS, feature_dim=8, segments_per_task=8, failed={"rgb": list(range(1, 17))},
                                                             modalities={"rgb": ("resnet18", 3, 64, 1.0)}))
    build_synthetic_cache(str(d / "unlabelled.zarr"), SyntheticSpec(segments=SEGMENTS, feature_dim=8, segments_per_task=8, unlabelled=1.0,
                                                                   modalities={"rgb": ("resnet18", 3, 64, 1.0)}))
    # Labels hidden by split: val has no noun labels, test none at all (as EPIC-KITCHENS-100's test file).
    build_synthetic_cache(str(d / "hidden.zarr"), SyntheticSpec(segments=SEGMENTS, feature_dim=8, segments_per_task=8, splits={"train": 0.5, "val": 0.25, "test": 0.25},
                                                                hidden_heads={"val": ("noun",), "test": ("verb", "noun")}, modalities={"rgb": ("resnet18", 3, 64, 1.0)}))
    ok("train-student", "--cache", d / "hidden.zarr", "--inputs", "rgb", "--out", d / "hidden-run", "--steps", "2", "--batch-size", "8", "--device", "cpu")
    return {"hidden": str(d / "hidden.zarr"), "hidden_run": str(d / "hidden-run"), "thin": str(d / "thin.zarr"), "unlabelled": str(d / "unlabelled.zarr"), "tmp": str(d), "syn": str(syn), "run": str(run), "videos": str(videos), "manifest": str(manifest),
            "features": str(d / "features.h5"), "rgb_key": keys["rgb"], "none": str(d / "none.zarr")}


EXTRACT = ["extract", "--manifest", "{manifest}", "--videos", "{videos}", "--cache", "{tmp}/x.zarr", "--workers", "0", "--device", "cpu"]
TRAIN = ["train-student", "--cache", "{syn}", "--inputs", "rgb", "--out", "{tmp}/never", "--device", "cpu"]
FIT = ["fit-teachers", "--cache", "{syn}", "--modalities", "rgb", "--device", "cpu"]
EVALUATE = ["evaluate", "--cache", "{syn}", "--run", "{run}", "--device", "cpu"]
IMPORT = ["cache", "import-h5", "{features}", "--cache", "{syn}"]

# (command line, a fragment the one-line message must hold)
BAD = [
    # extract
    ([*EXTRACT, "--modality", "lidar"], "--modality 'lidar' is unknown: choose one of audio, flow, frames, layout, rgb"),
    ([*EXTRACT, "--backbone", "resnet_does_not_exist"], "unknown backbone 'resnet_does_not_exist'"),
    ([*EXTRACT, "--frames", "0"], "--frames must be at least 1"),
    ([*EXTRACT, "--frames", "-3"], "--frames must be at least 1"),
    ([*EXTRACT, "--fps", "-2"], "--fps must be a positive number"),
    ([*EXTRACT, "--fps", "nan"], "--fps must be a positive number"),
    ([*EXTRACT, "--fps", "inf"], "--fps must be a positive number"),
    ([*EXTRACT, "--frames", "4", "--fps", "2"], "give --frames or --fps, not both"),
    ([*EXTRACT, "--frames", "many"], "Invalid value for '--frames'"),
    ([*EXTRACT, "--manifest", "{tmp}/nowhere.csv"], "nowhere.csv not found: check the --manifest path"),
    ([*EXTRACT, "--videos", "{tmp}/no-videos"], "no-videos not found: check the --videos path"),
    ([*EXTRACT, "--videos", "{manifest}"], "is not a folder: check the --videos path"),
    ([*EXTRACT, "--backbone", "test_resnet", "--weights", "{tmp}/nowhere.pt"], "weights file"),
    ([*EXTRACT, "--backbone", "test_resnet", "--weights", "{tmp}/garbage.pt"], "cannot read"),
    ([*EXTRACT, "--backbone", "test_resnet", "--weights", "{tmp}/list.pt"], "is not a state dict"),
    ([*EXTRACT, "--backbone", "test_resnet", "--weights", "{tmp}/wrong.pt"], "do not fit backbone test_resnet"),
    ([*EXTRACT, "--backbone", "test_resnet", "--head", "{tmp}/nowhere.pt"], "head file"),
    ([*EXTRACT, "--backbone", "test_resnet", "--head", "{tmp}/wrong.pt"], "has no weights for head(s) action"),
    ([*EXTRACT, "--backbone", "test_resnet", "--head", "{tmp}/head.pt"], "classes"),
    ([*EXTRACT, "--modality", "flow", "--flow", "farneback"], "--flow 'farneback'"),
    ([*EXTRACT, "--modality", "flow", "--backbone", "test_resnet", "--flow", "raft_small"], "needs --flow-weights"),
    ([*EXTRACT, "--modality", "flow", "--flow-stack", "0"], "--flow-stack"),
    ([*EXTRACT, "--batch-size", "0"], "--batch-size 0 is out of range"),
    ([*EXTRACT, "--segments-per-task", "0"], "--segments-per-task 0 is out of range"),
    ([*EXTRACT, "--workers", "-1"], "--workers -1 is out of range"),
    ([*EXTRACT, "--name", "mine/rgb"], "--name 'mine/rgb' is not a plain name"),
    ([*EXTRACT, "--device", "tpu"], "Invalid value for '--device'"),
    (["extract", "--cache", "{tmp}/x.zarr"], "Missing option '--manifest'"),
    ([*EXTRACT, "--classes", "action={tmp}/nope.txt"], "classes file {tmp}/nope.txt not found: check the --classes path"),
    # manifest
    (["manifest", "windows", "--videos", "{videos}", "--out", "{tmp}/w.csv", "--exclude", "{tmp}/nope.csv"], "manifest {tmp}/nope.csv not found: check the --exclude path"),
    # cache
    (["cache", "info", "{none}"], "cache {none} not found"),
    (["cache", "info", "{none}", "--json"], "not found"),
    (["cache", "info", "{videos}"], "{videos} exists but is not an egodistill cache (it has no zarr.json): choose another path, or run `egodistill cache init"),
    (["cache", "info", "{manifest}"], "{manifest} is a file, not an egodistill cache"),
    (["cache", "rm", "{syn}", "--teacher", "nobody"], "teacher 'nobody' is not in the cache (it holds: "),
    (["cache", "ls", "{none}"], "not found"),
    (["cache", "verify", "{syn}", "--teacher", "nobody"], "teacher 'nobody' is not in the cache"),
    (["cache", "rm", "{syn}", "--teacher", "nobody", "--yes"], "teacher 'nobody' is not in the cache"),
    (["cache", "rm", "{syn}", "--teacher", "../syn", "--yes"], "is not in the cache"),
    (["cache", "export-h5", "{syn}", "{tmp}/out.h5", "--teacher", "nobody"], "teacher 'nobody' is not in the cache"),
    (["cache", "export-h5", "{syn}", "{tmp}/no-folder/out.h5", "--teacher", "{rgb_key}"], "no-folder not found"),
    (["cache", "export-h5", "{syn}", "{tmp}/out.h5"], "Missing option '--teacher'"),
    (["cache", "import-h5", "{tmp}/nowhere.h5", "--cache", "{syn}"], "nowhere.h5 not found"),
    (["cache", "import-h5", "{manifest}", "--cache", "{syn}"], "is not an HDF5 file"),
    (["cache", "import-h5", "{videos}", "--cache", "{syn}"], "is a folder"),
    (IMPORT, "is not an egodistill export: say what its features are with --modality"),
    ([*IMPORT, "--modality", "depth", "--by", "frame"], "--by 'frame' is unknown: use one of auto, segment, video"),
    ([*IMPORT, "--modality", "depth", "--fps", "0"], "--fps 0.0 is out of range"),
    ([*IMPORT, "--modality", "depth", "--name", "a/b"], "--name 'a/b' is not a plain name"),
    ([*IMPORT, "--modality", ""], "--modality '' is not a plain name"),
    (["cache", "import-h5", "{features}", "--cache", "{none}", "--modality", "depth"], "not found"),
    (["cache", "vacuum", "{syn}"], "No such command 'vacuum'"),
    # fit-teachers
    (["fit-teachers", "--cache", "{none}", "--modalities", "rgb"], "not found"),
    ([*FIT, "--modalities", "lidar"], "--modalities 'lidar'"),
    ([*FIT, "--modalities", ","], "--modalities is empty"),
    ([*FIT, "--folds", "1"], "at least 2 folds"),
    ([*FIT, "--folds", "999"], "the cache has 2: lower --folds to 2 (the most this cache allows)"),
    ([*FIT, "--steps", "-1"], "--steps -1 is out of range"),
    ([*FIT, "--depths", "0,x"], "--depths '0,x'"),
    ([*FIT, "--frames", "-1"], "--frames -1 is out of range"),
    ([*FIT, "--steps", "ten"], "Invalid value for '--steps'"),
    (["fit-teachers", "--cache", "{thin}", "--modalities", "rgb", "--folds", "2", "--device", "cpu"], "1 of the 17 labelled 'train' segments have its input features"),
    (["fit-teachers", "--cache", "{unlabelled}", "--modalities", "rgb", "--device", "cpu"], "no labelled 'train' segments"),
    # One labelled segment with features: no --folds can cross-fit it, so the fix is more data, never fewer folds.
    (["fit-teachers", "--cache", "{thin}", "--modalities", "rgb", "--folds", "3", "--device", "cpu"],
     "verb 1, noun 1; head 'verb' needs at least 2 labelled segments with features: extract features for more labelled segments"),
    (["train-student", "--cache", "{unlabelled}", "--inputs", "rgb", "--out", "{tmp}/never", "--device", "cpu"], "no labels for its 'train' segments"),
    # train-student
    ([*TRAIN, "--cache", "{none}"], "not found"),
    ([*TRAIN, "--inputs", "lidar"], "--inputs 'lidar'"),
    ([*TRAIN, "--inputs", ""], "--inputs is empty"),
    ([*TRAIN, "--teachers", "lidar"], "--teachers 'lidar'"),
    ([*TRAIN, "--teachers", "{rgb_key}"], "has no logits"),
    ([*TRAIN, "--weighting", "best"], "Invalid value for '--weighting'"),
    ([*TRAIN, "--teachers", "rgb", "--weighting", "dataset", "--steps", "-1"], "--steps -1 is out of range"),
    ([*TRAIN, "--schedule", "step"], "Invalid value for '--schedule'"),
    ([*TRAIN, "--temperature", "1000"], "--temperature 1000.0 is out of range"),
    ([*TRAIN, "--lr", "0"], "--lr 0.0 is out of range: give a number > 0"),
    ([*TRAIN, "--lr", "-1e-3"], "--lr -0.001 is out of range"),
    ([*TRAIN, "--lr", "nan"], "--lr nan is out of range"),
    ([*TRAIN, "--batch-size", "0"], "--batch-size 0 is out of range"),
    ([*TRAIN, "--mask-prob", "1"], "--mask-prob 1.0 is out of range: give a number >= 0 and < 1"),
    ([*TRAIN, "--mask-prob", "-0.5"], "--mask-prob -0.5 is out of range"),
    ([*TRAIN, "--mask-prob", "0.5"], "--mask-prob 0.5 drops modalities, and --inputs rgb is one: give two or more --inputs, or drop --mask-prob"),
    ([*TRAIN, "--teachers", "rgb", "--temperature", "0"], "--temperature 0.0 is out of range"),
    ([*TRAIN, "--teachers", "rgb", "--weighting", "per-sample", "--tau", "-1"], "--tau -1.0 is out of range"),
    ([*TRAIN, "--kd-weight", "-1"], "--kd-weight -1.0 is out of range"),
    ([*TRAIN, "--gt-weight", "-1"], "--gt-weight -1.0 is out of range"),
    ([*TRAIN, "--frames", "0"], "--frames 0 is out of range"),
    ([*TRAIN, "--dim", "0"], "--dim 0 is out of range"),
    ([*TRAIN, "--depth", "1", "--dim", "30"], "--dim 30 is not a multiple of the 4 attention heads"),
    ([*TRAIN, "--depth", "-1"], "--depth -1 is out of range"),
    ([*TRAIN, "--out", "{manifest}"], "is a file, not a run directory"),
    ([*TRAIN, "--out", "{run}"], "holds another config"),
    ([*TRAIN, "--teachers", "rgb", "--unlabelled-split", "train"], "--unlabelled-split train is the training split itself"),
    ([*TRAIN, "--unlabelled-split", "val"], "--unlabelled-split val needs --teachers"),
    ([*TRAIN, "--teachers", "rgb", "--unlabelled-split", "windows"], "the cache has no 'windows' segments (its splits: train, val)"),
    # evaluate
    ([*EVALUATE, "--run", "{tmp}/no-run"], "no-run is not a run directory"),
    ([*EVALUATE, "--run", "{videos}"], "is not a run directory"),
    ([*EVALUATE, "--cache", "{none}"], "not found"),
    ([*EVALUATE, "--split", "test"], "no 'test' segments"),
    (["evaluate", "--cache", "{hidden}", "--run", "{hidden_run}", "--split", "test", "--device", "cpu"],
     "split test has no labelled segments for head verb, noun: evaluate a labelled split, or use `egodistill predict --split test` for scores"),
    # demo
    (["demo", "--out", "{tmp}/demo", "--seeds", "0"], "--seeds 0 is out of range"),
    (["demo", "--out", "{tmp}/demo", "--workers", "-1"], "--workers -1 is out of range"),
    (["demo", "--out", "{manifest}"], "is a file"),
    # the command line itself
    (["distil"], "No such command 'distil'"),
]


def fill(parts: list[str], world: dict[str, str]) -> list[str]:
    return [p.format(**world) for p in parts]


@pytest.mark.parametrize("args, fragment", BAD, ids=[" ".join(a[:2]) + " " + f for a, f in BAD])
def test_a_bad_input_is_one_line_naming_it(world, args, fragment):
    code, out, err = cli(*fill(args, world))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0, out + err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment.format(**world) in lines[0], lines[0]
    assert "Traceback" not in out + err
    made = [name for name in LEFT_BEHIND if (Path(world["tmp"]) / name).exists()]
    for name in made:  # so that the next case starts clean
        shutil.rmtree(Path(world["tmp"]) / name) if (Path(world["tmp"]) / name).is_dir() else (Path(world["tmp"]) / name).unlink()
    assert not made, f"a failed command left {made} behind"


def test_fit_teachers_refuses_before_its_progress_bar_and_never_advises_fewer_folds_than_2(world):
    code, out, err = cli("fit-teachers", "--cache", world["thin"], "--modalities", "rgb", "--folds", "3", "--device", "cpu")
    assert code == 1 and "needs at least 2 labelled segments" in err and "lower --folds" not in err, err
    assert "fits" not in out and "0/" not in out, out  # no `fit ... 0/? fits` bar before the error


# What a failed command must not have created: caches, run directories, output files.
LEFT_BEHIND = ("x.zarr", "none.zarr", "never", "demo", "out.h5", "out.h5.part", "no-folder", "no-run", "w.csv", "hidden-run/eval-test")


@pytest.mark.parametrize("args, fragment, code", [
    (["extract", "--manifest", "m.csv", "--cache", "c.zarr", "--modality", "lidar"], "--modality 'lidar' is unknown", 1),
    (["train-student", "--cache", "c.zarr", "--inputs", "rgb", "--out", "r", "--steps", "many"], "Invalid value for '--steps'", 2),
])
def test_the_installed_command_prints_one_line_too(tmp_path, args, fragment, code):
    result = egodistill(*args, cwd=tmp_path)
    if code == 1:
        line = one_line_error(result)
    else:
        assert result.returncode == code and "Traceback" not in result.stderr, result.stderr
        [line] = [x for x in result.stderr.splitlines() if x.strip()]
    assert line.startswith("error: ") and fragment in line, line


@pytest.mark.parametrize("command", [[], ["extract"], ["demo"], ["fit-teachers"], ["train-student"], ["evaluate"], ["cache"],
                                     ["cache", "info"], ["cache", "ls"], ["cache", "verify"], ["cache", "rm"],
                                     ["cache", "export-h5"], ["cache", "import-h5"]])
def test_help_of_every_command(command):
    code, out, err = cli(*command, "--help")
    assert code == 0 and "Usage" in out and not err, out + err


def test_no_command_shows_the_help():
    code, out, _ = cli()
    assert code == 2 and "train-student" in out


def test_evaluate_and_cache_info_write_strict_json(world, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    ok("evaluate", "--cache", world["syn"], "--run", run, "--device", "cpu")
    report = strict_json((run / "eval-val" / "metrics.json").read_text())
    bins = report["subsets"][0]["reliability"]
    assert any(c is None for head in bins.values() for c in head["confidence"])  # empty bins: null, not NaN
    strict_json((run / "config.json").read_text())
    [strict_json(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    info = strict_json(ok("cache", "info", world["syn"], "--json"))
    assert world["rgb_key"] in [t["key"] for t in info["teachers"]]
    assert strict_json(ok("cache", "verify", world["syn"], "--json"))["ok"]


def test_evaluate_scores_the_heads_a_split_has_labels_for(world, tmp_path):
    """val has verb labels but no noun ones: verb is scored, noun's metrics are null and the table says why;
    a second evaluation replaces the folder whole, leaving nothing of its own beside it."""
    run = tmp_path / "run"
    shutil.copytree(world["hidden_run"], run)
    out = ok("evaluate", "--cache", world["hidden"], "--run", run, "--split", "val", "--device", "cpu")
    report = strict_json((run / "eval-val" / "metrics.json").read_text())
    metrics = report["subsets"][0]["metrics"]
    assert report["unlabelled_heads"] == ["noun"] and metrics["noun_top1"] is None and 0 <= metrics["verb_top1"] <= 1
    assert "no labels for head noun in val: its metrics are null (-)" in " ".join(out.split())
    assert "no labels for head noun" in (run / "eval-val" / "table.txt").read_text()
    (run / "eval-val" / "stale.txt").write_text("from an older evaluation")
    ok("evaluate", "--cache", world["hidden"], "--run", run, "--split", "val", "--device", "cpu")
    assert sorted(p.name for p in (run / "eval-val").iterdir()) == ["metrics.json", "reliability.png", "subsets.png", "table.txt"]
    assert sorted(p.name for p in run.iterdir()) == sorted([p.name for p in Path(world["hidden_run"]).iterdir()] + ["eval-val"])


def test_json_helper_writes_null_for_non_finite_numbers(tmp_path):
    value = {"nan": float("nan"), "inf": np.float32("inf"), "ints": np.arange(2), "x": np.float64(0.5), "path": tmp_path, "ok": np.bool_(True)}
    assert strict_json(dumps(value)) == {"nan": None, "inf": None, "ints": [0, 1], "x": 0.5, "path": str(tmp_path), "ok": True}
    assert strict_json(write_json(tmp_path / "a.json", [math.inf, -math.inf, 1.0]).read_text()) == [None, None, 1.0]


def test_written_files_get_the_mode_the_umask_gives_so_the_lab_can_read_them(tmp_path):
    # Runs, predictions, exports and manifests are all written through atomic_write; mkstemp alone would make them 0600.
    old = os.umask(0o022)
    try:
        assert stat.S_IMODE(write_json(tmp_path / "a.json", {}).stat().st_mode) == 0o644
        os.umask(0o027)
        assert stat.S_IMODE(atomic_write(tmp_path / "b.csv", "x\n").stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_cost_of_a_student_on_imported_features_is_unknown(world, tmp_path):
    """Features brought in by `cache import-h5` do not say which backbone read which images: their cost is null."""
    c = tmp_path / "c.zarr"
    shutil.copytree(world["syn"], c)
    ok("cache", "import-h5", world["features"], "--cache", c, "--modality", "depth", "--name", "depth-imported")
    ok("fit-teachers", "--cache", c, "--modalities", "depth", "--folds", "2", "--steps", "2", "--device", "cpu")
    run = tmp_path / "run"
    ok("train-student", "--cache", c, "--inputs", "depth,rgb", "--teachers", "depth", "--out", run,
       "--steps", "2", "--dim", "8", "--depth", "1", "--batch-size", "8", "--device", "cpu")
    out = ok("evaluate", "--cache", c, "--run", run, "--device", "cpu")
    cost = strict_json((run / "eval-val" / "metrics.json").read_text())["cost"]
    depth, rgb, head = cost["student"]["parts"]
    assert depth["params"] is None and depth["flops"] is None and rgb["flops"] > 0 and head["params"] > 0
    assert cost["student"]["flops"] is None and cost["teachers"][0]["flops"] is None
    assert "? GFLOPs" in out


def test_an_unreadable_weights_or_head_file_is_named_without_unsafe_advice(world, tmp_path):
    """torch.load's refusal advises weights_only=False (which runs the file's code) or allow-listing classes; the
    line says what the file must be instead, with torch's reason in one sentence."""
    whole = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), whole)  # a pickled module, not its state dict
    for flag, path, reason in (("--weights", f"{world['tmp']}/garbage.pt", "Unsupported operand"), ("--head", whole, "Unsupported global"),
                               ("--weights", whole, "torch.nn.modules.linear.Linear was not an allowed global")):
        code, out, err = cli(*fill(EXTRACT, world), "--backbone", "test_resnet", flag, path)
        [line] = [line for line in err.splitlines() if line.strip()]
        assert code == 1 and f"cannot read {path} as a torch state dict (what torch.save(model.state_dict(), path) writes)" in line and reason in line, line
        assert "weights_only" not in line and "safe_globals" not in line and "Traceback" not in out + err, line
    assert not (Path(world["tmp"]) / "x.zarr").exists()
