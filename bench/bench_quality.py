"""Quality floor: do fitted teachers and students learn what the cached features hold?

On two datasets, per modality and fused, at the commands' default settings:
  probe     standardised logistic regression (scikit-learn, C=1) on each segment's pooled rows
            (mean, and mean of the second half minus the first), fitted on train, scored on val;
  teacher   `fit-teachers` (defaults), its logits on val;
  student   `train-student --inputs <m>` on ground truth (defaults), evaluated on val;
  distilled `train-student --inputs rgb --teachers rgb,flow,audio` (defaults, uniform ensemble).
Every row gives val top-1 with a 95 % bootstrap interval over clips, and the paired difference to
its probe with its interval. Target: teachers and ground-truth students within 3 points of their
probe, or above.

Datasets:
  demo     the built-in demo's clips (generated, then rgb/flow/audio extracted with random-init
           test_resnet), 240 train / 120 val clips, 12 classes;
  planted  features with a known Bayes-optimal accuracy: per modality a class signal (in the mean
           for rgb and audio, in a temporal trend for flow, which pooling to the mean cannot see)
           under a large pattern shared by every clip and a per-video nuisance, as real frozen
           features have; 600 train / 600 val segments, 4 per video, 10 classes.

    pip install -e ".[bench]"      # scikit-learn, for the probe
    python bench/bench_quality.py --out /tmp/quality            # both datasets
    python bench/bench_quality.py --out /tmp/quality --datasets planted
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from egodistill import cache  # noqa: E402
from egodistill.common import write_json  # noqa: E402
from egodistill.student.data import CacheLoader, load_windows, present_inputs  # noqa: E402
import torch  # noqa: E402

from egodistill.student.evaluate import load_student  # noqa: E402
from egodistill.student.fit import FitConfig, fit_teachers  # noqa: E402
from egodistill.student.probe import pooled_inputs  # noqa: E402
from egodistill.student.train import TrainConfig, train  # noqa: E402

MODALITIES = ["rgb", "flow", "audio"]
BOOTSTRAP = 2000


# --- datasets -----------------------------------------------------------------------------

def demo_cache(folder: Path) -> str:
    from egodistill.demo.data import DemoSpec, generate_demo_data
    from egodistill.extract.run import ExtractConfig, plan_extraction, run_extraction

    location = folder / "cache.zarr"
    # The spec the figures in bench/RESULTS.md were measured on (the demo itself now has 720 val clips).
    manifest = generate_demo_data(folder / "data", DemoSpec(clips_train=240, clips_val=120), workers=2)
    for m in MODALITIES:
        cfg = ExtractConfig(manifest=str(manifest), videos=str(manifest.parent / "videos"), cache=str(location), modality=m,
                            backbone="test_resnet", frames=8, workers=0, device="cpu", seed=0)
        run_extraction(cfg, plan_extraction(cfg))
    return str(location)


PLANTED = dict(classes=10, train=600, val=600, per_video=4, frames=8, dim=64, shared=20.0, video_std=1.0, row_std=2.0,
               strength={"rgb": 0.22, "flow": 0.17, "audio": 0.16}, seed=0)


def planted_cache(folder: Path) -> tuple[str, dict[str, float]]:
    """Write the planted cache; returns its location and the Bayes-optimal val accuracy per modality and fused."""
    p = PLANTED
    location = folder / "planted.zarr"
    rng = np.random.default_rng(p["seed"])
    n, t, d, c = p["train"] + p["val"], p["frames"], p["dim"], p["classes"]
    labels = rng.permutation(np.arange(n) % c).astype(np.int32)
    split = np.array(["train"] * p["train"] + ["val"] * p["val"])
    videos = np.array([f"video{i // p['per_video']:04d}" for i in range(n)])
    handle = cache.open_cache(str(location), mode="a")
    handle.write_segments(cache.SegmentTable(
        ids=np.array([f"seg{i:05d}" for i in range(n)]), videos=videos, start_sec=np.arange(n, dtype=np.float64),
        stop_sec=np.arange(n, dtype=np.float64) + 1.0, split=split, labels={"action": labels}, heads={"action": c}), {"format": "planted"})
    trend = np.linspace(-1.0, 1.0, t)  # sums to zero: a class signal the segment mean does not carry
    means = {}
    for m in MODALITIES:
        mu = rng.normal(size=(c, d)) * p["strength"][m]  # class means: this standard deviation per dimension
        shared = rng.normal(size=d) * p["shared"]
        video = rng.normal(size=(n // p["per_video"] + 1, d)) * p["video_std"]
        shape = trend[None, :, None] if m == "flow" else np.ones((1, t, 1))
        rows = shared + video[np.arange(n) // p["per_video"]][:, None, :] + mu[labels][:, None, :] * shape + rng.normal(size=(n, t, d)) * p["row_std"]
        means[m] = mu
        provenance = cache.Provenance(modality=m, backbone="planted", weights=f"planted:{p['seed']}", sampling={"frames": t}, precision="fp32")
        offsets, layout = cache.plan_layout(np.full(n, t), 64)
        teacher, _ = handle.create_teacher(provenance.teacher_key(), provenance, d, offsets, layout, {})
        flat = rows.reshape(n * t, d).astype(np.float16)
        for task in range(layout.tasks):
            segs = layout.task_segments(task)
            r0, r1 = int(offsets[segs.start]), int(offsets[segs.stop])
            teacher.write_task(task, flat[r0:r1], np.tile(np.arange(t, dtype=np.float32), len(segs)), {}, failed=[], worker="planted")
    return str(location), bayes_accuracy(means, trend, rng)


def bayes_accuracy(means: dict[str, np.ndarray], trend: np.ndarray, rng, samples: int = 200_000) -> dict[str, float]:
    """Monte Carlo accuracy of the Bayes classifier on each modality's sufficient statistic, and fused.

    Mean-signal modalities: the segment mean, N(mu_y, (video_std^2 + row_std^2 / T) I) (the shared
    pattern is a constant). Trend modality: sum_t c_t x_t / sum_t c_t^2, N(mu_y, row_std^2 / sum c^2 I)
    (shared pattern and video nuisance cancel). Classes are equiprobable and modalities independent
    given the class, so the fused posterior adds the per-modality log-likelihoods."""
    p = PLANTED
    y = rng.integers(0, p["classes"], samples)
    total = 0.0
    out = {}
    for m, mu in means.items():
        var = p["row_std"] ** 2 / float((trend**2).sum()) if m == "flow" else p["video_std"] ** 2 + p["row_std"] ** 2 / p["frames"]
        x = mu[y] + rng.normal(size=(samples, mu.shape[1])) * np.sqrt(var)
        loglik = -((x[:, None, :] - mu[None]) ** 2).sum(axis=2) / (2 * var)
        out[m] = float((loglik.argmax(axis=1) == y).mean())
        total = total + loglik
    out["fused"] = float((total.argmax(axis=1) == y).mean())
    return out


# --- the measurements ---------------------------------------------------------------------

def windows(location: str, keys: list[str], segments: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    handle = cache.open_cache(location)
    present = present_inputs(handle, keys)
    loader = CacheLoader(handle, keys, segments, {}, batch_size=512, frames=8, train=False, present=present)
    return load_windows(loader, len(keys))


def probe_correct(location: str, keys: list[str], train: np.ndarray, val: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per val clip: does scikit-learn's logistic regression on pooled, standardised rows get it right?"""
    x_train = pooled_inputs(*windows(location, keys, train))
    x_val = pooled_inputs(*windows(location, keys, val))
    scaler = StandardScaler().fit(np.nan_to_num(x_train))
    model = LogisticRegression(max_iter=5000).fit(scaler.transform(np.nan_to_num(x_train)), labels[train])
    return model.predict(scaler.transform(np.nan_to_num(x_val))) == labels[val]


def interval(correct: np.ndarray, rng) -> tuple[float, float, float]:
    idx = rng.integers(0, len(correct), (BOOTSTRAP, len(correct)))
    boot = correct[idx].mean(axis=1)
    return 100 * correct.mean(), 100 * np.percentile(boot, 2.5), 100 * np.percentile(boot, 97.5)


def paired(a: np.ndarray, b: np.ndarray, rng) -> tuple[float, float, float]:
    idx = rng.integers(0, len(a), (BOOTSTRAP, len(a)))
    boot = a[idx].mean(axis=1) - b[idx].mean(axis=1)
    return 100 * (a.mean() - b.mean()), 100 * np.percentile(boot, 2.5), 100 * np.percentile(boot, 97.5)


def student_correct(location: str, out: Path, inputs: list[str], teachers: list[str], val_ids: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    train(TrainConfig(cache=location, inputs=inputs, teachers=teachers, out=str(out), device="cpu", in_memory=True), log=lambda _: None)
    seconds = time.perf_counter() - t0
    record, model = load_student(str(out))
    feats, present = windows(location, record["input_keys"], val_ids)
    with torch.no_grad():
        logits = model([torch.from_numpy(f) for f in feats], torch.from_numpy(present))["action"].numpy()
    return logits.argmax(axis=1) == labels[val_ids], seconds


def measure(name: str, location: str, out: Path, rng) -> list[dict]:
    handle = cache.open_cache(location)
    table = handle.segments
    labels = table.labels["action"]
    train_ids = np.flatnonzero((table.split == "train") & (labels >= 0))
    val_ids = np.flatnonzero((table.split == "val") & (labels >= 0))
    keys = {handle.teacher(k).modality: k for k in handle.teacher_keys() if handle.teacher(k).has_features}
    t0 = time.perf_counter()
    fitted = {f.modality: f for f in fit_teachers(FitConfig(cache=location, modalities=MODALITIES, fusion=True, device="cpu"), log=print)}
    fit_seconds = time.perf_counter() - t0
    rows = []
    for m in [*MODALITIES, "fused"]:
        members = MODALITIES if m == "fused" else [m]
        probe = probe_correct(location, [keys[x] for x in members], train_ids, val_ids, labels)
        teacher = fitted["fusion" if m == "fused" else m]
        t_correct = teacher.logits["action"][val_ids].argmax(axis=1) == labels[val_ids]
        s_correct, s_seconds = student_correct(location, out / f"{name}-gt-{m}", members, [], val_ids, labels)
        row = {"dataset": name, "features": m, "probe": interval(probe, rng),
               "teacher": interval(t_correct, rng), "teacher_minus_probe": paired(t_correct, probe, rng), "teacher_depth": teacher.depth,
               "student": interval(s_correct, rng), "student_minus_probe": paired(s_correct, probe, rng), "student_seconds": s_seconds}
        if m == "rgb":
            d_correct, _ = student_correct(location, out / f"{name}-kd-rgb", ["rgb"], MODALITIES, val_ids, labels)
            row["distilled"] = interval(d_correct, rng)
            row["distilled_minus_probe"] = paired(d_correct, probe, rng)
        rows.append(row)
        print(format_row(row), flush=True)
    rows.append({"dataset": name, "fit_teachers_seconds": fit_seconds, "val_clips": int(len(val_ids))})
    return rows


def fmt(v) -> str:
    return f"{v[0]:.1f} [{v[1]:.1f}, {v[2]:.1f}]"


def format_row(row: dict) -> str:
    parts = [f"{row['dataset']:8s} {row['features']:6s}", f"probe {fmt(row['probe'])}",
             f"teacher(depth {row['teacher_depth']}) {fmt(row['teacher'])} (vs probe {fmt(row['teacher_minus_probe'])})",
             f"gt student {fmt(row['student'])} (vs probe {fmt(row['student_minus_probe'])}, {row['student_seconds']:.1f} s)"]
    if "distilled" in row:
        parts.append(f"distilled rgb student {fmt(row['distilled'])} (vs probe {fmt(row['distilled_minus_probe'])})")
    return " | ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--datasets", default="demo,planted")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    flags = sorted({f for f in open("/proc/cpuinfo").read().split() if f in ("avx512_bf16", "amx_bf16", "avx2")}) if Path("/proc/cpuinfo").exists() else []
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, CPU flags {flags or 'unknown'}")
    results = {"machine": {"cores": os.cpu_count(), "flags": flags}, "rows": []}
    for name in args.datasets.split(","):
        folder = args.out / name
        folder.mkdir(exist_ok=True)
        if name == "demo":
            location = str(folder / "cache.zarr") if (folder / "cache.zarr" / "zarr.json").exists() else demo_cache(folder)
        else:
            location, bayes = planted_cache(folder) if not (folder / "planted.zarr" / "zarr.json").exists() else (str(folder / "planted.zarr"), None)
            if bayes:
                print("planted: Bayes-optimal val accuracy " + ", ".join(f"{k} {100 * v:.1f} %" for k, v in bayes.items()))
                results["bayes_planted"] = bayes
        results["rows"] += measure(name, location, args.out, rng)
    write_json(args.out / "quality.json", results, default=float)


if __name__ == "__main__":
    main()
