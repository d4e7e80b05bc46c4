"""Kernel dispatch: CUDA for device arrays, the C++ module for host arrays, NumPy otherwise.

The choice is made once per process. ``MEDFL_NATIVE=cuda|cpu|reference`` forces it (see
:mod:`medfl.envvars`). Every call checks dtype, shape, contiguity and device before it reaches
native code; host inputs that are not C-contiguous are copied (the result is the same as the
reference's), device inputs must be contiguous. Kernel error codes become the typed errors of
:mod:`medfl.fixed_point`.
"""

from __future__ import annotations

import functools
import logging
import math
import operator
from typing import Any

import numpy as np

from medfl import envvars
from medfl import fixed_point as fxp

__all__ = ["active_backend", "backend_for", "native_module", "ring_matmul"]

log = logging.getLogger(__name__)
_CHOICES = ("cuda", "cpu", "reference")


@functools.cache
def native_module() -> Any | None:
    """The compiled ``medfl._native`` module, or None if it is not built."""
    try:
        from medfl import _native
    except ImportError as exc:
        log.warning("medfl._native is not built (%s); using the NumPy reference kernels. Run 'make install'.", exc)
        return None
    return _native


@functools.cache
def _forced() -> str | None:
    value = envvars.get("MEDFL_NATIVE")
    if value is None:
        return None
    value = value.strip().lower()
    if value not in _CHOICES:
        raise ValueError(f"MEDFL_NATIVE={value!r}; use one of {', '.join(_CHOICES)} or unset it")
    return value


def _is_device_array(x: Any) -> bool:
    if hasattr(x, "__cuda_array_interface__"):
        return True
    return bool(getattr(x, "is_cuda", False))


def active_backend(*, device: bool = False) -> str:
    """Name of the backend used for host (or, with ``device=True``, device) arrays."""
    forced = _forced()
    if device:
        if forced in ("cpu", "reference"):
            raise ValueError(f"MEDFL_NATIVE={forced} but a GPU array was given; move it to the host or unset "
                             "MEDFL_NATIVE")
        mod = native_module()
        if mod is None or not mod.build_info()["cuda"]:
            raise RuntimeError("a GPU array was given but medfl._native was built without CUDA; rebuild with "
                               "nvcc on PATH (MEDFL_CUDA=1 make install)")
        return "cuda"
    if forced == "cuda":
        raise ValueError("MEDFL_NATIVE=cuda but a host (NumPy) array was given; pass a CUDA tensor or unset it")
    if forced == "reference" or native_module() is None:
        if forced == "cpu":
            raise RuntimeError("MEDFL_NATIVE=cpu but medfl._native is not built; run 'make install'")
        return "reference"
    return "cpu"


def backend_for(x: Any) -> Any:
    """The backend object for ``x`` (NumPy -> cpu or reference; torch CUDA / CuPy -> cuda)."""
    name = active_backend(device=_is_device_array(x))
    return {"cuda": _Cuda, "cpu": _Cpu, "reference": _Reference}[name]


def _check_rounding(rounding: str) -> bool:
    if rounding not in ("nearest", "stochastic"):
        raise ValueError(f"rounding must be 'nearest' or 'stochastic', got {rounding!r}")
    return rounding == "stochastic"


def _u64(value: Any, name: str) -> int:
    try:
        return operator.index(value) % 2**64
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}") from None


def _c_order(a: np.ndarray) -> np.ndarray:
    """``a`` itself if C-contiguous, else a C-ordered copy (keeps 0-d arrays 0-d)."""
    return a if a.flags.c_contiguous else a.copy(order="C")


def _host_float32(x: Any) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a NumPy array (or a CUDA tensor / CuPy array), got {type(x).__name__}")
    if x.dtype != np.float32:
        raise TypeError(f"x must be float32, got {x.dtype}; convert with x.astype(np.float32)")
    return _c_order(x)


def _host_ring(v: Any, name: str) -> np.ndarray:
    if not isinstance(v, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(v).__name__}")
    if v.dtype not in (np.uint32, np.uint64):
        raise TypeError(f"{name} must be uint32 or uint64, got {v.dtype}")
    return _c_order(v)


def _ring_operands(a: Any, b: Any, out: Any, accumulate: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check ``a`` (m, k) and ``b`` (k, n) uint64 host matrices; return them C-ordered and the output."""
    for name, v in (("a", a), ("b", b)):
        if not isinstance(v, np.ndarray) or v.dtype != np.uint64 or v.ndim != 2:
            raise TypeError(f"{name} must be a 2-D uint64 NumPy array (ring elements), got "
                            f"{type(v).__name__} {getattr(v, 'dtype', '')}{getattr(v, 'shape', '')}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"cannot multiply a {a.shape} by b {b.shape}: inner sizes differ")
    shape = (a.shape[0], b.shape[1])
    if out is None:
        if accumulate:
            raise ValueError("accumulate=True needs out (the matrix to add the product to)")
        out = np.empty(shape, np.uint64)
    elif (not isinstance(out, np.ndarray) or out.dtype != np.uint64 or out.shape != shape
          or not out.flags.c_contiguous or not out.flags.writeable):
        raise ValueError(f"out must be a writable C-contiguous uint64 array of shape {shape}, got "
                         f"{getattr(out, 'dtype', type(out).__name__)}{getattr(out, 'shape', '')}")
    return _c_order(a), _c_order(b), out


def ring_matmul(a: Any, b: Any, *, out: Any = None, accumulate: bool = False) -> Any:
    """Return ``a @ b mod 2^64`` (``out += a @ b`` with ``accumulate``) on the best backend.

    Parameters
    ----------
    a, b : ndarray of uint64, shapes (m, k) and (k, n)
        Ring matrices (non-contiguous host inputs are copied).
    out : ndarray of uint64, shape (m, n), optional
        Where the result goes (required with ``accumulate``).
    accumulate : bool
        Add the product to ``out`` instead of overwriting it.

    Returns
    -------
    ndarray of uint64, shape (m, n)
        ``out``, or a new array.

    References
    ----------
    .. [1] Goto and van de Geijn, "Anatomy of High-Performance Matrix Multiplication", ACM TOMS 2008.
    """
    return backend_for(a).ring_matmul(a, b, out=out, accumulate=accumulate)


def _dcf_out(n: int, payload: int) -> np.ndarray:
    return np.empty((n, payload), np.uint64)


class _Reference:
    @staticmethod
    def dcf_gen(alpha, beta, roots, bits):
        from medfl.smpc.fss import dcf as fss

        return fss.dcf_gen_reference(alpha, beta, roots, bits)

    @staticmethod
    def dcf_eval(party, key, x):
        from medfl.smpc.fss import dcf as fss

        return fss.dcf_eval_reference(party, key, x)

    @staticmethod
    def ring_matmul(a, b, *, out, accumulate):
        a, b, out = _ring_operands(a, b, out, accumulate)
        prod = a @ b  # NumPy's integer matmul wraps modulo 2^64 (no BLAS for integers)
        if accumulate:
            out += prod
        else:
            out[...] = prod
        return out

    @staticmethod
    def encode(x, *, frac_bits, ring_bits, rounding, seed, offset):
        return fxp.encode_reference(_host_float32(x), frac_bits=frac_bits, ring_bits=ring_bits, rounding=rounding,
                                    seed=_u64(seed, "seed"), offset=_u64(offset, "offset"))

    @staticmethod
    def decode(v, *, frac_bits):
        return fxp.decode_reference(_host_ring(v, "v"), frac_bits=frac_bits)

    @staticmethod
    def ring_sum(rows):
        return fxp.ring_sum_reference(_host_ring(rows, "rows"))

    @staticmethod
    def ring_add_(acc, v):
        _Cpu.check_add(acc, v)
        fxp.ring_add_reference(acc, np.asarray(v).reshape(acc.shape))


class _Cpu:
    @staticmethod
    def dcf_gen(alpha, beta, roots, bits):
        n, payload = alpha.size, beta.shape[1]
        s_cw, v_cw = np.empty((n, bits, 2), np.uint64), np.empty((n, bits, payload), np.uint64)
        t_cw, final = np.empty((n, bits, 2), np.uint8), _dcf_out(n, payload)
        native_module().dcf_gen(_c_order(alpha), _c_order(beta), _c_order(roots), s_cw, v_cw, t_cw, final, bits,
                                payload)
        return s_cw, v_cw, t_cw, final

    @staticmethod
    def dcf_eval(party, key, x):
        out = _dcf_out(x.size, key.payload)
        native_module().dcf_eval(party, _c_order(key.seed), _c_order(key.s_cw), _c_order(key.v_cw),
                                 _c_order(key.t_cw), _c_order(key.final), _c_order(x), out, key.bits, key.payload)
        return out

    @staticmethod
    def ring_matmul(a, b, *, out, accumulate):
        a, b, out = _ring_operands(a, b, out, accumulate)
        native_module().ring_matmul(a, b, out, accumulate)
        return out

    @staticmethod
    def encode(x, *, frac_bits, ring_bits, rounding, seed, offset):
        stochastic = _check_rounding(rounding)
        fxp._check_bits(frac_bits, ring_bits)
        xc = _host_float32(x)
        out = np.empty(xc.shape, dtype=np.uint32 if ring_bits == 32 else np.uint64)
        code, index = native_module().encode(xc, out, frac_bits, stochastic, _u64(seed, "seed"),
                                             _u64(offset, "offset"))
        fxp.raise_for_status(code, index, xc, frac_bits, ring_bits)
        return out

    @staticmethod
    def decode(v, *, frac_bits):
        vc = _host_ring(v, "v")
        fxp._check_bits(frac_bits, 32 if vc.dtype == np.uint32 else 64)
        out = np.empty(vc.shape, dtype=np.float32)
        native_module().decode(vc, out, frac_bits)
        return out

    @staticmethod
    def ring_sum(rows):
        rc = _host_ring(rows, "rows")
        if rc.ndim != 2:
            raise ValueError(f"rows must be 2-D (m, n), got shape {rc.shape}")
        out = np.empty(rc.shape[1], dtype=rc.dtype)
        native_module().ring_sum(rc, out)
        return out

    @staticmethod
    def check_add(acc, v):
        if not isinstance(acc, np.ndarray) or not acc.flags.c_contiguous or not acc.flags.writeable:
            raise ValueError("acc must be a writable C-contiguous NumPy array (it is updated in place), got "
                             f"{type(acc).__name__} with flags {getattr(acc, 'flags', None)!s}".replace("\n", " "))
        _host_ring(acc, "acc")
        if not isinstance(v, np.ndarray) or v.dtype != acc.dtype or v.size != acc.size:
            raise ValueError(f"v must be a NumPy array of dtype {acc.dtype} and size {acc.size}, got "
                             f"{getattr(v, 'dtype', type(v).__name__)} of size {getattr(v, 'size', '?')}")

    @staticmethod
    def ring_add_(acc, v):
        _Cpu.check_add(acc, v)
        native_module().ring_add(acc, _c_order(v))


class _Cuda:
    """Device arrays: torch CUDA tensors or CuPy arrays, on the caller's current stream."""

    @staticmethod
    def _info(a: Any, name: str) -> tuple[int, str, tuple[int, ...], int, Any]:
        """Return (pointer, dtype name, shape, current stream handle, device context) of ``a``."""
        if hasattr(a, "data_ptr") and hasattr(a, "is_cuda"):  # torch
            import torch

            if not a.is_cuda:
                raise ValueError(f"{name} is a torch tensor on {a.device}, expected a CUDA tensor")
            if not a.is_contiguous():
                raise ValueError(f"{name}: CUDA tensors must be contiguous (got strides {tuple(a.stride())}); call "
                                 ".contiguous() first")
            stream = torch.cuda.current_stream(a.device).cuda_stream
            return (a.data_ptr(), str(a.dtype).replace("torch.", ""), tuple(a.shape), int(stream),
                    torch.cuda.device(a.device))
        import cupy

        if not a.flags.c_contiguous:
            raise ValueError(f"{name}: CuPy arrays must be C-contiguous (got strides {a.strides}); call "
                             "cupy.ascontiguousarray first")
        return a.data.ptr, a.dtype.name, tuple(a.shape), int(cupy.cuda.get_current_stream().ptr), a.device

    @staticmethod
    def _empty(like: Any, shape: tuple[int, ...], dtype: str) -> Any:
        if hasattr(like, "is_cuda"):
            import torch

            return torch.empty(shape, dtype=getattr(torch, dtype), device=like.device)
        import cupy

        with like.device:
            return cupy.empty(shape, dtype=dtype)

    @staticmethod
    def _same_device(a: Any, b: Any) -> None:
        if str(getattr(a, "device", "")) != str(getattr(b, "device", "")):
            raise ValueError(f"arrays are on different devices: {a.device} and {b.device}")

    @classmethod
    def ring_matmul(cls, a, b, *, out, accumulate):
        aptr, adt, ashape, stream, ctx = cls._info(a, "a")
        if not _is_device_array(b):
            raise TypeError(f"a is a GPU array but b is {type(b).__name__}; put both on the same device")
        bptr, bdt, bshape, _, _ = cls._info(b, "b")
        cls._same_device(a, b)
        if adt not in ("uint64", "int64") or bdt != adt or len(ashape) != 2 or len(bshape) != 2:
            raise TypeError(f"a and b must be 2-D uint64 (or int64 holding ring elements) of one dtype, got "
                            f"{adt}{ashape} and {bdt}{bshape}")
        if ashape[1] != bshape[0]:
            raise ValueError(f"cannot multiply a {ashape} by b {bshape}: inner sizes differ")
        shape = (ashape[0], bshape[1])
        if out is None:
            if accumulate:
                raise ValueError("accumulate=True needs out (the matrix to add the product to)")
            out = cls._empty(a, shape, adt)
        optr, odt, oshape, _, _ = cls._info(out, "out")
        if odt != adt or oshape != shape:
            raise ValueError(f"out must be {adt}{shape}, got {odt}{oshape}")
        with ctx:
            native_module().ring_matmul_cuda(aptr, bptr, optr, shape[0], ashape[1], shape[1], accumulate, stream)
        return out

    @classmethod
    def dcf_eval(cls, party, key, x):
        """One party's DCF shares (n, payload) at device points ``x``; ``key``'s arrays on the same device.

        ``key`` has the fields of :class:`medfl.smpc.fss.DcfKey` (uint64 or int64 words, uint8
        control bits), each a contiguous device array; the result is a new (n, payload) array
        of ``x``'s dtype.
        """
        xptr, xdt, xshape, stream, ctx = cls._info(x, "x")
        if xdt not in ("uint64", "int64") or len(xshape) != 1:
            raise TypeError(f"x must be a 1-D uint64 (or int64) device array, got {xdt}{xshape}")
        n = xshape[0]
        if party not in (0, 1):
            raise ValueError(f"party must be 0 or 1, got {party}")
        for name in ("seed", "s_cw", "v_cw", "t_cw", "final"):
            if not _is_device_array(getattr(key, name)):
                raise TypeError(f"x is a GPU array but key.{name} is {type(getattr(key, name)).__name__}; put the "
                                "key on the device")
        s_shape, f_shape = tuple(key.s_cw.shape), tuple(key.final.shape)
        bits = s_shape[1] if len(s_shape) == 3 else 0
        payload = f_shape[1] if len(f_shape) == 2 else 0
        if payload not in (1, 2) or not 1 <= bits <= 64:
            raise ValueError(f"dcf key: bits must be in [1, 64] and payload 1 or 2, got {bits} and {payload}")
        want = {"seed": (n, 2), "s_cw": (n, bits, 2), "v_cw": (n, bits, payload), "t_cw": (n, bits, 2),
                "final": (n, payload)}
        ptrs = []
        for name, shape in want.items():
            arr = getattr(key, name)
            cls._same_device(x, arr)
            ptr, dt, got, _, _ = cls._info(arr, f"key.{name}")
            ok = dt == "uint8" if name == "t_cw" else dt in ("uint64", "int64")
            if not ok or got != shape:
                raise ValueError(f"key.{name} must be {'uint8' if name == 't_cw' else 'uint64'}{shape} for {n} points, "
                                 f"got {dt}{got}")
            ptrs.append(ptr)
        out = cls._empty(x, (n, payload), xdt)
        with ctx:
            native_module().dcf_eval_cuda(party, *ptrs, xptr, cls._info(out, "out")[0], n, bits, payload, stream)
        return out

    @classmethod
    def dcf_gen(cls, alpha, beta, roots, bits):
        """DCF correction words on the device, bit for bit those of the host ``dcf_gen`` for the same roots.

        ``alpha`` (n,), ``beta`` (n, payload) and ``roots`` (2, n, 2) are contiguous device arrays of
        64-bit words (uint64, or int64 holding ring elements) on one device; returns new device
        arrays ``(s_cw, v_cw, t_cw, final)`` shaped as :class:`medfl.smpc.fss.DcfKey`'s fields, the
        words in ``alpha``'s dtype and ``t_cw`` uint8.
        """
        if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 64:
            raise ValueError(f"bits must be an integer in [1, 64], got {bits!r}")
        aptr, adt, ashape, stream, ctx = cls._info(alpha, "alpha")
        if adt not in ("uint64", "int64") or len(ashape) != 1:
            raise TypeError(f"alpha must be a 1-D uint64 (or int64) device array, got {adt}{ashape}")
        n = ashape[0]
        ptrs = [aptr]
        for name, arr in (("beta", beta), ("roots", roots)):
            if not _is_device_array(arr):
                raise TypeError(f"alpha is a GPU array but {name} is {type(arr).__name__}; put it on the same device")
            cls._same_device(alpha, arr)
            ptr, dt, shape, _, _ = cls._info(arr, name)
            if name == "roots":
                ok, want = shape == (2, n, 2), f"{adt}{(2, n, 2)}"
            else:
                ok, want = len(shape) == 2 and shape[0] == n and shape[1] in (1, 2), f"{adt}({n}, 1 or 2)"
            if dt != adt or not ok:
                raise ValueError(f"{name} must be {want} for {n} comparisons, got {dt}{shape}")
            ptrs.append(ptr)
        payload = int(beta.shape[1])
        outs = (cls._empty(alpha, (n, bits, 2), adt), cls._empty(alpha, (n, bits, payload), adt),
                cls._empty(alpha, (n, bits, 2), "uint8"), cls._empty(alpha, (n, payload), adt))
        with ctx:
            native_module().dcf_gen_cuda(*ptrs, *(cls._info(o, "out")[0] for o in outs), n, bits, payload, stream)
        return outs

    @classmethod
    def keystream(cls, key, out):
        """Fill the contiguous device array ``out`` with the ChaCha20 keystream of ``key`` (nonce 0, counter 0).

        The bytes of :func:`medfl.csprng.expand` under the same key (RFC 8439), produced on the device.
        """
        if not isinstance(key, bytes) or len(key) != 32:
            size = len(key) if isinstance(key, bytes | bytearray) else "?"
            raise ValueError(f"key must be 32 bytes, got {type(key).__name__} of length {size}")
        ptr, dt, shape, stream, ctx = cls._info(out, "out")
        sizes = {"uint8": 1, "int64": 8, "uint64": 8}
        if dt not in sizes:
            raise TypeError(f"out must be a uint8, uint64 or int64 device array, got {dt}{shape}")
        nbytes = math.prod(shape) * sizes[dt]
        if nbytes > 64 * 2**32:
            raise ValueError(f"{nbytes} bytes is past one ChaCha20 stream (2^32 blocks of 64 bytes); draw in parts")
        with ctx:
            native_module().chacha20_keystream_cuda(key, bytes(12), 0, ptr, nbytes, stream)
        return out

    @classmethod
    def encode(cls, x, *, frac_bits, ring_bits, rounding, seed, offset):
        stochastic = _check_rounding(rounding)
        fxp._check_bits(frac_bits, ring_bits)
        seed, offset = _u64(seed, "seed"), _u64(offset, "offset")
        ptr, dtype, shape, stream, ctx = cls._info(x, "x")
        if dtype != "float32":
            raise TypeError(f"x must be float32, got {dtype}")
        out = cls._empty(x, shape, "uint32" if ring_bits == 32 else "uint64")
        with ctx:
            code, index = native_module().encode_cuda(ptr, cls._info(out, "out")[0], ring_bits, math.prod(shape),
                                                      frac_bits, stochastic, seed, offset, stream)
        if code:
            host = x.cpu().numpy() if hasattr(x, "cpu") else x.get()
            fxp.raise_for_status(code, index, host, frac_bits, ring_bits)
        return out

    @classmethod
    def decode(cls, v, *, frac_bits):
        ptr, dtype, shape, stream, ctx = cls._info(v, "v")
        if dtype not in ("uint32", "uint64"):
            raise TypeError(f"v must be uint32 or uint64, got {dtype}")
        bits = 32 if dtype == "uint32" else 64
        fxp._check_bits(frac_bits, bits)
        out = cls._empty(v, shape, "float32")
        with ctx:
            native_module().decode_cuda(ptr, bits, cls._info(out, "out")[0], math.prod(shape), frac_bits, stream)
        return out

    @classmethod
    def ring_sum(cls, rows):
        ptr, dtype, shape, stream, ctx = cls._info(rows, "rows")
        if dtype not in ("uint32", "uint64"):
            raise TypeError(f"rows must be uint32 or uint64, got {dtype}")
        if len(shape) != 2:
            raise ValueError(f"rows must be 2-D (m, n), got shape {shape}")
        out = cls._empty(rows, (shape[1],), dtype)
        with ctx:
            native_module().ring_sum_cuda(ptr, cls._info(out, "out")[0], 32 if dtype == "uint32" else 64, shape[0],
                                          shape[1], stream)
        return out

    @classmethod
    def ring_add_(cls, acc, v):
        aptr, adtype, ashape, stream, ctx = cls._info(acc, "acc")
        if not _is_device_array(v):
            raise TypeError(f"acc is a GPU array but v is {type(v).__name__}; put both on the same device")
        vptr, vdtype, vshape, _, _ = cls._info(v, "v")
        cls._same_device(acc, v)
        if adtype not in ("uint32", "uint64") or vdtype != adtype or math.prod(ashape) != math.prod(vshape):
            raise ValueError(f"acc and v must be uint32/uint64 of the same dtype and size, got {adtype}{ashape} "
                             f"and {vdtype}{vshape}")
        with ctx:
            native_module().ring_add_cuda(aptr, vptr, 32 if adtype == "uint32" else 64, math.prod(ashape), stream)
