"""Where the dealer's bulk material is generated: the host (NumPy + C++) or a CUDA device.

A :class:`~medfl.smpc.dealer.local.LocalDealer` draws everything through one generator: uniform ring
elements (masks, shares), the random matrix ``A`` of a triple with its product ``A B`` against
the session's weight mask, and DCF keys (ReLU, max-pool, GroupNorm comparisons). Every draw of
ring elements is the ChaCha20 keystream (RFC 8439, nonce and counter zero) of one fresh 32-byte
key from :func:`medfl.csprng.token_bytes`; DCF root seeds are one such draw of ``4 N`` words,
party 0's first.

- :class:`HostGenerator` expands the key with :func:`medfl.csprng.expand` (through
  :func:`medfl.smpc.ring.uniform`), multiplies with the native ring product and makes DCF keys
  with the native ``dcf_gen`` (:func:`medfl.smpc.fss.dcf_gen`): the dealer as it always was.
- :class:`CudaGenerator` expands the same key on the GPU (the ChaCha20 kernel of ``csrc/common``),
  computes ``A B`` there with ``ring_matmul_cuda`` against ``B`` kept resident for the session,
  and the DCF correction words with ``dcf_gen_cuda`` from roots drawn on the device. Only keys,
  thresholds and payloads go up; the material comes back as the host dealer's NumPy arrays.

Both run the same ChaCha20, the same exact ring arithmetic and the same DCF construction, so
for the same keys they give the same bits (the tests seed :mod:`medfl.csprng` to check it).
Neither uses torch's or NumPy's generators.

The generator is chosen like the session's device (:func:`medfl.smpc.device.resolve_device`):
by name or device object, else ``MEDFL_SMPC_DEVICE``, else the host.

References
----------
.. [1] Nir and Langley, "ChaCha20 and Poly1305 for IETF Protocols", RFC 8439, 2018.
.. [2] Boyle et al., "Function Secret Sharing for Mixed-Mode and Fixed-Point Secure Computation",
   EUROCRYPT 2021 (DCF keys).
.. [3] Mohassel and Zhang, "SecureML", IEEE S&P 2017 (matrix triples for a reused weight mask).
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from medfl import csprng, native
from medfl.smpc import fss, ring
from medfl.smpc.device import SmpcDevice, resolve_device
from medfl.smpc.fss import DcfKey

__all__ = ["CudaGenerator", "Generator", "HostGenerator", "generator_for"]

_KEY_BYTES = 32


class Generator(Protocol):
    """What the dealer draws its material with (host or device; NumPy results either way)."""

    name: str

    def uniform(self, shape: tuple[int, ...]) -> np.ndarray:
        """Uniform ring elements of ``shape``: the keystream of one fresh CSPRNG key."""
        ...

    def random_product(self, m: int, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A uniform ``A`` (m x k, one draw) and ``A @ b mod 2^64`` for the clear mask ``b`` (k x n)."""
        ...

    def dcf_gen(self, alpha: np.ndarray, beta: np.ndarray, *, bits: int) -> tuple[DcfKey, DcfKey]:
        """Keys of ``x -> beta [x < alpha]`` as :func:`medfl.smpc.fss.dcf_gen` (roots: one draw)."""
        ...


def generator_for(device: str | SmpcDevice | None = None) -> Generator:
    """Return the generator for a device name or object (``None``: ``MEDFL_SMPC_DEVICE``, else the host).

    Raises
    ------
    ValueError, RuntimeError
        As :func:`medfl.smpc.device.resolve_device` for an unknown name or an unusable GPU.
    """
    if device is not None and not isinstance(device, str):
        if getattr(device, "name", None) == "cuda":
            return CudaGenerator(device.device)  # type: ignore[attr-defined]
        return HostGenerator()
    if resolve_device(device) == "cuda":
        import torch

        return CudaGenerator(torch.device("cuda", torch.cuda.current_device()))
    return HostGenerator()


class HostGenerator:
    """The host: :mod:`medfl.csprng` streams, the native ring product and ``dcf_gen``.

    References
    ----------
    .. [1] RFC 8439; Boyle et al., EUROCRYPT 2021.
    """

    name = "cpu"

    def uniform(self, shape: tuple[int, ...]) -> np.ndarray:
        """See :class:`Generator`."""
        return ring.uniform(shape)

    def random_product(self, m: int, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """See :class:`Generator`."""
        a = ring.uniform((m, int(b.shape[0])))
        return a, ring.matmul(a, b)

    def dcf_gen(self, alpha: np.ndarray, beta: np.ndarray, *, bits: int) -> tuple[DcfKey, DcfKey]:
        """See :class:`Generator`."""
        return fss.dcf_gen(alpha, beta, bits=bits)


class CudaGenerator:
    """A CUDA device: keystreams, triple products and DCF keys on the GPU, results on the host.

    Parameters
    ----------
    device : torch.device
        Where the work runs (on torch's current stream there).

    Notes
    -----
    The clear weight masks ``B`` the triples multiply by are uploaded once and kept on the
    device (by identity, holding a reference) for the life of this object, i.e. of the dealer
    session. The kernels are methods so tests can drive the plumbing with host stand-ins.

    References
    ----------
    .. [1] RFC 8439; Boyle et al., EUROCRYPT 2021; Mohassel and Zhang, IEEE S&P 2017.
    """

    name = "cuda"

    def __init__(self, device: Any) -> None:
        self.device = device
        self._b: dict[int, tuple[np.ndarray, Any]] = {}

    # ---- transfers (int64 views of the ring's bits; torch's arithmetic is not used)
    def _put(self, a: np.ndarray) -> Any:
        import torch

        a = np.ascontiguousarray(a)
        if not a.flags.writeable:
            a = a.copy()
        return torch.from_numpy(a.view(np.int64) if a.dtype == np.uint64 else a).to(self.device)

    @staticmethod
    def _get(t: Any) -> np.ndarray:
        host = np.asarray(t.cpu().numpy())
        return host.view(np.uint64) if host.dtype == np.int64 else host

    # ---- kernels (overridable so the plumbing can be tested without a GPU)
    def _keystream(self, key: bytes, nbytes: int) -> Any:
        import torch

        buf = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        if nbytes:
            native.keystream(key, buf)
        return buf

    def _matmul(self, a: Any, b: Any) -> Any:
        return native.ring_matmul(a, b)

    def _dcf_gen(self, alpha: Any, beta: Any, roots: Any, bits: int) -> tuple[Any, Any, Any, Any]:
        return native.dcf_gen(alpha, beta, roots, bits)

    # ---- draws
    def _words(self, shape: tuple[int, ...]) -> Any:
        """One draw of ring words on the device (an int64 tensor of ``shape``)."""
        import torch

        n = math.prod(shape)
        stream = self._keystream(csprng.token_bytes(_KEY_BYTES), 8 * n)  # one key per draw, as on the host
        words = stream.view(torch.int64) if n else torch.empty(0, dtype=torch.int64, device=self.device)
        return words.reshape(shape)

    def _resident(self, b: np.ndarray) -> Any:
        hit = self._b.get(id(b))
        if hit is None or hit[0] is not b:
            hit = (b, self._put(b))
            self._b[id(b)] = hit
        return hit[1]

    def uniform(self, shape: tuple[int, ...]) -> np.ndarray:
        """See :class:`Generator`."""
        shape = tuple(int(d) for d in shape)
        return self._get(self._words(shape)).reshape(shape)

    def random_product(self, m: int, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """See :class:`Generator`; ``A`` is drawn and multiplied on the device."""
        if b.dtype != np.uint64 or b.ndim != 2:
            raise TypeError(f"the weight mask must be a 2-D uint64 array, got {b.dtype}{b.shape}")
        a = self._words((int(m), int(b.shape[0])))
        c = self._matmul(a, self._resident(b))
        return self._get(a), self._get(c)

    def dcf_gen(self, alpha: np.ndarray, beta: np.ndarray, *, bits: int) -> tuple[DcfKey, DcfKey]:
        """See :class:`Generator`; roots and correction words made on the device."""
        alpha, b = fss.dcf_inputs(alpha, beta, bits)
        n = alpha.size
        roots = self._words((2, n, 2))
        s_cw, v_cw, t_cw, final = self._dcf_gen(self._put(alpha), self._put(b), roots, bits)
        r = self._get(roots)
        s_cw, v_cw, t_cw, final = (self._get(v) for v in (s_cw, v_cw, t_cw, final))
        return DcfKey(r[0], s_cw, v_cw, t_cw, final), DcfKey(r[1], s_cw, v_cw, t_cw, final)
