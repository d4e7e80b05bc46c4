"""Runs a torch ``nn.Sequential`` of supported layers on shares, both parties in one process.

The model server's weights are secret-shared and their masks opened once per session
(:meth:`SecureModel.prepare`); each query shares the image, runs the layers, and only the data
owner (party 0) reconstructs the logits. Supported: Conv2d, Linear, ReLU, MaxPool2d(2),
AvgPool2d / AdaptiveAvgPool2d with integer windows, Flatten, Dropout (inference: identity),
GroupNorm with variance ranges from :func:`calibrate` (run when a model is registered), and
medfl's ResNet ``BasicBlock`` (two convolutions and a residual add). Layers run in registration
order, which is the forward order of medfl's ``cnn`` and ``resnet18``.

Two plans make the comparisons cheap. A ReLU directly followed by a max pool runs after it
(``maxpool(relu(x)) = relu(maxpool(x))``, both monotone), on a quarter of the elements. With a
calibration, each comparison's DCF covers only the planned range of its inputs: ``bits`` from the
largest calibrated ``|input|`` times :data:`ACT_MARGIN`, plus a sign bit and one bit for the
differences a max pool compares (see :mod:`medfl.smpc.fss.comparison`); inputs outside the calibrated
pixel range are refused before sharing. Without a calibration every comparison covers the whole
ring (64 bits).

References
----------
.. [1] Ryffel et al., "AriaNN", PoPETs 2022.
.. [2] Mohassel and Zhang, "SecureML", IEEE S&P 2017.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medfl.errors import RingOverflowError
from medfl.models.resnet import BasicBlock
from medfl.smpc import ring
from medfl.smpc.device import smpc_device
from medfl.smpc.engine import layers
from medfl.smpc.engine.groupnorm import group_norm
from medfl.smpc.engine.layers import Session
from medfl.smpc.engine.truncation import HEADROOM_BITS
from medfl.smpc.fss import ACT_MARGIN, comparison_bits
from medfl.smpc.ring import Shared, reconstruct, share

__all__ = ["ACT_MARGIN", "Calibration", "SecureModel", "calibrate", "comparison_bits", "fold_batchnorm"]



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
    act_bounds : tuple of float, optional
        Per ReLU and MaxPool2d module (in ``model.modules()`` order), the largest ``|input|``
        seen (a module used twice, like a ResNet block's ReLU, keeps the larger).
    """

    input_bound: float
    variances: tuple[tuple[float, float], ...]
    act_bounds: tuple[float, ...] | None = None


def calibrate(model: nn.Module, images: Sequence[np.ndarray], *, margin: float = 4.0) -> Calibration:
    """Measure input and per-GroupNorm variance ranges in plaintext on calibration images.

    References
    ----------
    .. [1] Wu and He, "Group Normalization", ECCV 2018.
    """
    seen: list[list[float]] = []
    acts: list[list[float]] = []
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
        elif isinstance(mod, nn.ReLU | nn.MaxPool2d):
            acts.append([0.0])
            box = acts[-1]

            def act_hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor, box: list[float] = box,
                         ) -> None:
                box.append(float(inp[0].abs().max()))

            hooks.append(mod.register_forward_hook(act_hook))
    try:
        with torch.no_grad():
            for img in images:
                model(torch.from_numpy(np.asarray(img, np.float32))[None])
    finally:
        for h in hooks:
            h.remove()
    bound = max(float(np.max(np.abs(img))) for img in images) * margin
    return Calibration(bound, tuple((max(min(v) / margin, 1e-6), max(v) * margin) for v in seen),
                       tuple(max(a) for a in acts))


def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # type: ignore[operator, arg-type]
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)  # type: ignore[arg-type]
    conv.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    conv.bias = nn.Parameter(bn.bias + (bias - bn.running_mean) * scale)  # type: ignore[operator]


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Return a copy of ``model`` with every BatchNorm2d that follows a Conv2d folded into it (inference).

    The model server does this in plaintext before sharing: BatchNorm at inference is a per-channel
    affine map, so ``bn(conv(x))`` is one convolution with scaled weights and a bias, and the
    encrypted model pays nothing for it. Pairs are adjacent modules of a Sequential and
    ``(conv1, norm1)``, ``(conv2, norm2)`` of a ResNet BasicBlock; folded norms become Identity.

    References
    ----------
    .. [1] Ioffe and Szegedy, "Batch Normalization", ICML 2015 (inference-time affine map).
    """
    import copy

    out = copy.deepcopy(model).eval()
    with torch.no_grad():
        for mod in out.modules():
            if isinstance(mod, BasicBlock):
                for c, n in (("conv1", "norm1"), ("conv2", "norm2")):
                    if isinstance(getattr(mod, n), nn.BatchNorm2d):
                        _fold_into(getattr(mod, c), getattr(mod, n))
                        setattr(mod, n, nn.Identity())
            elif isinstance(mod, nn.Sequential):
                names = list(mod._modules)
                for a, b in zip(names, names[1:], strict=False):
                    conv, bn = mod._modules[a], mod._modules[b]
                    if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                        _fold_into(conv, bn)
                        mod._modules[b] = nn.Identity()
    return out


def _units(module: nn.Module) -> Iterator[nn.Module]:
    """Leaf modules in registration (forward) order; a ResNet BasicBlock is one unit."""
    for child in module.children():
        if isinstance(child, BasicBlock) or not list(child.children()):
            yield child
        else:
            yield from _units(child)


def _identity(x: Shared, s: Session) -> Shared:
    return x


def _encoded(t: object, frac_bits: int) -> np.ndarray:
    return ring.encode(np.asarray(t.detach().numpy(), dtype=np.float32),  # type: ignore[attr-defined]
                       frac_bits=frac_bits)


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
    calibration : Calibration, optional
        Activation and variance ranges (needed for GroupNorm; narrows the comparisons).
    param_share : callable, optional
        How an encoded parameter becomes shares (see :meth:`__init__`).
    device : {"cpu", "cuda"}, optional
        Where the ring products and comparisons run (:mod:`medfl.smpc.device`); replaces the
        session's device when given. The logits are bit-identical on both for the same shares
        and dealer material. A :class:`~medfl.smpc.dealer.prefetch.PrefetchDealer` in the session
        does its offline products where its own ``device`` says, and a
        :class:`~medfl.smpc.dealer.LocalDealer` generates where its own ``device`` says; to have
        them on the GPU, build one device with :func:`medfl.smpc.device.smpc_device` and give it
        to all of them instead.

    References
    ----------
    .. [1] Ryffel et al., "AriaNN", PoPETs 2022.
    """

    def __init__(self, model: nn.Module, session: Session, in_shape: tuple[int, int, int],
                 calibration: Calibration | None = None, *,
                 param_share: Callable[[np.ndarray], Shared] = share, device: str | None = None) -> None:
        """Share the weights and open their masks once (one round per weight).

        ``param_share`` turns an encoded parameter into shares; in one process it is
        :func:`~medfl.smpc.ring.sharing.share`, in a networked party it gives the model server's
        share (the parameter) and the data owner's (zero), see :mod:`medfl.smpc.session.party`.
        """
        if device is not None:
            session = dataclasses.replace(session, device=smpc_device(device))
        self.session = session
        self._share_param = param_share
        self.in_shape = in_shape
        self.calibration = calibration
        self._gn = 0
        self._bounds: dict[int, float] = {}
        if calibration is not None and calibration.act_bounds is not None:
            acts = [m for m in model.modules() if isinstance(m, nn.ReLU | nn.MaxPool2d)]
            if len(acts) != len(calibration.act_bounds):
                raise ValueError(f"calibration has {len(calibration.act_bounds)} activation bounds but the model has "
                                 f"{len(acts)} ReLU/MaxPool2d modules; calibrate this model")
            self._bounds = {id(m): b for m, b in zip(acts, calibration.act_bounds, strict=True)}
        self.steps: list[_Step] = []
        units = list(_units(model))
        shape: tuple[int, ...] = in_shape
        i = 0
        while i < len(units):
            mod, nxt = units[i], units[i + 1] if i + 1 < len(units) else None
            step: _Step | None
            if isinstance(mod, nn.ReLU) and isinstance(nxt, nn.MaxPool2d):
                step, shape = self._pool(nxt, shape, relu_before=mod)  # relu(maxpool(x)) = maxpool(relu(x))
                i += 2
            else:
                step, shape = self._compile(mod, shape)
                i += 1
            if step is not None:
                self.steps.append(step)

    def _param(self, t: object) -> Shared:
        return self._share_param(_encoded(t, self.session.frac_bits))

    def _bits(self, mod: nn.Module) -> int:
        return comparison_bits(self._bounds.get(id(mod)), self.session.frac_bits)

    def _pool(self, mod: nn.MaxPool2d, shape: tuple[int, ...], relu_before: nn.ReLU | None,
              ) -> tuple[_Step, tuple[int, ...]]:
        k, st, pd = (int(v if isinstance(v, int) else v[0]) for v in (mod.kernel_size, mod.stride, mod.padding))
        if pd and relu_before is None:
            raise NotImplementedError("MaxPool2d with padding is supported only right after a ReLU (zero padding is "
                                      "exact there)")
        bits = self._bits(relu_before if relu_before is not None else mod)
        out = (shape[0], (shape[1] + 2 * pd - k) // st + 1, (shape[2] + 2 * pd - k) // st + 1)
        if relu_before is None:
            return (lambda x, s_: layers.max_pool2d(x, s_, kernel=k, stride=st, padding=pd, bits=bits)), out
        return (lambda x, s_: layers.relu_layer(layers.max_pool2d(x, s_, kernel=k, stride=st, padding=pd, bits=bits),
                                                s_, bits=bits)), out

    def _block(self, blk: BasicBlock, shape: tuple[int, ...]) -> tuple[_Step, tuple[int, ...]]:
        c1, mid = self._compile(blk.conv1, shape)
        n1 = self._compile(blk.norm1, mid)[0] or _identity
        c2, out = self._compile(blk.conv2, mid)
        n2 = self._compile(blk.norm2, out)[0] or _identity
        side: list[_Step] = []
        if isinstance(blk.shortcut, nn.Sequential):
            for m in blk.shortcut:
                st, _ = self._compile(m, shape)
                if st is not None:
                    side.append(st)
        bits = self._bits(blk.relu)

        def step(x: Shared, s_: Session) -> Shared:
            h = layers.relu_layer(n1(c1(x, s_), s_), s_, bits=bits)  # type: ignore[misc]
            h = n2(c2(h, s_), s_)  # type: ignore[misc]  # (a conv always compiles to a step)
            for st in side:
                x = st(x, s_)
            return layers.relu_layer(layers.add(h, x), s_, bits=bits)

        return step, out

    def _compile(self, mod: nn.Module, shape: tuple[int, ...]) -> tuple[_Step | None, tuple[int, ...]]:
        s = self.session
        if isinstance(mod, BasicBlock):
            return self._block(mod, shape)
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
            n = shape[0] // mod.num_groups * int(np.prod(shape[1:]))
            need = layers.divide_headroom_bits(vr[1] / 2 + mod.eps, n, self.session.frac_bits)
            if need >= HEADROOM_BITS:
                raise RingOverflowError(
                    f"GroupNorm #{self._gn} averages {n} elements with calibrated variances up to {vr[1]:.4g}: at "
                    f"frac_bits={self.session.frac_bits} its variance needs {need:.1f} bits of the ring's "
                    f"{HEADROOM_BITS}-bit headroom and would wrap; use fewer fractional bits (16 is the default)")
            gamma, beta, groups, eps = self._param(mod.weight), self._param(mod.bias), mod.num_groups, mod.eps
            return (lambda x, s_: group_norm(x, groups, gamma, beta, s_, eps=eps, v_range=vr)), shape
        if isinstance(mod, nn.ReLU):
            bits = self._bits(mod)
            return (lambda x, s_: layers.relu_layer(x, s_, bits=bits)), shape
        if isinstance(mod, nn.MaxPool2d):
            return self._pool(mod, shape, relu_before=None)
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
            if k < 1:
                raise ValueError(f"{type(mod).__name__} to {out} does not fit a {shape[1]}x{shape[2]} map; use a "
                                 "larger image")
            return (lambda x, s_: layers.avg_pool(x, k, s_)), (shape[0], shape[1] // k, shape[2] // k)
        if isinstance(mod, nn.Flatten | nn.Dropout | nn.Identity):
            return None, shape
        if isinstance(mod, nn.BatchNorm2d):
            raise NotImplementedError("BatchNorm2d must follow a Conv2d and be folded into it first: "
                                      "SecureModel(medfl.smpc.evaluator.fold_batchnorm(model), ...)")
        raise NotImplementedError(f"layer {type(mod).__name__} is not supported for encrypted inference yet "
                                  f"(supported: Conv2d, Linear, ReLU, MaxPool2d, AvgPool2d, GroupNorm, Flatten, "
                                  f"Dropout, medfl's ResNet BasicBlock)")

    def check_input(self, image: np.ndarray) -> np.ndarray:
        """Check an image's shape and calibrated range before it is shared; return it encoded."""
        if tuple(image.shape) != self.in_shape:
            raise ValueError(f"image shape {image.shape} != prepared shape {self.in_shape}")
        if self.calibration is not None and float(np.max(np.abs(image))) > self.calibration.input_bound:
            raise RingOverflowError(f"image max |x|={float(np.max(np.abs(image))):.4g} is outside the calibrated "
                                    f"range {self.calibration.input_bound:.4g}; preprocess it as in training")
        return ring.encode(image, frac_bits=self.session.frac_bits)

    def forward(self, x: Shared) -> Shared:
        """Run the layers on shares of one encoded image; return shares of the logits."""
        for step in self.steps:
            x = step(x, self.session)
        return x

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Run one (C, H, W) image; return the logits as the data owner reconstructs them."""
        x = self.forward(share(self.check_input(image)))
        return ring.decode(reconstruct(x), frac_bits=self.session.frac_bits).reshape(-1)
