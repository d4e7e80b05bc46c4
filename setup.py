"""Build medfl: Python packages plus the native module ``medfl._native`` through CMake.

The extension is built by ``CMakeBuild``: CMake configure + build (Release, Ninja when
available, two parallel jobs by default) into ``build/cmake-<python>-<hash>``, with the module
written straight to the path setuptools expects, so ``pip install .`` puts it in the wheel and
``pip install -e .`` puts it next to ``medfl/__init__.py``.

Environment:

- ``MEDFL_CUDA``: ``1`` requires the CUDA kernels (fails without nvcc), ``0`` skips them; unset
  (or ``auto``) builds them whenever CMake finds a CUDA compiler (``CUDACXX``, ``PATH``,
  ``CUDA_HOME``/``CUDA_PATH``, ``/usr/local/cuda``).
- ``MEDFL_BUILD_TYPE``: CMake build type (default ``Release``).
- ``CMAKE_BUILD_PARALLEL_LEVEL``: parallel compile jobs (default 2).
- ``CMAKE_ARGS``: extra arguments for the configure step, e.g.
  ``-DCMAKE_CUDA_ARCHITECTURES=86``.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shlex
import shutil
import subprocess
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = pathlib.Path(__file__).resolve().parent
VERSION = "0.1.0"
_CUDA_MODES = {"1": "ON", "on": "ON", "true": "ON", "0": "OFF", "off": "OFF", "false": "OFF", "": "AUTO",
               "auto": "AUTO"}


class CMakeExtension(Extension):
    """An extension whose sources CMake (CMakeLists.txt at the root) compiles."""

    def __init__(self, name: str):
        super().__init__(name, sources=[])


def _cuda_mode() -> str:
    value = os.environ.get("MEDFL_CUDA", "").strip().lower()
    if value not in _CUDA_MODES:
        raise SystemExit(f"MEDFL_CUDA={value!r}: use 1 (require CUDA), 0 (no CUDA) or leave it unset (auto)")
    return _CUDA_MODES[value]


class CMakeBuild(build_ext):
    """Configure and build with CMake; one build directory per toolchain so caches never clash."""

    def build_extension(self, ext: Extension) -> None:
        """Configure (if needed) and build the module straight into setuptools' target path."""
        import pybind11

        out = pathlib.Path(self.get_ext_fullpath(ext.name)).resolve()
        cmake = shutil.which("cmake") or "cmake"
        ninja = shutil.which("ninja")
        # Editable and regular installs, isolated or not, reuse a build directory only when the
        # interpreter and the tools are the same ones (a stale CMakeCache pointing at a deleted
        # isolated environment would break the build).
        key = hashlib.sha256("|".join([sys.executable, cmake, ninja or "make", pybind11.get_cmake_dir()]).encode())
        build_dir = ROOT / "build" / f"cmake-{sys.implementation.cache_tag}-{key.hexdigest()[:10]}"
        build_dir.mkdir(parents=True, exist_ok=True)
        args = [
            f"-DCMAKE_BUILD_TYPE={os.environ.get('MEDFL_BUILD_TYPE', 'Release')}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DMEDFL_CUDA={_cuda_mode()}",
            f"-DMEDFL_VERSION={VERSION}",
            f"-DMEDFL_OUTPUT_DIR={out.parent}",
            f"-DMEDFL_OUTPUT_NAME={out.name}",
        ]
        if ninja:
            args += ["-GNinja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        args += shlex.split(os.environ.get("CMAKE_ARGS", ""))
        subprocess.run([cmake, "-S", str(ROOT), "-B", str(build_dir), *args], check=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", "2")
        subprocess.run([cmake, "--build", str(build_dir), "-j", jobs], check=True)
        if not out.exists():
            raise RuntimeError(f"CMake did not produce {out}")


setup(
    name="medfl",
    version=VERSION,
    description="Privacy-preserving federated learning for medical imaging",
    python_requires=">=3.11",
    packages=find_packages(include=["medfl", "medfl.*", "agent", "agent.*", "coordinator", "coordinator.*", "apps",
                                    "apps.*"]),
    package_data={"medfl": ["_native.pyi", "py.typed"]},
    ext_modules=[CMakeExtension("medfl._native")],
    cmdclass={"build_ext": CMakeBuild},
    install_requires=[
        "numpy>=1.26",
        "torch>=2.3",
        "pyzmq>=25",
        "cryptography>=42",
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
        "dp-accounting>=0.4",
        "monai>=1.3",
        "nibabel>=5.0",
        "scipy>=1.10",
        "prometheus-client>=0.20",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-timeout", "hypothesis>=6", "ruff==0.17.6", "mypy==2.4.1", "sycret==0.2.8",
                 "import-linter==2.17", "atheris>=2.3"],
        "bench": ["opacus>=1.5"],
        "bundle": ["pyinstaller>=6.0,<7", "pyinstaller-hooks-contrib>=2024.0"],
        "sim": ["ray==2.60.0"],
    },
    entry_points={
        "console_scripts": [
            "medfl = apps.cli:main",
            "medfl-agent = agent.cli:main",
            "medfl-coordinator = coordinator.cli:main",
        ]
    },
    zip_safe=False,
)
