"""The multi-scale image Glow (Kingma & Dhariwal, 2018)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from glowflow.layers.base import MEMORY_MODES, FlowSequence, zero_logdet
from glowflow.layers.coupling import CONDITIONERS, MASKS
from glowflow.layers.dequantization import (
    UniformDequantization,
    VariationalDequantization,
    bits_per_dim,
    check_discrete,
)
from glowflow.layers.priors import GaussianPrior, Split
from glowflow.layers.reshape import Squeeze
from glowflow.models.base import FlowModel, check_choice, make_step

DEQUANTIZATIONS = ("uniform", "variational")


class Glow(FlowModel):
    """Multi-scale Glow over images of shape ``in_shape = (C, H, W)``.

    Architecture: ``levels`` times [Squeeze -> ``steps`` x (ActNorm -> 1x1 conv -> coupling) -> Split], where the
    last level ends in a learned Gaussian prior instead of a split. Each Split factors out half of the channels
    under a Gaussian whose mean and log-scale come from a zero-initialised conv of the kept half (and of the
    label, for class-conditional models). With ``num_classes`` set, the label also conditions every coupling.

    Data convention (see ``glowflow.layers.dequantization``): continuous inputs lie in [-0.5, 0.5); discrete
    pixels ``k`` in {0, ..., num_bins - 1} map to ``x = (k + u) / num_bins - 0.5``.

    Latents: ``encode`` returns one tensor per level, finest first - shapes (2C, H/2, W/2), (4C, H/4, W/4), ...,
    and (2^(L+1) C, H/2^L, W/2^L) at the top - standard normal under the model.

    Args:
        in_shape: (C, H, W); H and W must be divisible by 2**levels.
        levels: L, the number of scales.
        steps: K, steps of flow per level.
        hidden: width of the coupling conditioners.
        coupling: ``"affine"`` or ``"additive"``.
        permutation: ``"lu"`` (LU 1x1 conv), ``"conv"`` (dense 1x1 conv), ``"shuffle"`` or ``"reverse"``.
        conditioner: ``"glow"`` (3x3 -> 1x1 -> zero 3x3 convs) or ``"gated"`` (gated residual network).
        mask: ``"channel"`` (Glow) or ``"checkerboard"`` (alternating parity, RealNVP).
        num_classes: make the model class-conditional on labels in [0, num_classes).
        num_bins: grey levels per dimension of the discrete data scored by :meth:`bits_per_dim`: ``2**n_bits``
            for n-bit images (256 for 8-bit, 32 for 5-bit), 17 for scikit-learn's 8x8 digits.
        dequantization: ``"uniform"`` or ``"variational"`` (Flow++).
        precision: ``"fp32"`` or ``"bf16"`` (conditioners under bf16 autocast; the invertible path stays fp32).
        memory: how training stores activations of the steps of flow: ``"standard"``, ``"checkpoint"``
            (``torch.utils.checkpoint`` per layer) or ``"invertible"`` (inputs rebuilt by the exact inverse during
            backward, so stored activations do not grow with ``steps``); see ``glowflow.layers.memory``.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        levels: int = 3,
        steps: int = 32,
        hidden: int = 512,
        coupling: str = "affine",
        permutation: str = "lu",
        conditioner: str = "glow",
        mask: str = "channel",
        num_classes: int | None = None,
        num_bins: int = 256,
        dequantization: str = "uniform",
        precision: str = "fp32",
        memory: str = "standard",
    ) -> None:
        super().__init__()
        if len(in_shape) != 3 or any(int(s) != s or s < 1 for s in in_shape):
            raise ValueError(f"in_shape must be (C, H, W) with positive integers, got {in_shape}")
        c, h, w = (int(s) for s in in_shape)
        for name, value in (("levels", levels), ("steps", steps), ("hidden", hidden)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if h % 2**levels or w % 2**levels:
            raise ValueError(
                f"spatial size {h}x{w} is not divisible by 2**levels = {2**levels} (levels={levels}); "
                "pad or crop the images, or use fewer levels"
            )
        if num_classes is not None and (int(num_classes) != num_classes or num_classes < 1):
            raise ValueError(f"num_classes must be a positive integer or None, got {num_classes}")
        check_choice("conditioner", conditioner, CONDITIONERS[:2])
        check_choice("mask", mask, MASKS)
        check_choice("dequantization", dequantization, DEQUANTIZATIONS)
        check_choice("memory", memory, MEMORY_MODES)

        self.data_shape = (c, h, w)
        self.num_classes = num_classes
        self.config = dict(
            in_shape=(c, h, w), levels=levels, steps=steps, hidden=hidden, coupling=coupling,
            permutation=permutation, conditioner=conditioner, mask=mask, num_classes=num_classes,
            num_bins=num_bins, dequantization=dequantization, precision=precision, memory=memory,
        )  # fmt: skip
        cond_features = num_classes or 0

        self.latent_shapes: list[tuple[int, ...]] = []
        levels_: list[FlowSequence] = []
        for level in range(levels):
            c, h, w = 4 * c, h // 2, w // 2
            flow_steps = FlowSequence(
                *[
                    make_step(
                        c,
                        hidden,
                        coupling=coupling,
                        permutation=permutation,
                        conditioner=conditioner,
                        mask=mask,
                        parity=k % 2 if mask == "checkerboard" else 0,
                        cond_features=cond_features,
                        precision=precision,
                    )  # fmt: skip
                    for k in range(steps)
                ],
                memory=memory,
            )
            if level < levels - 1:
                split = Split(c, cond_features)
                levels_.append(FlowSequence(Squeeze(), flow_steps, split))
                self.latent_shapes.append((split.n_out, h, w))
                c = split.n_keep
            else:
                levels_.append(FlowSequence(Squeeze(), flow_steps, GaussianPrior((c, h, w), cond_features)))
                self.latent_shapes.append((c, h, w))
        self.levels = torch.nn.ModuleList(levels_)
        self.bijection = self.levels

        if dequantization == "uniform":
            self.dequantizer: UniformDequantization | VariationalDequantization = UniformDequantization(num_bins)
        else:
            self.dequantizer = VariationalDequantization(self.data_shape[0], num_bins)

    @property
    def memory(self) -> str:
        """How training stores activations of the steps of flow (settable): see the class docstring."""
        return self.config["memory"]

    @memory.setter
    def memory(self, value: str) -> None:
        check_choice("memory", value, MEMORY_MODES)
        for level in self.levels:
            level[1].memory = value
        self.config["memory"] = value

    @property
    def num_bins(self) -> int:
        return self.dequantizer.num_bins

    def _encode(self, x: Tensor, cond: Tensor | None) -> tuple[list[Tensor], Tensor]:
        zs: list[Tensor] = []
        logdet = zero_logdet(x)
        h = x.contiguous(memory_format=torch.channels_last)  # the layout oneDNN's convolutions run fastest on
        for i, level in enumerate(self.levels):
            h, ld = level(h, cond)
            logdet = logdet + ld
            if i < len(self.levels) - 1:
                n_keep = self.latent_shapes[i][0]
                h, z = h[:, :n_keep], h[:, n_keep:]
                zs.append(z.contiguous())
        zs.append(h.contiguous())
        return zs, logdet

    def _decode(self, zs: list[Tensor], cond: Tensor | None) -> Tensor:
        h = zs[-1].contiguous(memory_format=torch.channels_last)
        for i in reversed(range(len(self.levels))):
            if i < len(self.levels) - 1:
                h = torch.cat([h, zs[i].contiguous(memory_format=torch.channels_last)], dim=1)
            h, _ = self.levels[i].inverse(h, cond)
        return h.contiguous()

    def forward(self, k: Tensor, y: Tensor | None = None) -> Tensor:
        """Training objective: bits per dimension of discrete data ``k`` (one dequantization draw); shape (B,)."""
        return self.bits_per_dim(k, y)

    def discrete_log_prob(
        self, k: Tensor, y: Tensor | None = None, n_samples: int = 1, importance_weighted: bool = False
    ) -> Tensor:
        """Log-probability (nats) of discrete data ``k`` (integers in [0, num_bins)); shape (B,).

        Dequantizes ``k`` ``n_samples`` times and returns the mean of the variational lower bound, or with
        ``importance_weighted=True`` the tighter importance-weighted estimate ``log mean_s exp(bound_s)``.
        """
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        self._check_data(check_discrete(k, self.num_bins))
        cond = self._cond(y, k.shape[0])
        estimates = []
        for _ in range(n_samples):
            x, logdet_deq = self.dequantizer(k.to(self._reference_parameter().dtype))
            zs, logdet = self._encode(x, cond)
            estimates.append(self._latent_log_prob(zs) + logdet + logdet_deq)
        est = torch.stack(estimates)
        if importance_weighted:
            return torch.logsumexp(est, dim=0) - math.log(n_samples)
        return est.mean(dim=0)

    def bits_per_dim(
        self, k: Tensor, y: Tensor | None = None, n_samples: int = 1, importance_weighted: bool = False
    ) -> Tensor:
        """Bits per dimension of discrete data ``k``: ``-discrete_log_prob / (D log 2)``; shape (B,).

        With uniform dequantization this is ``(-log p(x) + D log num_bins) / (D log 2)``.
        """
        return bits_per_dim(self.discrete_log_prob(k, y, n_samples, importance_weighted), self.num_dims)
