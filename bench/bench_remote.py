"""Remote-cache benchmark: loader-like throughput from S3 and HTTP on loopback vs local disk.

    python bench/bench_remote.py [--segments 2048] [--dim 512] [--passes 2] [--workdir /tmp/egodistill-bench-remote]

Builds a synthetic cache (one teacher, 8 rows per segment, float16 features), serves it from
moto's standalone S3 server and from `http.server` on 127.0.0.1, and reads every block the way
the student loader did before issue 8 (Teacher.read_rows over whole shards, 4 reads in flight, zarr-python). Each location
is read `--passes` times; with the read-through copy (EGODISTILL_READ_CACHE) the first pass
fills it (cold) and later passes read local files (warm). Prints rows/s, MB/s and the ratio to
local disk. Loopback has no network latency or bandwidth limit: real S3 or a lab server is
slower, so the remote/local ratios here are an upper bound; the warm read-through ratio is not.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

from egodistill import cache  # noqa: E402
from egodistill.testing import SyntheticSpec, build_synthetic_cache  # noqa: E402


def read_all(location: str, key: str, read_cache: str | None) -> tuple[float, int, int]:
    """Seconds, rows and bytes to read every block of the teacher, 4 whole-shard reads in flight."""
    started = time.perf_counter()
    teacher = cache.open_cache(location, read_cache=read_cache).teacher(key)
    offsets = teacher.offsets
    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(lambda b: teacher.read_rows(int(offsets[b.start]), int(offsets[b.stop])), teacher.blocks()))
    rows = sum(len(f) for f, _ in parts)
    return time.perf_counter() - started, rows, sum(f.nbytes + t.nbytes for f, t in parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=2048)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--workdir", default="/tmp/egodistill-bench-remote")
    args = parser.parse_args()

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    local = work / "epic.zarr"
    spec = SyntheticSpec(segments=args.segments, feature_dim=args.dim, frames=8, segments_per_task=64, modalities={"rgb": ("resnet18", 3, 224, 1.0)})
    key = build_synthetic_cache(str(local), spec)["rgb"]
    size = sum(p.stat().st_size for p in local.rglob("*") if p.is_file())

    from moto.server import ThreadedMotoServer
    import s3fs

    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3.start()
    host, port = s3.get_host_and_port()
    os.environ["AWS_ENDPOINT_URL"] = f"http://{host}:{port}"
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("bench")
    fs.put(str(local), "bench/epic.zarr", recursive=True)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(work)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    http_url = f"http://127.0.0.1:{httpd.server_address[1]}/epic.zarr"

    print(f"cache: {args.segments} segments x 8 rows x D={args.dim} float16, {size / 1e6:.1f} MB on disk, shards of 512 rows")
    results = {}
    for label, location, read_through in (
        ("local disk", str(local), False),
        ("S3 (moto, loopback)", "s3://bench/epic.zarr", False),
        ("S3 + read-through", "s3://bench/epic.zarr", True),
        ("HTTP (http.server, loopback)", http_url, False),
        ("HTTP + read-through", http_url, True),
    ):
        copy = work / f"read-through-{len(results)}" if read_through else None
        for p in range(args.passes):
            seconds, rows, nbytes = read_all(location, key, str(copy) if copy else None)
            name = f"{label}, pass {p + 1}" + ((" (cold)" if p == 0 else " (warm)") if read_through else "")
            results[name] = rows / seconds
            print(f"  {name:45s} {seconds:7.3f} s  {rows / seconds:12,.0f} rows/s  {nbytes / seconds / 1e6:8.1f} MB/s", flush=True)
    base = max(v for k, v in results.items() if k.startswith("local disk"))
    print("ratio to local disk (best local pass):")
    for name, rate in results.items():
        print(f"  {name:45s} {rate / base:6.2f}x")
    httpd.shutdown()
    s3.stop()


if __name__ == "__main__":
    main()
