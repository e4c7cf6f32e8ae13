"""The installed distribution: one top-level package, `egodistill`, and no old-style imports anywhere."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OLD_STYLE = re.compile(r"^\s*(from|import)\s+(cache|extract|student|cli|demo)(\.|\s|$)", re.MULTILINE)


def test_wheel_holds_only_egodistill(tmp_path):
    # Built from a copy: setuptools leaves build/ behind, and a stale build/ would leak old modules into later wheels.
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "*.zarr", "demo-run", "runs", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(source)],
                   check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("egodistill-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith((".dist-info", ".data"))}
    assert top == {"egodistill"}, top
    for module in ("egodistill/cli.py", "egodistill/__main__.py", "egodistill/cache/store.py", "egodistill/extract/run.py",
                   "egodistill/student/train.py", "egodistill/demo/pipeline.py"):
        assert module in names
    assert not any(n.startswith(("egodistill/tests/", "egodistill/bench/")) for n in names)


def test_no_checkout_top_level_imports():
    sources = [p for folder in ("cache", "extract", "student", "demo", "tests", "bench") for p in (ROOT / folder).rglob("*.py")]
    sources += [ROOT / "cli.py", ROOT / "__init__.py", ROOT / "__main__.py"]
    offenders = [f"{p.relative_to(ROOT)}: {m.group(0).strip()}" for p in sources for m in OLD_STYLE.finditer(p.read_text())]
    assert not offenders, "import the installed package (egodistill.*), not the checkout's folders:\n" + "\n".join(offenders)


def test_python_dash_m_egodistill(tmp_path):
    result = subprocess.run([sys.executable, "-m", "egodistill", "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0 and "train-student" in result.stdout
