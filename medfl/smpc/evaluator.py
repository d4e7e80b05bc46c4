"""Runs a torch ``nn.Sequential`` of supported layers on shares, both parties in one process.

The model server's weights are secret-shared and their masks opened once per session
(:meth:`SecureModel.prepare`); each query shares the image, runs the layers, and only the data
owner (party 0) reconstructs the logits. Supported: Conv2d, Linear, ReLU, MaxPool2d(2),
AvgPool2d / AdaptiveAvgPool2d with integer windows, Flatten, Dropout (inference: identity),
and GroupNorm with variance ranges from :func:`calibrate` (run when a model is registered).
Layers run in registration order, which is the forward order of medfl's ``cnn``; models with
skip connections (``resnet18``) need a graph and are not covered yet.

References
----------
.. [1] Ryffel et al., "AriaNN", PoPETs 2022.
.. [2] Mohassel and Zhang, "SecureML", IEEE S&P 2017.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medfl.errors import RingOverflowError
from medfl.smpc import layers, ring
from medfl.smpc.groupnorm import group_norm
from medfl.smpc.layers import Session
from medfl.smpc.sharing import Shared, reconstruct, share

__all__ = ["Calibration", "SecureModel", "calibrate"]

_Step = Callable[[Shared, Session], Shared]


@dataclass(frozen=True)
class Calibration:
    """Activation bounds measured on calibration images when a model is registered for serving.

    Attributes
    ----------
    input_bound : float
        Largest ``|pixel|`` accepted; larger inputs are refused before sharing.
    variances : tuple of (float, float)
        Per GroupNorm (in order), the variance range the Newton iteration is planned for:
        the observed range widened by ``margin`` on both sides.
    """

    input_bound: float
    variances: tuple[tuple[float, float], ...]


def calibrate(model: nn.Module, images: Sequence[np.ndarray], *, margin: float = 4.0) -> Calibration:
    """Measure input and per-GroupNorm variance ranges in plaintext on calibration images.

    References
    ----------
    .. [1] Wu and He, "Group Normalization", ECCV 2018.
    """
    seen: list[list[float]] = []
    hooks = []
    for mod in model.modules():
        if isinstance(mod, nn.GroupNorm):
            seen.append([])
            store = seen[-1]

            def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor, store: list[float] = store,
                     ) -> None:
                g = inp[0].reshape(inp[0].shape[0], int(getattr(m, "num_groups")), -1)  # noqa: B009
                store.extend(g.var(dim=2, unbiased=False).reshape(-1).tolist())

            hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for img in images:
                model(torch.from_numpy(np.asarray(img, np.float32))[None])
    finally:
        for h in hooks:
            h.remove()
    bound = max(float(np.max(np.abs(img))) for img in images) * margin
    return Calibration(bound, tuple((max(min(v) / margin, 1e-6), max(v) * margin) for v in seen))


def _encoded(t: object) -> np.ndarray:
    return ring.encode(np.asarray(t.detach().numpy(), dtype=np.float32))  # type: ignore[attr-defined]


class SecureModel:
    """A model prepared for encrypted inference in one session.

    Parameters
    ----------
    model : nn.Sequential
        The plaintext model (held by the model server).
    session : Session
        Dealer, channel and fractional bits.
    in_shape : tuple of int
        (C, H, W) of one image.

    References
    ----------
    .. [1] Ryffel et al., "AriaNN", PoPETs 2022.
    """

    def __init__(self, model: nn.Module, session: Session, in_shape: tuple[int, int, int],
                 calibration: Calibration | None = None, *,
                 param_share: Callable[[np.ndarray], Shared] = share) -> None:
        """Share the weights and open their masks once (one round per weight).

        ``param_share`` turns an encoded parameter into shares; in one process it is
        :func:`~medfl.smpc.sharing.share`, in a networked party it gives the model server's
        share (the parameter) and the data owner's (zero), see :mod:`medfl.smpc.party`.
        """
        self.session = session
        self._share_param = param_share
        self.in_shape = in_shape
        self.calibration = calibration
        self._gn = 0
        self.steps: list[_Step] = []
        shape: tuple[int, ...] = in_shape
        for mod in model.modules():
            if list(mod.children()):
                continue
            step, shape = self._compile(mod, shape)
            if step is not None:
                self.steps.append(step)

    def _param(self, t: object) -> Shared:
        return self._share_param(_encoded(t))

    def _compile(self, mod: nn.Module, shape: tuple[int, ...]) -> tuple[_Step | None, tuple[int, ...]]:
        s = self.session
        if isinstance(mod, nn.Conv2d):
            k, st, pd = mod.kernel_size[0], mod.stride[0], mod.padding
            p = pd[0] if isinstance(pd, tuple) else 0
            w = layers.prepare_weight(self._param(mod.weight.reshape(mod.out_channels, -1).T), s)
            b = None if mod.bias is None else self._param(mod.bias)
            ho = (shape[1] + 2 * p - k) // st + 1
            wo = (shape[2] + 2 * p - k) // st + 1
            return (lambda x, s_: layers.conv2d(x, w, b, s_, kernel=k, stride=st, padding=p),
                    (mod.out_channels, ho, wo))
        if isinstance(mod, nn.Linear):
            lw = layers.prepare_weight(self._param(mod.weight.T), s)
            lb = None if mod.bias is None else self._param(mod.bias)
            return (lambda x, s_: layers.linear(Shared(x.s0.reshape(1, -1), x.s1.reshape(1, -1)), lw, lb, s_),
                    (mod.out_features,))
        if isinstance(mod, nn.GroupNorm):
            if self.calibration is None or self._gn >= len(self.calibration.variances):
                raise ValueError("GroupNorm needs a calibration (medfl.smpc.evaluator.calibrate) of this model")
            vr = self.calibration.variances[self._gn]
            self._gn += 1
            gamma, beta, groups, eps = self._param(mod.weight), self._param(mod.bias), mod.num_groups, mod.eps
            return (lambda x, s_: group_norm(x, groups, gamma, beta, s_, eps=eps, v_range=vr)), shape
        if isinstance(mod, nn.ReLU):
            return layers.relu_layer, shape
        if isinstance(mod, nn.MaxPool2d):
            return layers.max_pool2d, (shape[0], shape[1] // 2, shape[2] // 2)
        if isinstance(mod, nn.AdaptiveAvgPool2d) and isinstance(mod.output_size, int) \
                and mod.output_size > shape[1] and mod.output_size % shape[1] == 0 and shape[1] == shape[2]:
            # output larger than input: every output cell averages exactly one input cell, so the
            # layer is a local repeat of each share (no rounds), e.g. a 32 px image in medfl's cnn
            r = mod.output_size // shape[1]
            return (lambda x, s_: Shared(*(np.ascontiguousarray(np.repeat(np.repeat(x.of(p), r, axis=1), r, axis=2))
                                           for p in (0, 1)))), (shape[0], mod.output_size, mod.output_size)
        if isinstance(mod, nn.AdaptiveAvgPool2d | nn.AvgPool2d):
            out = mod.output_size if isinstance(mod, nn.AdaptiveAvgPool2d) else None
            k = shape[1] // int(out) if out is not None else int(mod.kernel_size)  # type: ignore[arg-type]
            return (lambda x, s_: layers.avg_pool(x, k, s_)), (shape[0], shape[1] // k, shape[2] // k)
        if isinstance(mod, nn.Flatten | nn.Dropout):
            return None, shape
        raise NotImplementedError(f"layer {type(mod).__name__} is not supported for encrypted inference yet "
                                  f"(supported: Conv2d, Linear, ReLU, MaxPool2d, AvgPool2d, Flatten, Dropout)")

    def check_input(self, image: np.ndarray) -> np.ndarray:
        """Check an image's shape and calibrated range before it is shared; return it encoded."""
        if tuple(image.shape) != self.in_shape:
            raise ValueError(f"image shape {image.shape} != prepared shape {self.in_shape}")
        if self.calibration is not None and float(np.max(np.abs(image))) > self.calibration.input_bound:
            raise RingOverflowError(f"image max |x|={float(np.max(np.abs(image))):.4g} is outside the calibrated "
                                    f"range {self.calibration.input_bound:.4g}; preprocess it as in training")
        return ring.encode(image)

    def forward(self, x: Shared) -> Shared:
        """Run the layers on shares of one encoded image; return shares of the logits."""
        for step in self.steps:
            x = step(x, self.session)
        return x

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Run one (C, H, W) image; return the logits as the data owner reconstructs them."""
        x = self.forward(share(self.check_input(image)))
        return ring.decode(reconstruct(x), frac_bits=self.session.frac_bits).reshape(-1)
