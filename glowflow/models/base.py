"""What every glowflow model shares: the step of flow, label conditioning, input checks, and the
``encode`` / ``decode`` / ``log_prob`` / ``sample`` API on top of a model-specific bijection to latents."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glowflow.errors import NotInitializedError
from glowflow.layers.actnorm import ActNorm
from glowflow.layers.base import Flow
from glowflow.layers.conv1x1 import InvertibleConv1x1, InvertibleLinear
from glowflow.layers.coupling import PRECISIONS, AdditiveCoupling, AffineCoupling, _Coupling
from glowflow.layers.permutations import ChannelReverse, ChannelShuffle
from glowflow.layers.priors import standard_normal_log_prob
from glowflow.layers.step import FlowStep

if TYPE_CHECKING:
    from glowflow.pretrained import ModelCard

COUPLINGS = ("affine", "additive")
M = TypeVar("M", bound="FlowModel")
PERMUTATIONS = ("lu", "conv", "shuffle", "reverse")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {choices}")


def make_step(
    channels: int,
    hidden: int,
    *,
    coupling: str,
    permutation: str,
    conditioner: str,
    mask: str = "channel",
    parity: int = 0,
    cond_features: int = 0,
    image: bool = True,
    precision: str = "fp32",
) -> FlowStep:
    """One step of flow: ActNorm -> channel mixing -> coupling (Glow's Figure 2a).

    ``permutation``: ``"lu"`` (LU 1x1 conv / linear), ``"conv"`` (dense), ``"shuffle"`` or ``"reverse"``.
    ``image=False`` uses :class:`InvertibleLinear` for vectors.
    """
    check_choice("coupling", coupling, COUPLINGS)
    check_choice("permutation", permutation, PERMUTATIONS)
    if permutation in ("lu", "conv"):
        mixer_cls = InvertibleConv1x1 if image else InvertibleLinear
        mixer: Flow = mixer_cls(channels, lu=permutation == "lu")
    elif permutation == "shuffle":
        mixer = ChannelShuffle(channels)
    else:
        mixer = ChannelReverse(channels)
    coupling_cls = AffineCoupling if coupling == "affine" else AdditiveCoupling
    return FlowStep(
        ActNorm(channels),
        mixer,
        coupling_cls(
            channels,
            hidden,
            conditioner=conditioner,
            mask=mask,
            parity=parity,
            cond_features=cond_features,
            precision=precision,
        ),
    )


class FlowModel(nn.Module):
    """Base of :class:`~glowflow.Glow` and :class:`~glowflow.TabularGlow`.

    Subclasses set ``data_shape`` (one example's shape), ``num_classes`` and ``latent_shapes``, and implement
    ``_encode(x, cond) -> (zs, logdet)`` and ``_decode(zs, cond) -> x``, where the latents ``zs`` are standard
    normal under the model (every learned prior is folded into the bijection, see ``glowflow.layers.priors``).
    The public methods validate their inputs once and then call those.
    """

    data_shape: tuple[int, ...]
    num_classes: int | None
    latent_shapes: list[tuple[int, ...]]
    bijection: nn.Module  # the layers between data and latents (what decode runs backwards)
    config: dict  # the constructor arguments, enough to rebuild the model: ``type(model)(**model.config)``

    # ---- subclass hooks -------------------------------------------------------------------------------------
    def _encode(self, x: Tensor, cond: Tensor | None) -> tuple[list[Tensor], Tensor]:
        raise NotImplementedError

    def _decode(self, zs: list[Tensor], cond: Tensor | None) -> Tensor:
        raise NotImplementedError

    # ---- public API ----------------------------------------------------------------------------------------
    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The per-example training objective, shape (B,): bits per dimension of discrete images for
        :class:`~glowflow.Glow`, negative log-likelihood in nats for :class:`~glowflow.TabularGlow`.

        Being ``forward``, it is what ``DistributedDataParallel`` and ``torch.compile`` wrap for training.
        """
        return -self.log_prob(x, y)

    def encode(self, x: Tensor, y: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        """Data -> latents. Returns ``(zs, logdet)``: one latent per level (finest first; a single one for the
        tabular model), standard normal under the model, and ``log|det d(zs)/dx|`` of shape (B,)."""
        self._check_data(x)
        return self._encode(x, self._cond(y, x.shape[0]))

    def decode(self, zs: list[Tensor] | tuple[Tensor, ...], y: Tensor | int | None = None) -> Tensor:
        """Latents -> data; the exact inverse of :meth:`encode`."""
        zs = self._check_latents(zs)
        self._check_initialized()
        return self._decode(zs, self._cond(y, zs[0].shape[0]))

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Exact log-density (nats) of continuous data ``x``; shape (B,)."""
        zs, logdet = self.encode(x, y)
        return self._latent_log_prob(zs) + logdet

    @torch.no_grad()
    def sample(
        self,
        n: int,
        temperature: float = 1.0,
        y: Tensor | int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw ``n`` samples with every latent's standard deviation scaled by ``temperature``."""
        if n < 1:
            raise ValueError(f"n must be a positive number of samples, got {n}")
        if not 0.0 <= temperature < float("inf"):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
        self._check_initialized()
        ref = self._reference_parameter()
        zs = [
            temperature * torch.randn((n, *shape), generator=generator, device=ref.device, dtype=ref.dtype)
            for shape in self.latent_shapes
        ]
        return self._decode(zs, self._cond(y, n))

    # ---- sharing: pretrained-model directories, see glowflow.pretrained -----------------------------------------
    def save_pretrained(
        self,
        directory: str | os.PathLike,
        *,
        data: dict[str, Any] | None = None,
        training: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
        card: ModelCard | None = None,
    ) -> Path:
        """Write config.json, model.safetensors and a model card README.md to ``directory``; see
        :func:`glowflow.pretrained.save_pretrained`."""
        from glowflow import pretrained  # imports this module

        return pretrained.save_pretrained(self, directory, data=data, training=training, metrics=metrics, card=card)

    @classmethod
    def from_pretrained(
        cls: type[M],
        source: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        revision: str | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
    ) -> M:
        """Load a model of this class from a pretrained-model directory or a Hugging Face Hub id; see
        :func:`glowflow.pretrained.from_pretrained`."""
        from glowflow import pretrained

        return pretrained.from_pretrained(
            source, device=device, model_class=cls, revision=revision, token=token, local_files_only=local_files_only
        )

    def push_to_hub(
        self,
        repo_id: str,
        *,
        data: dict[str, Any] | None = None,
        training: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
        card: ModelCard | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
    ) -> str:
        """Upload this model to the Hugging Face Hub repository ``repo_id``; returns the commit's URL. See
        :func:`glowflow.pretrained.push_to_hub`."""
        from glowflow import pretrained

        return pretrained.push_to_hub(
            self, repo_id, data=data, training=training, metrics=metrics, card=card, private=private, token=token
        )

    @property
    def is_initialized(self) -> bool:
        """Whether every ActNorm of the bijection has seen data (a forward pass, or a loaded state_dict)."""
        return all(m.is_initialized() for m in self.bijection.modules() if isinstance(m, ActNorm))

    @property
    def num_dims(self) -> int:
        """Dimensions of one example (D in bits per dimension)."""
        n = 1
        for s in self.data_shape:
            n *= s
        return n

    @property
    def precision(self) -> str:
        """``"fp32"`` or ``"bf16"``: the precision the coupling conditioners run in (see ``AffineCoupling``)."""
        return next(m.precision for m in self.modules() if isinstance(m, _Coupling))

    @precision.setter
    def precision(self, value: str) -> None:
        check_choice("precision", value, tuple(PRECISIONS))
        for m in self.modules():
            if isinstance(m, _Coupling):
                m.precision = value
        self.config["precision"] = value

    # ---- helpers --------------------------------------------------------------------------------------------
    def _latent_log_prob(self, zs: list[Tensor]) -> Tensor:
        return sum(standard_normal_log_prob(z) for z in zs)

    def _reference_parameter(self) -> Tensor:
        return next(p for p in self.parameters() if p.is_floating_point())

    def _check_initialized(self) -> None:
        if not self.is_initialized:
            raise NotInitializedError(
                f"{type(self).__name__} has not been initialised: run it forward on a batch of data first "
                "(encode, log_prob or bits_per_dim; ActNorm takes its initial statistics from that batch) "
                "or load a trained state_dict"
            )

    def _check_data(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise ValueError(f"expected a torch.Tensor, got {type(x).__name__}")
        expected = "(B, " + ", ".join(str(s) for s in self.data_shape) + ")"
        if x.dim() != len(self.data_shape) + 1:
            raise ValueError(f"expected input of shape {expected}, got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError("empty batch")
        if tuple(x.shape[1:]) != self.data_shape:
            if len(self.data_shape) == 3 and x.shape[1] != self.data_shape[0]:
                raise ValueError(
                    f"wrong channel count: the model takes {self.data_shape[0]} channels, got {x.shape[1]} "
                    f"(input shape {tuple(x.shape)}, expected {expected})"
                )
            raise ValueError(f"expected input of shape {expected}, got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(
                f"expected floating-point continuous data, got {x.dtype}; score integer pixel data with "
                "bits_per_dim / discrete_log_prob, which dequantize it"
            )
        if not torch.compiler.is_compiling() and not bool(torch.isfinite(x).all()):
            raise ValueError("input contains NaN or inf")

    def _check_latents(self, zs: list[Tensor] | tuple[Tensor, ...]) -> list[Tensor]:
        if isinstance(zs, Tensor) or not isinstance(zs, (list, tuple)):
            raise ValueError(f"expected a list of {len(self.latent_shapes)} latent tensors, as returned by encode")
        zs = list(zs)
        if len(zs) != len(self.latent_shapes):
            raise ValueError(f"expected {len(self.latent_shapes)} latent tensors, got {len(zs)}")
        batch = zs[0].shape[0] if zs[0].dim() > 0 else 0
        for i, (z, shape) in enumerate(zip(zs, self.latent_shapes, strict=True)):
            if z.dim() != len(shape) + 1 or tuple(z.shape[1:]) != shape or z.shape[0] != batch or batch == 0:
                raise ValueError(
                    f"latent {i} must have shape (B, {', '.join(map(str, shape))}) with the same B>0 for all "
                    f"latents, got {tuple(z.shape)}"
                )
            if not torch.compiler.is_compiling() and not bool(torch.isfinite(z).all()):
                raise ValueError(f"latent {i} contains NaN or inf")
        return zs

    def _cond(self, y: Tensor | int | None, batch: int) -> Tensor | None:
        """Labels -> one-hot conditioning vector (B, num_classes), after checking them."""
        if self.num_classes is None:
            if y is not None:
                raise ValueError("this model is not class-conditional (num_classes=None); pass y=None")
            return None
        if y is None:
            raise ValueError(f"this model is class-conditional: pass labels y in [0, {self.num_classes})")
        ref = self._reference_parameter()
        y = torch.as_tensor(y, device=ref.device)
        if y.is_floating_point() or y.dtype == torch.bool:
            raise ValueError(f"labels must be integers, got {y.dtype}")
        if y.dim() == 0:
            y = y.expand(batch)
        if y.shape != (batch,):
            raise ValueError(f"expected labels of shape ({batch},), got {tuple(y.shape)}")
        if not torch.compiler.is_compiling() and bool((y < 0).any() or (y >= self.num_classes).any()):
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got {y.min().item()}..{y.max().item()}")
        return F.one_hot(y.long(), self.num_classes).to(ref.dtype)
