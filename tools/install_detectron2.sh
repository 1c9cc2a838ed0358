#!/usr/bin/env bash
# Install detectron2 into the current Python environment, unless it already imports.
#
# detectron2 is not on PyPI under its own name and GitHub may be unreachable, so this builds the
# v0.6 release from the PyPI sdist `pb1-detectron2==0.6`, which ships without detectron2's C++
# sources. It verifies the sdist's sha256, applies the smallest fixes that make it build and import
# with current torch / NumPy / Pillow (listed and printed below), and installs it. detectron2's own
# compiled ops (deformable conv, rotated boxes, the fast COCOeval) are then unavailable; Lite DETR
# never needs them.
#
# Usage: tools/install_detectron2.sh [PYTHON]      (default: python)
# Env:   D2_SDIST=/path/to/pb1-detectron2-0.6.tar.gz   use a local copy instead of downloading
#        D2_KEEP_SRC=DIR   keep the patched source tree there (its tools/ has lazyconfig_train_net.py)
set -euo pipefail

PY="${1:-python}"
SDIST_NAME="pb1-detectron2-0.6.tar.gz"
SDIST_SHA256="5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"

REINSTALL=()
if "$PY" -c "import detectron2" 2>/dev/null; then
    # an earlier install by this script without fix 7 below is brought up to date; any other
    # detectron2 (from GitHub, or an own build) is left alone
    if "$PY" - <<'EOF'
import importlib.metadata as md, inspect, sys
try:
    md.distribution("pb1-detectron2")
except md.PackageNotFoundError:
    sys.exit(0)
import importlib
launch = importlib.import_module("detectron2.engine.launch")
sys.exit(0 if "gloo" in inspect.getsource(launch._distributed_worker).lower() else 1)
EOF
    then
        echo "[install_detectron2] detectron2 already importable: $("$PY" -c 'import detectron2, os; print(detectron2.__version__, os.path.dirname(detectron2.__file__))'); leaving it alone."
        exit 0
    fi
    echo "[install_detectron2] the installed pb1-detectron2 lacks the CPU (gloo) launch fix: re-installing it with all fixes."
    REINSTALL=(--force-reinstall --no-deps)
fi
if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "[install_detectron2] error: torch must be installed first (detectron2's setup.py imports it)." >&2
    exit 1
fi
if ! command -v cc >/dev/null 2>&1; then
    echo "[install_detectron2] error: no C compiler (cc) found; install gcc (e.g. apt-get install gcc)." >&2
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# --- fetch and verify the sdist ---------------------------------------------------------------
# `pip download` cannot fetch this sdist (its metadata declares a direct-URL extra, which pip
# refuses), so read the file list from pip's own index (PEP 691 JSON) and check the sha256.
if [[ -n "${D2_SDIST:-}" ]]; then
    cp "$D2_SDIST" "$work/$SDIST_NAME"
else
    "$PY" - "$work/$SDIST_NAME" <<'EOF'
import json, os, subprocess, sys, urllib.request

dest = sys.argv[1]
index = os.environ.get("PIP_INDEX_URL")
if not index:
    out = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                         capture_output=True, text=True)
    index = out.stdout.strip() if out.returncode == 0 else ""
if not index:
    from pip._internal.models.index import PyPI

    index = PyPI.simple_url
url = index.rstrip("/") + "/pb1-detectron2/"
req = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
try:
    files = json.load(urllib.request.urlopen(req, timeout=60))["files"]
    link = next(f["url"] for f in files if f["filename"] == os.path.basename(dest))
    with urllib.request.urlopen(link, timeout=300) as r, open(dest, "wb") as f:
        f.write(r.read())
except Exception as e:  # noqa: BLE001 - report any network/index problem in one line
    sys.exit(f"[install_detectron2] error: could not download {os.path.basename(dest)} from {url}: {e}\n"
             "Set D2_SDIST=/path/to/pb1-detectron2-0.6.tar.gz to use a local copy.")
EOF
fi
echo "$SDIST_SHA256  $work/$SDIST_NAME" | sha256sum -c --quiet - || {
    echo "[install_detectron2] error: sha256 of $SDIST_NAME does not match $SDIST_SHA256" >&2
    exit 1
}
tar -xzf "$work/$SDIST_NAME" -C "$work"
src="$work/pb1-detectron2-0.6"

# --- the fixes ----------------------------------------------------------------------------------
"$PY" - "$src" <<'EOF'
import pathlib, re, sys

src = pathlib.Path(sys.argv[1])
changes = []


def edit(rel, old, new, count=1):
    p = src / rel
    text = p.read_text()
    if old not in text:
        sys.exit(f"[install_detectron2] error: expected text not found in {rel}: {old!r}")
    p.write_text(text.replace(old, new, count))
    changes.append(f"{rel}: {old.strip()[:60]!r} -> {new.strip()[:60]!r}")


# 1. detectron2/layers/csrc is missing from the sdist: build a stub `detectron2._C` (plain CPython
#    API, no torch headers) so imports of `_C` and collect_env's version queries work.
(src / "detectron2" / "_C_stub.c").write_text(
    """#include <Python.h>
static PyObject* compiler(PyObject* s, PyObject* a) { return PyUnicode_FromString("GCC (stub)"); }
static PyObject* cuda_ver(PyObject* s, PyObject* a) { return PyUnicode_FromString("not available"); }
static PyObject* has_cuda(PyObject* s, PyObject* a) { Py_RETURN_FALSE; }
static PyMethodDef methods[] = {
    {"get_compiler_version", compiler, METH_NOARGS, "stub"},
    {"get_cuda_version", cuda_ver, METH_NOARGS, "stub"},
    {"has_cuda", has_cuda, METH_NOARGS, "stub"},
    {NULL, NULL, 0, NULL}};
static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_C",
    "stub: detectron2's C++ ops are not in the pb1-detectron2 sdist", -1, methods};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&mod); }
"""
)
changes.append("detectron2/_C_stub.c: new stub extension (get_compiler_version, get_cuda_version, has_cuda)")
edit(
    "setup.py",
    "ext_modules=get_extensions(),",
    'ext_modules=[__import__("setuptools").Extension("detectron2._C", ["detectron2/_C_stub.c"])],',
)
# 2. caffe2 is gone from torch 2.x: import the caffe2-based export API only when caffe2 imports.
edit(
    "detectron2/export/__init__.py",
    "from .api import *\n",
    "try:\n    from caffe2.proto import caffe2_pb2 as _tmp  # noqa\nexcept ImportError:\n    pass\n"
    "else:\n    from .api import *\n",
)
# 3. the sdist has no top-level configs/: ship the model-zoo configs that sit in the package.
edit(
    "setup.py",
    'package_data={"detectron2.model_zoo": get_model_zoo_configs()},',
    'package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]},',
)
# 4. NumPy >= 1.24 removed the np.int/np.float/np.bool/np.str/np.object aliases.
alias = re.compile(r"\bnp\.(int|float|bool|str|object)\b(?![\w])")
for p in sorted((src / "detectron2").rglob("*.py")):
    text = p.read_text()
    new, n = alias.subn(r"\1", text)
    if n:
        p.write_text(new)
        changes.append(f"{p.relative_to(src)}: {n} removed NumPy alias(es) -> builtins")
# 5. Pillow >= 10 removed Image.LINEAR (a default argument, so it fails at import time).
edit("detectron2/data/transforms/transform.py", "interp=Image.LINEAR", "interp=Image.BILINEAR")
# 6. black==21.4b2 (pinned for LazyConfig.save's pretty-printing) does not run on Python 3.11 and
#    clashes with the project's formatter; any current black works.
edit("setup.py", '"black==21.4b2",', '"black",')

# 7. detectron2 0.6's launch() asserts CUDA; its main branch starts CPU processes with gloo when
#    there is no GPU (multi-process and multi-machine training on CPUs). Same here.
launch_py = "detectron2/engine/launch.py"
edit(
    launch_py,
    '    assert torch.cuda.is_available(), "cuda is not available. Please check your installation."\n',
    "    has_gpu = torch.cuda.is_available()\n",
)
edit(launch_py, 'backend="NCCL",', 'backend="NCCL" if has_gpu else "GLOO",')
edit(
    launch_py,
    "    assert num_gpus_per_machine <= torch.cuda.device_count()\n"
    "    torch.cuda.set_device(local_rank)\n",
    "    if has_gpu:\n"
    "        assert num_gpus_per_machine <= torch.cuda.device_count()\n"
    "        torch.cuda.set_device(local_rank)\n",
)

print("[install_detectron2] applied fixes:")
for c in changes:
    print("  -", c)
EOF

"$PY" -m pip install --no-build-isolation "${REINSTALL[@]}" "$src"
if [[ -n "${D2_KEEP_SRC:-}" ]]; then
    rm -rf "$D2_KEEP_SRC" && mkdir -p "$(dirname "$D2_KEEP_SRC")" && cp -r "$src" "$D2_KEEP_SRC"
    echo "[install_detectron2] patched source kept in $D2_KEEP_SRC"
fi
"$PY" -c "import detectron2, detectron2.export, detectron2.utils.analysis; print('[install_detectron2] detectron2', detectron2.__version__, 'installed')"
