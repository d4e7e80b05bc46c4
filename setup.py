"""Build medfl: Python packages plus the native module ``medfl._native`` through CMake.

``MEDFL_CUDA=1`` requires the CUDA kernels (fails without nvcc), ``MEDFL_CUDA=0`` skips them,
unset builds them whenever CMake finds a CUDA compiler.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = pathlib.Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import pybind11

        out = pathlib.Path(self.get_ext_fullpath(ext.name)).resolve()
        build_dir = ROOT / "build" / f"cmake-{sys.implementation.cache_tag}"
        build_dir.mkdir(parents=True, exist_ok=True)
        cuda = os.environ.get("MEDFL_CUDA", "").strip()
        cuda_mode = {"1": "ON", "0": "OFF"}.get(cuda, "AUTO")
        args = [
            f"-DCMAKE_BUILD_TYPE={os.environ.get('MEDFL_BUILD_TYPE', 'Release')}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DMEDFL_CUDA={cuda_mode}",
            f"-DMEDFL_OUTPUT_DIR={out.parent}",
            f"-DMEDFL_OUTPUT_NAME={out.name}",
        ]
        if shutil.which("ninja"):
            args.append("-GNinja")
        cmake = shutil.which("cmake") or "cmake"
        subprocess.run([cmake, str(ROOT), *args], cwd=build_dir, check=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(min(4, os.cpu_count() or 2)))
        subprocess.run([cmake, "--build", ".", "-j", jobs], cwd=build_dir, check=True)
        if not out.exists():
            raise RuntimeError(f"CMake did not produce {out}")


setup(
    name="medfl",
    version="0.1.0",
    description="Privacy-preserving federated learning for medical imaging",
    python_requires=">=3.11",
    packages=find_packages(include=["medfl", "medfl.*", "agent", "agent.*", "coordinator", "coordinator.*"]),
    package_data={"medfl": ["_native.pyi", "py.typed"]},
    ext_modules=[CMakeExtension("medfl._native")],
    cmdclass={"build_ext": CMakeBuild},
    install_requires=[
        "numpy>=1.26",
        "torch>=2.3",
        "pyzmq>=25",
        "msgpack>=1.0",
        "safetensors>=0.4",
        "pillow>=10",
        "pydicom>=3.0",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "tomli-w>=1.0",
        "pynetdicom>=2.1",
        "highdicom>=0.23",
        "pylibjpeg>=2.0",
        "pylibjpeg-libjpeg>=2.1",
        "pylibjpeg-openjpeg>=2.3",
        "pylibjpeg-rle>=2.0",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-timeout", "hypothesis>=6", "ruff==0.17.6", "mypy==2.4.1"],
        "bench": [],
    },
    entry_points={
        "console_scripts": [
            "medfl = medfl.cli:main",
            "medfl-agent = agent.cli:main",
            "medfl-coordinator = coordinator.cli:main",
        ]
    },
    zip_safe=False,
)
