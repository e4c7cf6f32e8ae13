"""Helpers shared by the cache tests: run the CLI, copy a cache, snapshot a file tree."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_manifest(path: Path, rows, heads=()) -> Path:
    """A generic CSV manifest: rows of (segment_id, video, start_sec, stop_sec, split, *one label per head)."""
    header = ["segment_id", "video", "start_sec", "stop_sec", "split", *[f"label:{h}" for h in heads]]
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def egodistill(*args, process: bool = False, env: dict | None = None, cwd=None, check: int | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`egodistill ARGS`: its exit code, stdout and stderr. By default in this process, through `egodistill.cli.main`
    (what the installed script runs; a new process costs seconds of imports). process=True, or an `env` or `cwd`
    to run under, starts `python -m egodistill`: for what only a real process shows (the installed command, a kill,
    a second writer, a terminal width)."""
    argv = [str(a) for a in args]
    if process or env is not None or cwd is not None:
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
        result = subprocess.run([sys.executable, "-m", "egodistill", *argv], capture_output=True, text=True, env=full_env, cwd=cwd or ROOT, timeout=timeout)
    else:
        import contextlib
        import io

        from egodistill.cli import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(argv)
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
        result = subprocess.CompletedProcess(["egodistill", *argv], code, out.getvalue(), err.getvalue())
    if check is not None:
        assert result.returncode == check, result.stdout + result.stderr
    return result


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def copy_cache(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    """(mtime_ns, size, sha256) of every file and (mtime_ns, 0, "") of every folder under `folder`."""
    state = {}
    for path in sorted(folder.rglob("*")):
        stat = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        state[str(path.relative_to(folder))] = (stat.st_mtime_ns, stat.st_size, digest)
    state["."] = (folder.stat().st_mtime_ns, 0, "")
    return state


def teacher_key_of(location, modality: str) -> str:
    from egodistill import cache

    [key] = [t.key for t in cache.open_cache(location).teachers() if t.modality == modality]
    return key


def in_process_cli(capsys):
    """`egodistill ...` in this process (a subprocess costs seconds of imports), for a test's `capsys`: the returned
    function gives stderr's one line when the command fails (fails=True), else None; a traceback, a second line
    or an unexpected exit code fails the test."""
    from egodistill.cli import main

    def call(*args, fails: bool = False):
        import pytest

        with pytest.raises(SystemExit) as done:
            main([str(a) for a in args])
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err
        if not fails:
            assert done.value.code in (0, None), captured.err
            return captured.out
        lines = [line for line in captured.err.splitlines() if line.strip()]
        assert done.value.code == 1 and len(lines) == 1 and lines[0].startswith("error: "), captured.err
        return lines[0]

    return call


def run_cli(*args) -> tuple[int, str]:
    """Run `egodistill ARGS` in this process; returns (exit code, stderr)."""
    result = egodistill(*args)
    return result.returncode, result.stderr


def one_line(code: int, stderr: str) -> str:
    """The one `error: ...` line of a refused command (exit 1, no traceback)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]
