"""Remote caches as a lab uses them: an S3-protocol server (moto, standalone, on 127.0.0.1) and a static
HTTP server on loopback, both started and stopped here. Open, list, verify, read features, extract into
S3, train a student straight from each URL, and read through a local copy."""

from __future__ import annotations

import functools
import http.server
import json
import os
import threading

import numpy as np
import pytest

from egodistill import cache
from egodistill.cache.verify import verify_cache
from helpers import egodistill, one_line_error, teacher_key_of

moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")


@pytest.fixture(scope="module")
def s3(extracted_cache):
    """An S3 endpoint on loopback holding a copy of the extracted cache at s3://lab/epic.zarr; yields the env it needs."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "lab", "AWS_SECRET_ACCESS_KEY": "lab-secret", "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # credentials and endpoint from the environment, as a user sets them
    try:
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir("lab")
        fs.put(str(extracted_cache), "lab/epic.zarr", recursive=True)
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def http_url(extracted_cache):
    """A static file server on 127.0.0.1 over the folder that holds the extracted cache."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(extracted_cache.parent)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{extracted_cache.name}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def urls(s3, http_url):
    return {"s3": "s3://lab/epic.zarr", "http": http_url}


@pytest.mark.parametrize("where", ["s3", "http"])
def test_ls_info_and_verify_work_on_a_url(urls, extracted_cache, where):
    url = urls[where]
    local = cache.describe(cache.open_cache(extracted_cache))
    remote = json.loads(egodistill("cache", "info", url, "--json", check=0).stdout)
    assert [(t["key"], t["rows"], t["complete"]) for t in remote["teachers"]] == [(t["key"], t["rows"], t["complete"]) for t in local["teachers"]]
    assert teacher_key_of(extracted_cache, "rgb") in egodistill("cache", "ls", url, check=0).stdout
    assert "DAMAGED" not in egodistill("cache", "verify", url, check=0).stdout


@pytest.mark.parametrize("where", ["s3", "http"])
def test_features_read_from_a_url_equal_the_local_ones_also_through_a_read_through_copy(urls, extracted_cache, where, tmp_path):
    key = teacher_key_of(extracted_cache, "flow")
    local = cache.open_cache(extracted_cache).teacher(key)
    expected = local.read_rows(0, local.layout.rows)
    blocks = [(int(local.offsets[b.start]), int(local.offsets[b.stop])) for b in local.blocks()]
    for location, read_cache in ((urls[where], None), (urls[where], tmp_path / "copy"), ("filecache::" + urls[where], tmp_path / "copy")):
        teacher = cache.open_cache(location, read_cache=read_cache).teacher(key)
        for got, want in zip(teacher.read_rows(0, teacher.layout.rows), expected):
            assert got.tobytes() == want.tobytes()
        assert teacher.read_features(blocks[::-1]).tobytes() == np.concatenate([expected[0][a:b] for a, b in blocks[::-1]]).tobytes()
    copied = [p for p in (tmp_path / "copy").rglob("*") if p.is_file()]
    assert any(f"teachers/{key}/features/c/" in str(p) for p in copied)
    assert not any(p.name == "zarr.json" and "/tasks/" in str(p) for p in copied)  # task records are always read fresh


def test_a_flipped_byte_on_s3_is_caught_by_verify(s3, extracted_cache):
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.copy("lab/epic.zarr", "lab/damaged.zarr", recursive=True)
    key = teacher_key_of(extracted_cache, "audio")
    shard = f"lab/damaged.zarr/teachers/{key}/timestamps/c/2"
    data = bytearray(fs.cat_file(shard))
    data[-40] ^= 0xFF
    fs.pipe_file(shard, bytes(data))
    result = egodistill("cache", "verify", "s3://lab/damaged.zarr", check=2)
    assert f"teachers/{key}/timestamps/c/2" in result.stdout


def test_extract_writes_a_teacher_into_s3(s3, extracted_cache):
    from egodistill.extract.run import ExtractConfig, run_extraction

    folder = extracted_cache.parent
    summary = run_extraction(ExtractConfig(manifest=str(folder / "segments.csv"), videos=str(folder / "videos"), cache="s3://lab/fresh.zarr", modality="rgb",
                                           backbone="test_resnet", frames=4, workers=0, device="cpu", precision="fp32", segments_per_task=6), log=lambda _: None)
    assert summary.ok and summary.extracted == 18
    assert summary.teacher_key == teacher_key_of(extracted_cache, "rgb")  # same provenance, same key
    remote = cache.open_cache("s3://lab/fresh.zarr").teacher(summary.teacher_key)
    local = cache.open_cache(extracted_cache).teacher(summary.teacher_key)
    np.testing.assert_allclose(remote.read_rows(0, 72)[0].astype(np.float32), local.read_rows(0, 72)[0].astype(np.float32), atol=2e-3)
    assert verify_cache(cache.open_cache("s3://lab/fresh.zarr"))["ok"]


@pytest.mark.parametrize("where", ["s3", "http"])
def test_train_student_straight_from_a_url(urls, where, tmp_path):
    result = egodistill("train-student", "--cache", urls[where], "--inputs", "rgb,audio", "--out", tmp_path / "run", "--steps", "2",
                        "--batch-size", "6", "--dim", "16", "--depth", "1", "--frames", "4", "--device", "cpu", check=0)
    assert "done: 2 steps" in result.stdout, result.stdout + result.stderr
    assert (tmp_path / "run" / "last.pt").exists()


def test_http_is_read_only_in_one_line(urls, extracted_cache):
    key = teacher_key_of(extracted_cache, "rgb")
    assert "read-only" in one_line_error(egodistill("cache", "rm", urls["http"], "--teacher", key, "--yes"))
