"""The ring product ``a @ b mod 2^64`` on the best backend (csrc/smpc: blocked C++ GEMM, CUDA)."""

from __future__ import annotations

from typing import Any

from medfl.native import backend, checks, cuda
from medfl.native.reference.fixed_point import ring_matmul_reference

__all__ = ["ring_matmul"]


def ring_matmul(a: Any, b: Any, *, out: Any = None, accumulate: bool = False) -> Any:
    """Return ``a @ b mod 2^64`` (``out += a @ b`` with ``accumulate``) on the best backend.

    Parameters
    ----------
    a, b : ndarray of uint64, shapes (m, k) and (k, n)
        Ring matrices (non-contiguous host inputs are copied); or device arrays of uint64 (or
        int64 holding ring elements) on one device.
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
    where = backend.backend_of(a)
    if where == "cuda":
        return _ring_matmul_cuda(a, b, out=out, accumulate=accumulate)
    a, b, out = checks.ring_operands(a, b, out, accumulate)
    if where == "reference":
        return ring_matmul_reference(a, b, out=out, accumulate=accumulate)
    backend.module().ring_matmul(a, b, out, accumulate)
    return out


def _ring_matmul_cuda(a: Any, b: Any, *, out: Any, accumulate: bool) -> Any:
    aptr, adt, ashape, stream, ctx = cuda.info(a, "a")
    if not backend.is_device_array(b):
        raise TypeError(f"a is a GPU array but b is {type(b).__name__}; put both on the same device")
    bptr, bdt, bshape, _, _ = cuda.info(b, "b")
    cuda.same_device(a, b)
    if adt not in ("uint64", "int64") or bdt != adt or len(ashape) != 2 or len(bshape) != 2:
        raise TypeError(f"a and b must be 2-D uint64 (or int64 holding ring elements) of one dtype, got "
                        f"{adt}{ashape} and {bdt}{bshape}")
    if ashape[1] != bshape[0]:
        raise ValueError(f"cannot multiply a {ashape} by b {bshape}: inner sizes differ")
    shape = (ashape[0], bshape[1])
    if out is None:
        if accumulate:
            raise ValueError("accumulate=True needs out (the matrix to add the product to)")
        out = cuda.empty(a, shape, adt)
    optr, odt, oshape, _, _ = cuda.info(out, "out")
    if odt != adt or oshape != shape:
        raise ValueError(f"out must be {adt}{shape}, got {odt}{oshape}")
    with ctx:
        backend.module().ring_matmul_cuda(aptr, bptr, optr, shape[0], ashape[1], shape[1], accumulate, stream)
    return out
