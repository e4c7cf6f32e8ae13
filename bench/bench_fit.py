"""fit-teachers at dataset scale: wall time, peak memory and cores used on an EPIC-KITCHENS-100-sized cache.

The cache is synthetic (egodistill.testing): 76,885 segments, heads verb 97 / noun 300, three
modalities (rgb, flow, audio) of 8 rows x 768 features, float16, as EPIC-100 with TSN-like frozen
features would be. The command timed is the one of issue 18 at its defaults:

    egodistill fit-teachers --cache CACHE --modalities rgb,flow,audio --fusion

run under /usr/bin/time -v (wall, peak RSS, user + system CPU; cores used = CPU time / wall).
Goal: <= 10 minutes and <= 8 GB on 2 cores.

    python bench/bench_fit.py --out /tmp/bench-fit                  # full size
    python bench/bench_fit.py --out /tmp/bench-fit --fraction 0.25  # a quarter of the segments
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from egodistill.common import write_json  # noqa: E402
from egodistill.testing import SyntheticSpec, build_synthetic_cache  # noqa: E402

EPIC_SEGMENTS = 76_885
EPIC_HEADS = {"verb": 97, "noun": 300}


def build(location: Path, fraction: float) -> float:
    """Write the cache unless it is there; returns the seconds spent building."""
    if (location / "zarr.json").exists():
        return 0.0
    started = time.perf_counter()
    spec = SyntheticSpec(segments=int(round(EPIC_SEGMENTS * fraction)), heads=dict(EPIC_HEADS), splits={"train": 0.8, "val": 0.2},
                         frames=8, feature_dim=768, segments_per_task=1024, offset=10.0)
    build_synthetic_cache(str(location), spec)
    return time.perf_counter() - started


def timed_fit(location: Path, log: Path, extra: list[str]) -> dict:
    """Run fit-teachers at its defaults under /usr/bin/time -v; parse wall, peak RSS and CPU time."""
    command = [sys.executable, "-m", "egodistill", "fit-teachers", "--cache", str(location), "--modalities", "rgb,flow,audio", "--fusion", *extra]
    with open(log, "w") as out:
        done = subprocess.run(["/usr/bin/time", "-v", *command], stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "120"})
    text = log.read_text()
    if done.returncode:
        raise SystemExit(f"fit-teachers failed (exit {done.returncode}): see {log}")

    def field(name: str) -> str:
        return re.search(rf"{re.escape(name)}: (.+)", text).group(1).strip()

    clock = [float(p) for p in field("Elapsed (wall clock) time (h:mm:ss or m:ss)").split(":")]
    wall = sum(v * 60 ** i for i, v in enumerate(reversed(clock)))
    cpu = float(field("User time (seconds)")) + float(field("System time (seconds)"))
    return {"command": " ".join(["egodistill", *command[3:]]), "wall_s": wall, "peak_rss_gb": int(field("Maximum resident set size (kbytes)")) / 2**20,
            "cpu_s": cpu, "cores_used": cpu / max(wall, 1e-9),
            "out_of_fold": re.findall(r"out-of-fold top-1 by depth: ([^;]+); kept depth (\d+)", text)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="Folder for the cache, the log and results.json.")
    parser.add_argument("--fraction", type=float, default=1.0, help="Share of EPIC-100's 76,885 segments to build (1: full size).")
    parser.add_argument("--fit-args", default="", help="Extra fit-teachers options, e.g. '--workers 1'.")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    location = out / f"epic-{args.fraction:g}.zarr"
    build_s = build(location, args.fraction)
    flags = open("/proc/cpuinfo").read() if Path("/proc/cpuinfo").exists() else ""
    result = {"segments": int(round(EPIC_SEGMENTS * args.fraction)), "fraction": args.fraction, "build_s": build_s,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, avx512_bf16: {'avx512_bf16' in flags}",
              "load_average_before": os.getloadavg()[0],
              **timed_fit(location, out / f"fit-{args.fraction:g}.log", args.fit_args.split())}
    write_json(out / f"results-{args.fraction:g}.json", result)
    print(f"| {result['segments']:,} | {result['wall_s'] / 60:.1f} min | {result['peak_rss_gb']:.2f} GB | {result['cores_used']:.2f} | "
          f"{result['machine']} | load before {result['load_average_before']:.1f} |")
    for (accuracies, depth), name in zip(result["out_of_fold"], ("rgb", "flow", "audio", "fusion")):
        print(f"  {name}: out-of-fold top-1 {accuracies} (depth {depth})")


if __name__ == "__main__":
    main()
