"""A dealer front that fetches the next query's material ahead of it: the offline phase, made explicit.

Every query of one model and input shape asks the dealer for the same sequence of material
(triples, truncation pairs, comparison keys of the same shapes). :class:`PrefetchDealer` forwards
the first query's requests to the real dealer and records their plan; :meth:`PrefetchDealer.prefetch`
then fetches the material of the next query(ies) before the input exists, and also does the
compute parties' input-independent work on it (``A_p F + C_p`` of each matrix triple, see
:func:`medfl.smpc.dealer.triples.offline_part`). A query served from the queue checks every request
against the plan and fails with a clear error if the model or shape changed.

References
----------
.. [1] Beaver, "Precomputing Oblivious Transfer", CRYPTO 1995 (offline/online split).
.. [2] Mohassel and Zhang, "SecureML", IEEE S&P 2017.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from medfl.smpc.dealer.local import Dealer
from medfl.smpc.dealer.triples import MatmulTriple, TruncPair, offline_part
from medfl.smpc.device import SmpcDevice
from medfl.smpc.fss import ReluKeys
from medfl.smpc.ring import MaskedWeight, Shared

__all__ = ["PrefetchDealer"]

_Request = tuple[str, tuple[Any, ...]]


class PrefetchDealer:
    """Serves a :class:`~medfl.smpc.dealer.local.Dealer`'s material from a queue filled ahead of each query.

    Parameters
    ----------
    inner : Dealer
        The dealer that generates the material.
    device : SmpcDevice, optional
        Where the parties' input-independent products run (the host when omitted; give the
        session's device so its resident weights are used); prefetched comparison keys are
        also moved there ahead of the query.

    References
    ----------
    .. [1] Beaver, CRYPTO 1995.
    """

    def __init__(self, inner: Dealer, *, device: SmpcDevice | None = None) -> None:
        """Start with an empty plan; the first query records it."""
        self.inner = inner
        self.device = device
        self._plan: list[tuple[_Request, Any]] = []  # (request, replay arguments)
        self._queue: deque[tuple[_Request, Any]] = deque()
        self._recording = True

    @property
    def ready(self) -> int:
        """Requests waiting in the queue."""
        return len(self._queue)

    def end_query(self) -> None:
        """Close the plan after a recorded query (later requests must come from :meth:`prefetch`)."""
        if self._queue:
            raise ValueError(f"{len(self._queue)} prefetched items were not used; the query did not follow the plan")
        self._recording = False

    def prefetch(self, queries: int = 1) -> None:
        """Fetch the material of ``queries`` more queries now (offline), by the recorded plan."""
        if self._recording or not self._plan:
            raise ValueError("no plan yet: run one query through this dealer and call end_query() first")
        for _ in range(queries):
            for request, args in self._plan:
                self._queue.append((request, self._fetch(request[0], args)))

    def _fetch(self, name: str, args: Any) -> Any:
        if name == "prepared_triple":
            m, w = args
            t = self.inner.matmul_triple(m, w.b)
            return t, offline_part(t, w, self.device)
        item = getattr(self.inner, name)(*args[0], **args[1])
        if name == "relu_keys" and self.device is not None and not self._recording:
            self.device.stage_keys(item.dcf)  # a GPU's copy of the comparison keys, moved offline
        return item

    def _serve(self, request: _Request, args: Any) -> Any:
        if self._queue:
            want, item = self._queue.popleft()
            if want != request:
                raise ValueError(f"query asked the dealer for {request} but the prefetched material is for {want}; "
                                 "the model or input shape changed, start a new PrefetchDealer")
            return item
        if not self._recording:
            raise ValueError(f"no prefetched material left for {request}; call prefetch() before each query")
        self._plan.append((request, args))
        return self._fetch(request[0], args)

    def prepared_triple(self, m: int, w: MaskedWeight) -> tuple[MatmulTriple, Shared]:
        """A matrix triple for ``w`` with each party's ``A_p F + C_p`` already computed."""
        return self._serve(("prepared_triple", (m, id(w.b))), (m, w))  # type: ignore[no-any-return]

    def weight_mask(self, shape: tuple[int, int]) -> Shared:
        """Session-level, never prefetched: forwarded."""
        return self.inner.weight_mask(shape)

    def matmul_triple(self, m: int, b: Shared) -> MatmulTriple:
        """Forwarded (:func:`medfl.smpc.engine.beaver.matmul` asks :meth:`prepared_triple` instead)."""
        return self.inner.matmul_triple(m, b)

    def trunc_pair(self, shape: tuple[int, ...], frac_bits: int) -> TruncPair:
        """A truncation pair, from the queue when prefetched."""
        return self._serve(("trunc_pair", (tuple(shape), frac_bits)),  # type: ignore[no-any-return]
                           ((tuple(shape), frac_bits), {}))

    def relu_keys(self, n: int, *, bits: int = 64) -> ReluKeys:
        """Comparison keys, from the queue when prefetched."""
        return self._serve(("relu_keys", (n, bits)), ((n,), {"bits": bits}))  # type: ignore[no-any-return]

    def mul_triple(self, shape: tuple[int, ...]) -> tuple[Shared, Shared, Shared]:
        """An element-wise triple, from the queue when prefetched."""
        return self._serve(("mul_triple", (tuple(shape),)), ((tuple(shape),), {}))  # type: ignore[no-any-return]
