"""The native module: built, free of libtorch, CUDA compiled where nvcc is, backend forcing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import medfl
from medfl import native
from medfl.native.reference import fixed_point as fxp_ref


@pytest.fixture
def mod():
    m = native.native_module()
    if m is None:
        pytest.fail("medfl._native is not built; run 'make install'")
    return m


def test_build_info(mod):
    info = mod.build_info()
    assert set(info) == {"cuda", "openmp", "version", "cuda_arch"}
    assert info["version"] == medfl.__version__
    assert info["openmp"] is True
    assert isinstance(info["cuda"], bool)
    assert (info["cuda_arch"] != "") == info["cuda"]


def test_does_not_link_libtorch_or_libcudart(mod):
    if shutil.which("ldd") is None:
        pytest.skip("ldd not available")
    out = subprocess.run(["ldd", mod.__file__], capture_output=True, text=True, check=True).stdout
    for lib in ("libtorch", "libc10", "libcudart"):  # the CUDA runtime is linked statically
        assert lib not in out, out


def test_cuda_kernels_compiled_when_nvcc_present(mod):
    info = mod.build_info()
    if shutil.which("nvcc") and os.environ.get("MEDFL_CUDA", "") != "0":
        assert info["cuda"], "nvcc is on PATH but the CUDA kernels were not built"
    if os.environ.get("MEDFL_CUDA", "") == "1":
        assert info["cuda"]


def test_cuda_build_runs_cpu_kernels_without_a_gpu(mod):
    count = mod.cuda_device_count()  # never throws, 0 without a driver or GPU
    assert isinstance(count, int) and count >= 0
    x = np.linspace(-3, 3, 1001, dtype=np.float32)
    out = np.empty(x.shape, np.uint64)
    assert tuple(mod.encode(x, out, 16, True, 1, 0)) == (0, -1)
    assert np.array_equal(out, fxp_ref.encode_reference(x, frac_bits=16, rounding="stochastic", seed=1))


def _run(code: str, forced: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MEDFL_NATIVE=forced)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("forced", ["reference", "cpu"])
def test_forcing_the_backend(forced):
    code = ("import numpy as np; from medfl import native; from medfl.native import fixed_point as f; "
            "print(native.active_backend()); "
            "x = np.arange(-5, 5, dtype=np.float32) / 3; "
            "print(f.encode(x, frac_bits=8, rounding='stochastic', seed=3).tolist())")
    out = _run(code, forced)
    assert out.returncode == 0, out.stderr
    backend, values = out.stdout.strip().splitlines()
    assert backend == forced
    x = np.arange(-5, 5, dtype=np.float32) / 3
    expected = fxp_ref.encode_reference(x, frac_bits=8, rounding="stochastic", seed=3)
    assert values == str(expected.tolist())


def test_forcing_reference_does_not_touch_the_module():
    out = _run("from medfl import native; from medfl.native import fixed_point as f; import numpy as np, sys; "
               "f.encode(np.ones(3, np.float32), frac_bits=4); print('medfl._native' in sys.modules)", "reference")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_forcing_cuda_with_a_host_array_is_explained():
    out = _run("import numpy as np; from medfl.native import fixed_point as f; "
               "f.encode(np.ones(3, np.float32), frac_bits=4)", "cuda")
    assert out.returncode != 0 and "MEDFL_NATIVE=cuda" in out.stderr


def test_bad_forcing_value_is_explained():
    out = _run("from medfl import native; native.active_backend()", "gpu")
    assert out.returncode != 0 and "use one of cuda, cpu, reference" in out.stderr
