#!/usr/bin/env python
"""Compile the CUDA sources of ``lite_detr._C`` with nvcc, without a GPU (``make cuda-check``).

Each ``ops/cuda/*.cu`` is compiled to an object file in a temporary directory with the flags of
a ``setup.py`` CUDA build: the extension's own nvcc flags and macros, read from
``ops/compiler_flags.json`` as setup.py reads them, its include directory (``ops/``), and those
torch's ``BuildExtension`` adds (include
paths, common nvcc flags, the arch list of ``TORCH_CUDA_ARCH_LIST``, default "9.0"). Nothing is
linked or installed. Exits non-zero, with the compiler's output, when a source fails to compile,
or when nvcc prints a warning about our sources.

    CUDA_HOME=/usr/local/cuda TORCH_CUDA_ARCH_LIST=9.0 python ops/cuda_check.py [-j JOBS]
"""

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor

OPS = os.path.dirname(os.path.abspath(__file__))


def extension_flags():
    """(nvcc flags, -D macros, include dirs) of the CUDA extension that setup.py builds."""
    with open(os.path.join(OPS, "compiler_flags.json")) as f:
        flags = json.load(f)
    return flags["nvcc"], [f"-D{name}" for name in flags["cuda_macros"]], [OPS]


def nvcc_command(source: str, output: str):
    import torch
    from torch.utils import cpp_extension

    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    cuda_home = cpp_extension.CUDA_HOME
    if cuda_home is None:
        sys.exit("cuda_check: no CUDA toolkit found; set CUDA_HOME (e.g. /usr/local/cuda)")
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    if not os.path.exists(nvcc):
        nvcc = shutil.which("nvcc") or sys.exit("cuda_check: nvcc not found")
    nvcc_flags, macros, own_includes = extension_flags()
    includes = (
        cpp_extension.include_paths(device_type="cuda")
        + own_includes
        + [sysconfig.get_paths()["include"]]
    )
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return (
        [nvcc, "-c", source, "-o", output, "-std=c++20"]
        + nvcc_flags
        + macros
        + [f"-I{p}" for p in includes]
        + cpp_extension.COMMON_NVCC_FLAGS
        + cpp_extension._get_cuda_arch_flags()
        + [
            f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
            "-DTORCH_EXTENSION_NAME=_C",
            "--compiler-options",
            "-fPIC",
        ]
    )


def compile_one(source: str, out_dir: str):
    obj = os.path.join(out_dir, os.path.basename(source) + ".o")
    cmd = nvcc_command(source, obj)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    # warnings in our own files count as failures; warnings inside torch headers do not
    own_warnings = [line for line in log.splitlines() if "warning" in line.lower() and OPS in line]
    return source, proc.returncode, log, own_warnings, " ".join(cmd)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-j", "--jobs", type=int, default=int(os.environ.get("MAX_JOBS", "2")))
    parser.add_argument("-v", "--verbose", action="store_true", help="print the nvcc commands")
    args = parser.parse_args()
    sources = sorted(glob.glob(os.path.join(OPS, "cuda", "*.cu")))
    if not sources:
        print("cuda_check: no ops/cuda/*.cu sources found", file=sys.stderr)
        return 1
    failed = False
    with tempfile.TemporaryDirectory(prefix="lite_detr_cuda_check_") as out_dir:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results = list(pool.map(lambda s: compile_one(s, out_dir), sources))
    for source, rc, log, own_warnings, cmd in results:
        name = os.path.relpath(source, os.path.dirname(OPS))
        if args.verbose:
            print(cmd)
        if rc != 0 or own_warnings:
            failed = True
            why = f"exit code {rc}" if rc != 0 else f"{len(own_warnings)} warning(s)"
            print(f"cuda_check: {name}: FAILED ({why})\n{log}", file=sys.stderr)
        else:
            print(f"cuda_check: {name}: ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
