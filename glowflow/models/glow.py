"""The multi-scale image Glow (Kingma & Dhariwal, 2018)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from glowflow.layers.base import zero_logdet
from glowflow.layers.conditioners import conditioner_names
from glowflow.layers.coupling import MASKS
from glowflow.layers.dequantization import DEQUANTIZERS, Dequantization, bits_per_dim, check_discrete
from glowflow.layers.memory import MEMORY_MODES
from glowflow.layers.priors import GaussianPrior, Split, standard_normal_log_prob
from glowflow.layers.reshape import Squeeze
from glowflow.layers.sequence import FlowSequence
from glowflow.layers.step import FlowSteps
from glowflow.models.base import (
    FlowModel,
    check_choice,
    check_class_names,
    check_positive_int,
    make_step,
    without_autograd_bookkeeping,
)
from glowflow.models.registry import MODELS
from glowflow.preprocessing import ImagePreprocessing


@MODELS.register("Glow", help="the multi-scale image Glow")
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
        conditioner: ``"glow"`` (3x3 -> 1x1 -> zero 3x3 convs) or ``"gated"`` (gated residual network): an image
            entry of :data:`~glowflow.layers.CONDITIONERS`.
        mask: ``"channel"`` (Glow) or ``"checkerboard"`` (alternating parity, RealNVP).
        num_classes: make the model class-conditional on labels in [0, num_classes).
        num_bins: grey levels per dimension of the discrete data scored by :meth:`bits_per_dim`: ``2**n_bits``
            for n-bit images (256 for 8-bit, 32 for 5-bit), 17 for scikit-learn's 8x8 digits.
        dequantization: ``"uniform"`` or ``"variational"`` (Flow++).
        precision: ``"fp32"`` or ``"bf16"`` (conditioners under bf16 autocast; the invertible path stays fp32).
        memory: how training stores activations of the steps of flow: ``"standard"``, ``"checkpoint"``
            (``torch.utils.checkpoint`` per layer) or ``"invertible"`` (inputs rebuilt by the exact inverse during
            backward, so stored activations do not grow with ``steps``); see ``glowflow.layers.memory``.
        class_names: one name per class (labels may then be given by name).
        preprocessing: the :class:`~glowflow.preprocessing.ImagePreprocessing` (or its dict) that turns raw images
            into this model's input (n-bit reduction, padding); default: none (raw images are the input). Its output
            shape and levels must be ``in_shape`` and ``num_bins``. :meth:`preprocess` applies it.
    """

    is_image = True

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
        class_names: Sequence[str] | None = None,
        preprocessing: ImagePreprocessing | dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(in_shape, (tuple, list)) or len(in_shape) != 3:
            raise ValueError(f"in_shape must be (C, H, W) with positive integers, got {in_shape}")
        c, h, w = (check_positive_int("in_shape", s) for s in in_shape)
        levels, steps, hidden = (check_positive_int(n, v) for n, v in (("levels", levels), ("steps", steps),
                                                                      ("hidden", hidden)))  # fmt: skip
        if h % 2**levels or w % 2**levels:
            raise ValueError(
                f"spatial size {h}x{w} is not divisible by 2**levels = {2**levels} (levels={levels}); "
                "pad or crop the images, or use fewer levels"
            )
        if num_classes is not None:
            num_classes = check_positive_int("num_classes", num_classes)
        check_choice("conditioner", conditioner, conditioner_names(image=True))
        check_choice("mask", mask, MASKS)
        DEQUANTIZERS.check(dequantization)
        check_choice("memory", memory, MEMORY_MODES)
        class_names = check_class_names(class_names, num_classes)
        if preprocessing is None:
            preprocessing = ImagePreprocessing((c, h, w), num_bins)
        preprocessing = ImagePreprocessing.from_config(preprocessing)
        if preprocessing.model_shape != (c, h, w) or preprocessing.num_bins != num_bins:
            raise ValueError(
                f"preprocessing ({preprocessing.describe()}) gives {preprocessing.model_shape} images with "
                f"{preprocessing.num_bins} levels, but the model takes {(c, h, w)} with num_bins={num_bins}"
            )

        self.data_shape = (c, h, w)
        self.num_classes = num_classes
        self.class_names = class_names
        self.preprocessing = preprocessing
        self.config = dict(
            in_shape=(c, h, w), levels=levels, steps=steps, hidden=hidden, coupling=coupling,
            permutation=permutation, conditioner=conditioner, mask=mask, num_classes=num_classes,
            num_bins=num_bins, dequantization=dequantization, precision=precision, memory=memory,
            class_names=class_names, preprocessing=preprocessing.to_config(),
        )  # fmt: skip
        cond_features = num_classes or 0

        self.latent_shapes: list[tuple[int, ...]] = []
        levels_: list[FlowSequence] = []
        for level in range(levels):
            c, h, w = 4 * c, h // 2, w // 2
            flow_steps = FlowSteps(
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

        self.dequantizer: Dequantization = DEQUANTIZERS.get(dequantization)(self.data_shape[0], num_bins)

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

    @property
    def bijection(self) -> torch.nn.Module:
        return self.levels

    def _architecture(self) -> str:
        c = self.config
        return f"Glow L={c['levels']} K={c['steps']} width {c['hidden']}, {c['coupling']} coupling, {c['permutation']}"

    def preprocess(self, raw: Tensor) -> Tensor:
        """Raw images -> this model's discrete input, as :attr:`preprocessing` says (n-bit reduction, padding);
        ``ValueError`` naming the expected shape and levels for anything else."""
        return self.preprocessing(self._as_tensor(raw, "images"))

    def level_log_probs(self, x: Tensor, y: Tensor | int | str | None = None) -> Tensor:
        """The terms of ``log p(x)`` (nats) level by level, for continuous ``x`` (cast to the model's dtype):
        shape (B, L), column ``l`` = ``log N(z_l; 0, I) + log|det|`` of level ``l``'s layers (squeeze, K steps,
        split or top prior), finest level first. The columns sum to :meth:`log_prob`; the last one is the
        last-scale likelihood contribution of Schirrmeister et al. (2020)."""
        x = self._check_data(x)
        zs, logdets = self._encode_levels(x, self._cond(y, x.shape[0]))
        return torch.stack([standard_normal_log_prob(z) + ld for z, ld in zip(zs, logdets, strict=True)], dim=1)

    def _encode_levels(self, x: Tensor, cond: Tensor | None) -> tuple[list[Tensor], list[Tensor]]:
        """Data -> one latent per level and the log-det (B,) of each level's layers."""
        zs: list[Tensor] = []
        logdets: list[Tensor] = []
        h = x.contiguous(memory_format=torch.channels_last)  # the layout oneDNN's convolutions run fastest on
        for i, level in enumerate(self.levels):
            h, ld = level(h, cond)
            logdets.append(ld)
            if i < len(self.levels) - 1:
                n_out = self.latent_shapes[i][0]  # the channels this level's Split factored out: the last n_out
                h, z = h[:, : h.shape[1] - n_out], h[:, h.shape[1] - n_out :]
                zs.append(z.contiguous())
        zs.append(h.contiguous())
        return zs, logdets

    def _encode(self, x: Tensor, cond: Tensor | None) -> tuple[list[Tensor], Tensor]:
        zs, logdets = self._encode_levels(x, cond)
        logdet = zero_logdet(x)
        for ld in logdets:
            logdet = logdet + ld
        return zs, logdet

    def _decode(self, zs: list[Tensor], cond: Tensor | None) -> Tensor:
        h = zs[-1].contiguous(memory_format=torch.channels_last)
        for i in reversed(range(len(self.levels))):
            if i < len(self.levels) - 1:
                h = torch.cat([h, zs[i].contiguous(memory_format=torch.channels_last)], dim=1)
            h, _ = self.levels[i].inverse(h, cond)
        return h.contiguous()

    def forward(self, k: Tensor, y: Tensor | None = None, *, validate: bool = True) -> Tensor:
        """Training objective: bits per dimension of discrete data ``k`` (one dequantization draw); shape (B,).
        ``validate=False`` skips the value checks (see :meth:`FlowModel.forward`)."""
        return bits_per_dim(self._discrete_log_prob(k, y, 1, False, validate), self.num_dims)

    @without_autograd_bookkeeping
    def discrete_log_prob(
        self, k: Tensor, y: Tensor | int | str | None = None, n_samples: int = 1, importance_weighted: bool = False
    ) -> Tensor:
        """Log-probability (nats) of discrete data ``k`` (integers in [0, num_bins), the model's input shape;
        raw images go through :meth:`preprocess` first); shape (B,).

        Dequantizes ``k`` ``n_samples`` times and returns the mean of the variational lower bound, or with
        ``importance_weighted=True`` the tighter importance-weighted estimate ``log mean_s exp(bound_s)``.
        """
        n_samples = check_positive_int("n_samples", n_samples)
        return self._discrete_log_prob(k, y, n_samples, importance_weighted, True)

    def _discrete_log_prob(
        self, k: Tensor, y: Any, n_samples: int, importance_weighted: bool, validate: bool
    ) -> Tensor:
        k = self._as_tensor(k, "pixel levels")
        k = check_discrete(k, self.num_bins, validate)
        self._check_data(k.to(self._reference_parameter().dtype), validate=False)
        cond = self._cond(y, k.shape[0], validate)
        estimates = []
        for _ in range(n_samples):
            x, logdet_deq = self.dequantizer(k.to(self._reference_parameter().dtype))
            zs, logdet = self._encode(x, cond)
            estimates.append(self._latent_log_prob(zs) + logdet + logdet_deq)
        if n_samples == 1:
            return estimates[0]
        est = torch.stack(estimates)
        if importance_weighted:
            return torch.logsumexp(est, dim=0) - math.log(n_samples)
        return est.mean(dim=0)

    @without_autograd_bookkeeping
    def bits_per_dim(
        self, k: Tensor, y: Tensor | int | str | None = None, n_samples: int = 1, importance_weighted: bool = False
    ) -> Tensor:
        """Bits per dimension of discrete data ``k``: ``-discrete_log_prob / (D log 2)``; shape (B,).

        With uniform dequantization this is ``(-log p(x) + D log num_bins) / (D log 2)``.
        """
        return bits_per_dim(self.discrete_log_prob(k, y, n_samples, importance_weighted), self.num_dims)
