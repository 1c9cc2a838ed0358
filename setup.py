#!/usr/bin/env python
"""Build and install ``lite_detr`` and its compiled op ``lite_detr._C``.

The op is built against the torch that is already installed, so install with
``pip install --no-build-isolation -e .`` (``make install`` does). CPU sources are always built;
CUDA sources when CUDA is usable or ``FORCE_CUDA=1`` (a CPU-only build never sees CUDA headers).
``LITE_DETR_WITH_OP=0`` builds the package without the op (the attention layers then run their
pure-PyTorch reference, with a warning): for machines without a compiler, and the packaging test.

The configs (``configs/``, ``projects/*/configs/``) are copied into ``lite_detr/model_zoo/`` of
the built package with the repository's layout, so ``lite_detr.model_zoo.get_config`` works in a
normal install (an editable one reads them in place).
"""

import glob
import json
import os
import sys

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:
    sys.exit(
        "lite_detr: torch is not importable. Install torch first, then build this package with "
        "`pip install --no-build-isolation -e .` (or run `make install`)."
    )

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(*patterns):
    return sorted(
        os.path.relpath(p, ROOT)
        for pat in patterns
        for p in glob.glob(os.path.join(ROOT, pat), recursive=True)
    )


def build_with_cuda() -> bool:
    if os.environ.get("FORCE_CUDA", "0") == "1":
        if CUDA_HOME is None:
            sys.exit("lite_detr: FORCE_CUDA=1 but no CUDA toolkit found; set CUDA_HOME.")
        return True
    return torch.cuda.is_available() and CUDA_HOME is not None


# our compiler flags, in a data file that ops/cuda_check.py reads too
with open(os.path.join(ROOT, "ops", "compiler_flags.json")) as f:
    FLAGS = json.load(f)


def get_extensions(with_cuda: bool | None = None):
    """The ``lite_detr._C`` extension; ``with_cuda`` None decides as :func:`build_with_cuda`."""
    sources = _sources("ops/*.cpp", "ops/cpu/*.cpp", "ops/cpu/avx2/*.cpp")
    if not sources:
        sys.exit("lite_detr: no C++ sources found under ops/; the checkout is incomplete.")
    extra_compile_args = {"cxx": list(FLAGS["cxx"])}
    extra_link_args = list(FLAGS["link"])
    if build_with_cuda() if with_cuda is None else with_cuda:
        sources += _sources("ops/cuda/*.cu", "ops/cuda/*.cpp")
        extra_compile_args["nvcc"] = list(FLAGS["nvcc"])
        return [
            CUDAExtension(
                "lite_detr._C",
                sources,
                include_dirs=[os.path.join(ROOT, "ops")],
                define_macros=[(name, None) for name in FLAGS["cuda_macros"]],
                extra_compile_args=extra_compile_args,
                extra_link_args=extra_link_args,
            )
        ]
    return [
        CppExtension(
            "lite_detr._C",
            sources,
            include_dirs=[os.path.join(ROOT, "ops")],
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
        )
    ]


def with_op() -> bool:
    value = os.environ.get("LITE_DETR_WITH_OP", "1")
    if value not in ("0", "1"):
        sys.exit(f"lite_detr: LITE_DETR_WITH_OP must be 0 or 1, got {value!r}.")
    return value == "1"


def model_zoo_configs():
    """The config files that ``lite_detr.model_zoo`` carries, relative to the repository root."""
    return _sources("configs/**/*.py", "projects/*/configs/**/*.py")


class BuildPyWithConfigs(build_py):
    """Also copy the configs into ``lite_detr/model_zoo/`` of the build (detectron2 links or copies
    its configs into ``detectron2/model_zoo/configs``); the layout is kept, so the configs'
    relative imports between ``projects/`` and ``configs/common/`` resolve. The source tree is
    left untouched: an editable install reads the configs in place."""

    def run(self):
        super().run()
        if self.editable_mode:
            return
        for rel in model_zoo_configs():
            target = os.path.join(self.build_lib, "lite_detr", "model_zoo", rel)
            self.mkpath(os.path.dirname(target))
            self.copy_file(os.path.join(ROOT, rel), target)


class ReportingBuildExtension(BuildExtension):
    """Say clearly that the op failed to build, so a broken build is never taken for a slow op."""

    def run(self):
        try:
            super().run()
        except Exception as e:
            sys.stderr.write(
                f"\nlite_detr: building the compiled op lite_detr._C failed: {e}\n"
                "Check that a C++17 compiler (g++) and the torch headers are available; "
                "nothing was installed.\n"
            )
            raise


if __name__ == "__main__":  # pip and setuptools run this file as __main__
    setup(
        name="lite_detr",
        version="0.1.0",
        description="Lite DETR (interleaved multi-scale encoder + key-aware deformable attention) "
        "for Detectron2",
        python_requires=">=3.10",  # PEP 604 annotations (X | None) are evaluated at import
        packages=find_packages(include=["lite_detr", "lite_detr.*"]),
        ext_modules=get_extensions() if with_op() else [],
        cmdclass={
            "build_py": BuildPyWithConfigs,
            "build_ext": ReportingBuildExtension.with_options(use_ninja=True),
        },
        install_requires=[
            "fvcore>=0.1.5",
            "pycocotools>=2.0.2",
            "numpy",
            "scipy",
            "opencv-python-headless",
            "tqdm",
            "matplotlib",
        ],
        zip_safe=False,
    )
