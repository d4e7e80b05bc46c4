"""The native module: built, free of libtorch, CUDA compiled where nvcc is, backend forcing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from medfl import native


@pytest.fixture
def mod():
    m = native.native_module()
    if m is None:
        pytest.fail("medfl._native is not built; run 'make install'")
    return m


def test_does_not_link_libtorch(mod):
    if shutil.which("ldd") is None:
        pytest.skip("ldd not available")
    out = subprocess.run(["ldd", mod.__file__], capture_output=True, text=True).stdout
    assert "torch" not in out and "c10" not in out, out


def test_cuda_kernels_compiled_when_nvcc_present(mod):
    info = mod.build_info()
    assert info["openmp"]
    if shutil.which("nvcc") and os.environ.get("MEDFL_CUDA", "") != "0":
        assert info["cuda"], "nvcc is on PATH but the CUDA kernels were not built"
    assert mod.cuda_device_count() >= 0


@pytest.mark.parametrize("forced,expected", [("reference", "reference"), ("cpu", "cpu")])
def test_forcing_the_backend(forced, expected):
    code = "from medfl import native; print(native.active_backend())"
    env = dict(os.environ, MEDFL_NATIVE=forced)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == expected


def test_bad_forcing_value_is_explained():
    code = "from medfl import native; native.active_backend()"
    env = dict(os.environ, MEDFL_NATIVE="gpu")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode != 0 and "use one of cuda, cpu, reference" in out.stderr
