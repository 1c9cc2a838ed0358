"""The scripts share code through the library: none edits sys.path or loads another script by its
file path, and they run from any current directory (with lite_detr installed, as `make install`
does, or on PYTHONPATH)."""

import ast
import os
import subprocess
import sys

import pytest

from .conftest import ROOT

SCRIPTS = sorted(
    os.path.join(folder, name)
    for folder in ("tools", "benchmarks")
    for name in os.listdir(os.path.join(ROOT, folder))
    if name.endswith(".py")
) + ["train_net.py"]
SCRIPT_MODULES = {os.path.splitext(os.path.basename(p))[0] for p in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_imports_only_the_library(script):
    with open(os.path.join(ROOT, script)) as f:
        source = f.read()
    assert "sys.path" not in source and "spec_from_file_location" not in source
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & (SCRIPT_MODULES | {"tools", "benchmarks"}), imported


def test_script_runs_from_another_directory(tmp_path):
    # run_demo imports the most of the library (engine, predictor, data)
    res = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "run_demo.py"), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "usage:" in res.stdout


def top_level_imports(node):
    if isinstance(node, ast.Import):
        return {a.name.split(".")[0] for a in node.names}
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return {node.module.split(".")[0]}
    return set()


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_imports_lite_detr_before_detectron2(script):
    """Importing lite_detr installs the filter of fvcore's import-time warning, once, in the
    package (lite_detr/__init__.py); a script that loaded detectron2 or fvcore first would print
    it, and a script that filtered it itself would be a copy."""
    with open(os.path.join(ROOT, script)) as f:
        source = f.read()
    assert "filterwarnings" not in source
    for node in ast.parse(source).body:
        if "lite_detr" in top_level_imports(node):
            return
        assert not top_level_imports(node) & {"detectron2", "fvcore"}, ast.unparse(node)


def test_importing_lite_detr_first_silences_fvcore():
    code = "import lite_detr, detectron2.data, fvcore.nn"
    res = subprocess.run(
        [sys.executable, "-W", "error::FutureWarning", "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    res = subprocess.run(
        [sys.executable, "-W", "error::FutureWarning", "-c", "import fvcore.nn"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "torch.jit.script" in res.stderr, "fvcore no longer warns: drop the filter"
