"""Where a session's heavy kernels run: the host (NumPy + C++) or a CUDA device (torch tensors).

Two kinds of work dominate an encrypted query: the ring matrix products of Conv2d / Linear
(Beaver products against the session's masked weights) and the DCF evaluations of ReLU,
max-pool and GroupNorm's Newton start. :class:`HostDevice` runs them through
:mod:`medfl.native` on NumPy arrays (the default). :class:`CudaDevice` runs them with the CUDA
kernels of ``csrc/smpc`` on the current torch stream: the weight operands of the online
products (``F + B_0`` beside ``B_1``) and of the offline ones (``F``) are uploaded once per
weight and session and stay resident; each product moves its left operand to the device and
the product back, each comparison its opened points and its keys (the keys ahead of the query
when a :class:`~medfl.smpc.dealer.prefetch.PrefetchDealer` with this device fetched them). Shares stay
NumPy arrays between operations: openings, truncations, im2col and the element-wise algebra after
a DCF run on the host. Both kernels are exact in Z_2^64, so both devices give the same bits for
the same shares and dealer material. The dealer has its own device (a
:class:`~medfl.smpc.dealer.local.LocalDealer` given this one generates its material on it, see
:mod:`medfl.smpc.dealer.generator`).

The device is chosen by name: ``device="cpu" | "cuda"`` where a session is built, or
``MEDFL_SMPC_DEVICE`` (see :mod:`medfl.envvars`); the host is the default.

References
----------
.. [1] Mohassel and Zhang, "SecureML", IEEE S&P 2017 (Beaver products with a reused weight mask).
.. [2] Boyle et al., "Function Secret Sharing for Mixed-Mode and Fixed-Point Secure Computation",
   EUROCRYPT 2021 (DCF).
"""

from __future__ import annotations

import difflib
import logging
import weakref
from typing import Any, NamedTuple, Protocol

import numpy as np

from medfl import envvars, native
from medfl.smpc import ring
from medfl.smpc.fss import DcfKey, dcf_eval
from medfl.smpc.ring import MaskedWeight, Shared

__all__ = ["DEVICES", "CudaDevice", "HostDevice", "SmpcDevice", "resolve_device", "smpc_device"]

log = logging.getLogger(__name__)

DEVICES = ("cpu", "cuda")


class SmpcDevice(Protocol):
    """The kernels a session runs on one device (both parties' halves, as in the in-process engine)."""

    name: str

    def adopt(self, w: MaskedWeight) -> None:
        """Prepare the session's masked weight ``w`` (``F``, its mask ``B``) for later products."""
        ...

    def online_products(self, e: np.ndarray, w: MaskedWeight, b: Shared) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(E (F + B_0), E B_1) mod 2^64`` for the opened ``E`` (m x k) and mask ``b``."""
        ...

    def offline_products(self, a: Shared, w: MaskedWeight) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(A_0 F, A_1 F) mod 2^64`` for the triple's shares ``a`` (m x k each)."""
        ...

    def dcf_eval_pair(self, keys: tuple[DcfKey, DcfKey], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Both parties' DCF outputs at the public points ``x`` (as :func:`medfl.smpc.fss.dcf_eval`)."""
        ...

    def dcf_eval(self, party: int, key: DcfKey, x: np.ndarray) -> np.ndarray:
        """One party's DCF output at the public points ``x`` (as :func:`medfl.smpc.fss.dcf_eval`)."""
        ...

    def stage_keys(self, keys: tuple[DcfKey, DcfKey]) -> None:
        """Move a comparison's keys where they will be evaluated, ahead of the query (offline)."""
        ...


def resolve_device(device: str | None = None) -> str:
    """Return the checked device name: ``device``, else ``MEDFL_SMPC_DEVICE``, else ``"cpu"``.

    Raises
    ------
    ValueError
        Unknown name, or ``MEDFL_NATIVE`` forces host kernels while ``cuda`` is asked.
    RuntimeError
        ``cuda`` is asked but medfl._native was built without CUDA, or torch sees no GPU.
    """
    source = "device" if device is not None else "MEDFL_SMPC_DEVICE"
    raw = device if device is not None else envvars.get("MEDFL_SMPC_DEVICE", "cpu")
    if not isinstance(raw, str):
        raise TypeError(f"{source} must be a string ('cpu' or 'cuda'), got {type(raw).__name__} {raw!r}")
    name = raw.strip().lower()
    if name not in DEVICES:
        close = difflib.get_close_matches(name, DEVICES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{source}={raw!r} is not an SMPC device; use one of {', '.join(DEVICES)}{hint}")
    if name == "cuda":
        _check_cuda(source)
    return name


def _check_cuda(source: str) -> None:
    native.active_backend(device=True)  # raises native's own errors: forced host kernels, or no CUDA build
    try:
        import torch
    except ImportError:
        raise RuntimeError(f"{source}='cuda' needs torch with CUDA, which is not installed; use 'cpu'") from None
    if not torch.cuda.is_available():
        raise RuntimeError(f"{source}='cuda' but torch sees no GPU (torch.cuda.is_available() is False: no device, "
                           "or a CPU-only torch build); use 'cpu' or install a CUDA build of torch")


def smpc_device(device: str | None = None) -> SmpcDevice:
    """Return a fresh device for one session by name (see :func:`resolve_device`).

    References
    ----------
    .. [1] Mohassel and Zhang, "SecureML", IEEE S&P 2017.
    """
    if resolve_device(device) == "cuda":
        import torch

        return CudaDevice(torch.device("cuda", torch.cuda.current_device()))
    return HostDevice()


class HostDevice:
    """The host: NumPy arrays through :mod:`medfl.native` (C++ kernels when built).

    References
    ----------
    .. [1] Goto and van de Geijn, "Anatomy of High-Performance Matrix Multiplication", ACM TOMS 2008.
    """

    name = "cpu"

    def adopt(self, w: MaskedWeight) -> None:
        """Nothing to prepare on the host."""

    def online_products(self, e: np.ndarray, w: MaskedWeight, b: Shared) -> tuple[np.ndarray, np.ndarray]:
        """See :class:`SmpcDevice`."""
        return ring.matmul(e, w.f + b.s0), ring.matmul(e, b.s1)

    def offline_products(self, a: Shared, w: MaskedWeight) -> tuple[np.ndarray, np.ndarray]:
        """See :class:`SmpcDevice`."""
        return ring.matmul(a.s0, w.f), ring.matmul(a.s1, w.f)

    def dcf_eval_pair(self, keys: tuple[DcfKey, DcfKey], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """See :class:`SmpcDevice`."""
        return dcf_eval(0, keys[0], x), dcf_eval(1, keys[1], x)

    def dcf_eval(self, party: int, key: DcfKey, x: np.ndarray) -> np.ndarray:
        """See :class:`SmpcDevice`."""
        return dcf_eval(party, key, x)

    def stage_keys(self, keys: tuple[DcfKey, DcfKey]) -> None:
        """Nothing to move on the host."""


class _DeviceKey(NamedTuple):
    seed: Any
    s_cw: Any
    v_cw: Any
    t_cw: Any
    final: Any


class CudaDevice:
    """A CUDA device: torch tensors (int64 views of the ring's bits) on the current stream.

    Parameters
    ----------
    device : torch.device
        Where the tensors live.

    Notes
    -----
    The resident weights are kept per :class:`~medfl.smpc.ring.sharing.MaskedWeight` (by identity,
    holding a reference) for the life of this object, i.e. of the session: about three times
    the model's parameters in 8-byte words (``F``, ``F + B_0``, ``B_1``).

    References
    ----------
    .. [1] Mohassel and Zhang, "SecureML", IEEE S&P 2017.
    """

    name = "cuda"

    def __init__(self, device: Any) -> None:
        self.device = device
        self._f: dict[int, tuple[MaskedWeight, Any]] = {}
        self._online: dict[int, tuple[MaskedWeight, Shared, Any]] = {}
        self._staged: dict[int, tuple[weakref.ref[DcfKey], list[list[Any]]]] = {}

    # ---- transfers (int64 views: torch's int64 arithmetic is not used, only the bits move)
    def _put(self, a: np.ndarray) -> Any:
        import torch

        a = np.ascontiguousarray(a)
        if not a.flags.writeable:  # torch.from_numpy wants a writable buffer
            a = a.copy()
        host = torch.from_numpy(a.view(np.int64) if a.dtype == np.uint64 else a)
        return host.to(self.device)

    @staticmethod
    def _get(t: Any) -> np.ndarray:
        return np.asarray(t.cpu().numpy()).view(np.uint64)

    # ---- kernels (overridable so the plumbing can be tested without a GPU)
    def _matmul(self, a: Any, b: Any) -> Any:
        return native.ring_matmul(a, b)

    def _dcf(self, party: int, key: _DeviceKey, x: Any) -> Any:
        return native.dcf_eval(party, key, x)

    # ---- resident weights
    def _f_of(self, w: MaskedWeight) -> Any:
        hit = self._f.get(id(w))
        if hit is None or hit[0] is not w:
            hit = (w, self._put(w.f))
            self._f[id(w)] = hit
        return hit[1]

    def _online_of(self, w: MaskedWeight, b: Shared) -> Any:
        """``[F + B_0 | B_1]`` (k x 2n) on the device, for one launch per product."""
        hit = self._online.get(id(w))
        if hit is None or hit[0] is not w or hit[1] is not b:
            if hit is not None:
                log.debug("weight mask changed for a resident weight; uploading it again")
            hit = (w, b, self._put(np.concatenate([w.f + b.s0, b.s1], axis=1)))
            self._online[id(w)] = hit
        return hit[2]

    def adopt(self, w: MaskedWeight) -> None:
        """Upload ``F`` and ``[F + B_0 | B_1]`` once for the session."""
        self._f_of(w)
        self._online_of(w, w.b)

    def online_products(self, e: np.ndarray, w: MaskedWeight, b: Shared) -> tuple[np.ndarray, np.ndarray]:
        """See :class:`SmpcDevice`; both parties' products in one launch against the resident weights."""
        n = w.f.shape[1]
        z = self._get(self._matmul(self._put(e), self._online_of(w, b)))
        return z[:, :n], z[:, n:]

    def offline_products(self, a: Shared, w: MaskedWeight) -> tuple[np.ndarray, np.ndarray]:
        """See :class:`SmpcDevice`; ``[A_0; A_1] F`` in one launch against the resident ``F``."""
        m = a.s0.shape[0]
        z = self._get(self._matmul(self._put(np.concatenate([a.s0, a.s1])), self._f_of(w)))
        return z[:m], z[m:]

    def dcf_eval(self, party: int, key: DcfKey, x: np.ndarray) -> np.ndarray:
        """See :class:`SmpcDevice`."""
        if party not in (0, 1):
            raise ValueError(f"party must be 0 or 1, got {party}")
        return self._dcf_many((key, key), x, (party,))[0]

    def dcf_eval_pair(self, keys: tuple[DcfKey, DcfKey], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """See :class:`SmpcDevice`; correction words the two keys share are uploaded once."""
        w0, w1 = self._dcf_many(keys, x, (0, 1))
        return w0, w1

    def _upload_keys(self, keys: tuple[DcfKey, DcfKey], parties: tuple[int, ...]) -> list[list[Any]]:
        """Per party, the key's five arrays on the device (arrays the keys share uploaded once)."""
        moved: dict[int, tuple[np.ndarray, Any]] = {}
        out = []
        for party in parties:
            key = keys[party]
            parts = []
            for arr in (key.seed, key.s_cw, key.v_cw, key.t_cw, key.final):
                if id(arr) not in moved:
                    moved[id(arr)] = (arr, self._put(arr))
                parts.append(moved[id(arr)][1])
            out.append(parts)
        return out

    def stage_keys(self, keys: tuple[DcfKey, DcfKey]) -> None:
        """Upload both parties' keys now (offline); the next evaluation of these keys uses them, once.

        Keys that are never evaluated as a pair (GroupNorm evaluates gathered rows) are dropped
        from the device when the host keys are.
        """
        slot = id(keys[0])
        self._staged[slot] = (weakref.ref(keys[0]), self._upload_keys(keys, (0, 1)))
        weakref.finalize(keys[0], self._staged.pop, slot, None)

    def _dcf_many(self, keys: tuple[DcfKey, DcfKey], x: np.ndarray, parties: tuple[int, ...]) -> list[np.ndarray]:
        x = np.asarray(x, dtype=np.uint64).reshape(-1)
        if x.size != keys[0].seed.shape[0]:
            raise ValueError(f"{x.size} points for {keys[0].seed.shape[0]} keys")
        dx = self._put(x)
        staged = self._staged.get(id(keys[0])) if parties == (0, 1) else None
        if staged is not None and staged[0]() is keys[0]:
            del self._staged[id(keys[0])]
            uploaded = staged[1]
        else:
            uploaded = self._upload_keys(keys, parties)
        outs = []
        for party, parts in zip(parties, uploaded, strict=True):
            out = self._get(self._dcf(party, _DeviceKey(*parts), dx))
            outs.append(out[:, 0] if keys[party].payload == 1 else out)
        return outs
