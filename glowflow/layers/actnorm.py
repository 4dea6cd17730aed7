"""Activation normalisation (Kingma & Dhariwal, 2018, section 3.1)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from glowflow.errors import NotInitializedError
from glowflow.layers.base import Flow


class ActNorm(Flow):
    """Per-channel affine map with data-dependent initialisation.

    forward (data -> latent):  ``y = (x + bias) * exp(log_scale)``, per channel (dim 1)
    inverse (latent -> data):  ``x = y * exp(-log_scale) - bias``
    log|det dy/dx| = S * sum(log_scale), S = number of positions per channel (H*W for images, 1 for vectors).

    Shapes: ``x`` is (B, C) or (B, C, *spatial) such as (B, C, H, W); ``logdet`` is (B,).

    The first forward call sets ``bias`` and ``log_scale`` so that the output has mean 0 and standard deviation 1
    per channel over batch and space (a channel whose standard deviation is below ``eps`` keeps scale 1);
    afterwards both are ordinary trainable parameters. Under an initialised
    ``torch.distributed`` process group the statistics are all-reduced, so every rank starts identical. The
    ``initialized`` flag is a buffer: it travels in ``state_dict``, so a loaded model never re-initialises.
    """

    def __init__(self, num_features: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.log_scale = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("initialized", torch.tensor(False))
        # Python-side mirror of the buffer, so the hot path does not read a device tensor on every call.
        self._known_initialized = False

    def extra_repr(self) -> str:
        return f"{self.num_features}"

    def is_initialized(self) -> bool:
        if not self._known_initialized:
            self._known_initialized = bool(self.initialized)
        return self._known_initialized

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._known_initialized = False  # re-read the loaded flag lazily

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set bias and log-scale from the statistics of ``x`` (over batch and space, all ranks)."""
        dims = [0, *range(2, x.dim())]
        xf = x.detach().to(torch.promote_types(x.dtype, torch.float32))
        count = torch.tensor(float(xf.numel() // xf.shape[1]), device=x.device, dtype=xf.dtype)
        total = xf.sum(dims)
        distributed = dist.is_available() and dist.is_initialized()
        if distributed:
            dist.all_reduce(count)
            dist.all_reduce(total)
        mean = total / count
        shape = (1, -1) + (1,) * (x.dim() - 2)
        sq = (xf - mean.view(shape)).square().sum(dims)
        if distributed:
            dist.all_reduce(sq)
        std = (sq / count).sqrt()
        # A channel that is constant over the batch (a dead ReLU, an all-zero input) has nothing to standardise:
        # leave its scale at 1 instead of blowing it up by 1/eps.
        std = torch.where(std > self.eps, std, torch.ones_like(std))
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std))
        self.initialized.fill_(True)
        self._known_initialized = True

    def _params(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return self.bias.view(shape), self.log_scale.view(shape)

    def _logdet(self, x: Tensor) -> Tensor:
        positions = x[0, 0].numel()
        return (positions * self.log_scale.sum()).expand(x.shape[0])

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if not self.is_initialized():
            self.initialize(x)
        bias, log_scale = self._params(x)
        return (x + bias) * log_scale.exp(), self._logdet(x)

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if not self.is_initialized():
            raise NotInitializedError(
                "ActNorm.inverse called before initialisation: run the model forward on a batch of data "
                "first (e.g. model.initialize(x)) or load a trained state_dict"
            )
        bias, log_scale = self._params(y)
        return y * (-log_scale).exp() - bias, -self._logdet(y)
