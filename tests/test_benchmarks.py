"""The benchmark scripts import and parse their arguments (they run too long for the suite)."""

import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "benchmarks", "*.py")))


def test_there_are_benchmarks():
    assert {"bench_ops.py", "bench_inference.py"} <= {os.path.basename(s) for s in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_benchmark_script_imports_and_shows_its_help(script):
    proc = subprocess.run(
        [sys.executable, script, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout
