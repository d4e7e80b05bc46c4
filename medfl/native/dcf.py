"""DCF key generation and evaluation (csrc/smpc: AES-NI/VAES or portable AES on the host, CUDA on the GPU).

The kernels take the arrays of :class:`medfl.smpc.fss.DcfKey` (any object with its fields
``seed``, ``s_cw``, ``v_cw``, ``t_cw``, ``final``) and match :mod:`medfl.native.reference.dcf`
bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medfl.native import backend, checks, cuda
from medfl.native.reference.dcf import dcf_eval_reference, dcf_gen_reference

__all__ = ["dcf_eval", "dcf_gen"]


def dcf_gen(alpha: Any, beta: Any, roots: Any, bits: int) -> tuple[Any, Any, Any, Any]:
    """Correction words ``(s_cw, v_cw, t_cw, final)`` of the DCF keys for given root seeds.

    Parameters
    ----------
    alpha : array of uint64, shape (N,)
        Thresholds (low ``bits`` bits used); C-contiguous on the host, or a device array
        (uint64 or int64 words) with ``beta`` and ``roots`` on the same device.
    beta : array of uint64, shape (N, P), P in {1, 2}
        Payloads.
    roots : array of uint64, shape (2, N, 2)
        Both parties' root seeds.
    bits : int
        Input bits, 1..64.

    Returns
    -------
    s_cw, v_cw, t_cw, final
        Shaped as :class:`medfl.smpc.fss.DcfKey`'s fields, on ``alpha``'s device.

    References
    ----------
    .. [1] Boyle et al., "Function Secret Sharing for Mixed-Mode and Fixed-Point Secure
       Computation", EUROCRYPT 2021, Fig. 1.
    """
    where = backend.backend_of(alpha)
    if where == "cuda":
        return _dcf_gen_cuda(alpha, beta, roots, bits)
    if where == "reference":
        return dcf_gen_reference(alpha, beta, roots, bits)
    return _dcf_gen_cpu(alpha, beta, roots, bits)


def dcf_eval(party: int, key: Any, x: Any) -> Any:
    """One party's DCF output words, shape (N, P), at the public points ``x`` (host or device).

    Parameters
    ----------
    party : {0, 1}
        Which key this is.
    key : DcfKey
        The party's keys (device arrays for device points).
    x : array of uint64, shape (N,)
        Public points.

    Returns
    -------
    array of uint64, shape (N, P)

    References
    ----------
    .. [1] Boyle et al., EUROCRYPT 2021, Fig. 1.
    """
    where = backend.backend_of(x)
    if where == "cuda":
        return _dcf_eval_cuda(party, key, x)
    if where == "reference":
        return dcf_eval_reference(party, key, x)
    x = checks.dcf_points(party, key, x)
    out = np.empty((x.size, int(key.final.shape[1])), np.uint64)
    c = checks.c_order
    backend.module().dcf_eval(party, c(key.seed), c(key.s_cw), c(key.v_cw), c(key.t_cw), c(key.final), x, out,
                                     int(key.s_cw.shape[1]), int(key.final.shape[1]))
    return out


def _dcf_gen_cpu(alpha: np.ndarray, beta: np.ndarray, roots: np.ndarray, bits: int) -> tuple[Any, Any, Any, Any]:
    n, payload = alpha.size, beta.shape[1]
    s_cw, v_cw = np.empty((n, bits, 2), np.uint64), np.empty((n, bits, payload), np.uint64)
    t_cw, final = np.empty((n, bits, 2), np.uint8), np.empty((n, payload), np.uint64)
    c = checks.c_order
    backend.module().dcf_gen(c(alpha), c(beta), c(roots), s_cw, v_cw, t_cw, final, bits, payload)
    return s_cw, v_cw, t_cw, final


def _dcf_eval_cuda(party: int, key: Any, x: Any) -> Any:
    """One party's DCF shares (n, payload) at device points ``x``; ``key``'s arrays contiguous on the same device."""
    xptr, xdt, xshape, stream, ctx = cuda.info(x, "x")
    if xdt not in ("uint64", "int64") or len(xshape) != 1:
        raise TypeError(f"x must be a 1-D uint64 (or int64) device array, got {xdt}{xshape}")
    n = xshape[0]
    if party not in (0, 1):
        raise ValueError(f"party must be 0 or 1, got {party}")
    for name in ("seed", "s_cw", "v_cw", "t_cw", "final"):
        if not backend.is_device_array(getattr(key, name)):
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
        cuda.same_device(x, arr)
        ptr, dt, got, _, _ = cuda.info(arr, f"key.{name}")
        ok = dt == "uint8" if name == "t_cw" else dt in ("uint64", "int64")
        if not ok or got != shape:
            raise ValueError(f"key.{name} must be {'uint8' if name == 't_cw' else 'uint64'}{shape} for {n} points, "
                             f"got {dt}{got}")
        ptrs.append(ptr)
    out = cuda.empty(x, (n, payload), xdt)
    with ctx:
        backend.module().dcf_eval_cuda(party, *ptrs, xptr, cuda.info(out, "out")[0], n, bits, payload, stream)
    return out


def _dcf_gen_cuda(alpha: Any, beta: Any, roots: Any, bits: int) -> tuple[Any, Any, Any, Any]:
    """DCF correction words on the device, bit for bit those of the host kernel for the same roots.

    ``alpha`` (n,), ``beta`` (n, payload) and ``roots`` (2, n, 2) are contiguous device arrays of
    64-bit words (uint64, or int64 holding ring elements) on one device; returns new device
    arrays, the words in ``alpha``'s dtype and ``t_cw`` uint8.
    """
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 64:
        raise ValueError(f"bits must be an integer in [1, 64], got {bits!r}")
    aptr, adt, ashape, stream, ctx = cuda.info(alpha, "alpha")
    if adt not in ("uint64", "int64") or len(ashape) != 1:
        raise TypeError(f"alpha must be a 1-D uint64 (or int64) device array, got {adt}{ashape}")
    n = ashape[0]
    ptrs = [aptr]
    for name, arr in (("beta", beta), ("roots", roots)):
        if not backend.is_device_array(arr):
            raise TypeError(f"alpha is a GPU array but {name} is {type(arr).__name__}; put it on the same device")
        cuda.same_device(alpha, arr)
        ptr, dt, shape, _, _ = cuda.info(arr, name)
        if name == "roots":
            ok, want = shape == (2, n, 2), f"{adt}{(2, n, 2)}"
        else:
            ok, want = len(shape) == 2 and shape[0] == n and shape[1] in (1, 2), f"{adt}({n}, 1 or 2)"
        if dt != adt or not ok:
            raise ValueError(f"{name} must be {want} for {n} comparisons, got {dt}{shape}")
        ptrs.append(ptr)
    payload = int(beta.shape[1])
    outs = (cuda.empty(alpha, (n, bits, 2), adt), cuda.empty(alpha, (n, bits, payload), adt),
            cuda.empty(alpha, (n, bits, 2), "uint8"), cuda.empty(alpha, (n, payload), adt))
    with ctx:
        backend.module().dcf_gen_cuda(*ptrs, *(cuda.info(o, "out")[0] for o in outs), n, bits, payload, stream)
    return outs
