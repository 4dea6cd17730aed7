"""What every glowflow model shares: the step of flow, label conditioning, input checks, and the
``encode`` / ``decode`` / ``log_prob`` / ``sample`` API on top of a model-specific bijection to latents."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glowflow.checks import TEMPERATURE
from glowflow.errors import NonFiniteError, NotInitializedError
from glowflow.layers.actnorm import ActNorm
from glowflow.layers.coupling import COUPLINGS, PRECISIONS, Coupling
from glowflow.layers.dequantization import value_range
from glowflow.layers.permutations import PERMUTATIONS
from glowflow.layers.priors import standard_normal_log_prob
from glowflow.layers.step import FlowStep
from glowflow.models import pretrained

if TYPE_CHECKING:
    from glowflow.models.pretrained import ModelCard

M = TypeVar("M", bound="FlowModel")
F_ = TypeVar("F_", bound=Callable[..., Any])


def without_autograd_bookkeeping(method: F_) -> F_:
    """``method`` run under ``torch.inference_mode`` where autograd is off (``torch.no_grad``; ``sample`` always):
    no version counters or view tracking per operation (S's evaluation and sampling took 0.95x the time, M's
    0.96-0.98x; Intel Xeon with AMX, in-process A/B). Its tensors
    come back as ordinary ones (inference tensors copied), so that callers may still modify them in place or use
    them where autograd records. Inside ``torch.inference_mode`` already, with autograd on, or while torch.compile
    traces (which does not trace ``Tensor.is_inference``), ``method`` runs as it is."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        if torch.compiler.is_compiling() or torch.is_grad_enabled() or torch.is_inference_mode_enabled():
            return method(self, *args, **kwargs)
        with torch.inference_mode():
            out = method(self, *args, **kwargs)
        return _ordinary(out)

    return run  # type: ignore[return-value]


def _ordinary(out: Any) -> Any:
    """``out`` with every inference tensor in it (also inside lists and tuples) replaced by an ordinary copy."""
    if isinstance(out, Tensor):
        return out.clone() if out.is_inference() else out
    if isinstance(out, (list, tuple)):
        return type(out)(_ordinary(o) for o in out)
    return out


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {tuple(choices)}")


def check_positive_int(name: str, value: Any) -> int:
    """``value`` as an int if it is a positive integer (not a bool), else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer)) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_class_names(class_names: Sequence[str] | None, num_classes: int | None) -> list[str] | None:
    """Validated label names: one distinct string per class (``num_classes`` of them when the model is conditional)."""
    if class_names is None:
        return None
    names = list(class_names)
    if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise ValueError(f"class_names must be distinct non-empty strings, got {names}")
    if num_classes is not None and len(names) != num_classes:
        raise ValueError(f"class_names has {len(names)} names for num_classes={num_classes}")
    return names


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

    ``coupling`` names an entry of :data:`~glowflow.layers.COUPLINGS`, ``permutation`` one of
    :data:`~glowflow.layers.PERMUTATIONS` (``"lu"``, ``"conv"``, ``"shuffle"``, ``"reverse"``), ``conditioner`` one
    of :data:`~glowflow.layers.CONDITIONERS`. ``image=False`` mixes (B, D) vectors instead of image channels.
    """
    coupling_cls = COUPLINGS.get(coupling)
    mixer = PERMUTATIONS.get(permutation)(channels, image)
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

    Subclasses set ``data_shape`` (one example's shape), ``num_classes``, ``class_names`` and ``latent_shapes``, and
    implement ``_encode(x, cond) -> (zs, logdet)`` and ``_decode(zs, cond) -> x``, where the latents ``zs`` are
    standard normal under the model (every learned prior is folded into the bijection, see
    ``glowflow.layers.priors``). The public methods validate their inputs once and then call those.

    Precision: ``precision="bf16"`` runs the coupling conditioners under bf16 autocast in training and scoring
    (``forward``, ``log_prob``, ``bits_per_dim``, ``sample``). ``encode`` and ``decode`` run them in float32 by default
    (``exact=True``), so that ``decode(encode(x))`` reconstructs ``x`` to float32 round-off whatever the training
    precision; ``exact=False`` uses the model's precision there too (faster, not an exact inverse in bf16).
    """

    is_image: ClassVar[bool]  # images (Glow: discrete levels, scored in bits/dim) or vectors (TabularGlow: nats)
    data_shape: tuple[int, ...]
    num_classes: int | None
    class_names: list[str] | None
    latent_shapes: list[tuple[int, ...]]
    config: dict  # the constructor arguments, enough to rebuild the model: ``type(model)(**model.config)``

    # ---- subclass hooks -------------------------------------------------------------------------------------
    @property
    def bijection(self) -> nn.Module:
        """The learned layers between data and latents (where the ActNorms and couplings live)."""
        raise NotImplementedError

    def _encode(self, x: Tensor, cond: Tensor | None) -> tuple[list[Tensor], Tensor]:
        raise NotImplementedError

    def _decode(self, zs: list[Tensor], cond: Tensor | None) -> Tensor:
        raise NotImplementedError

    # ---- public API ----------------------------------------------------------------------------------------
    def forward(self, x: Tensor, y: Tensor | None = None, *, validate: bool = True) -> Tensor:
        """The per-example training objective, shape (B,): bits per dimension of discrete images for
        :class:`~glowflow.Glow`, negative log-likelihood in nats for :class:`~glowflow.TabularGlow`.

        Being ``forward``, it is what ``DistributedDataParallel`` and ``torch.compile`` wrap for training.
        ``validate=False`` skips the checks of the input's values (NaN / inf, range), which read the tensor back to
        the host: the training loop passes it for batches of data it validated when it loaded them.
        """
        x = self._check_data(x, validate)
        zs, logdet = self._encode(x, self._cond(y, x.shape[0], validate))
        return -(self._latent_log_prob(zs) + logdet)

    @without_autograd_bookkeeping
    def encode(
        self, x: Tensor, y: Tensor | int | str | None = None, *, exact: bool = True
    ) -> tuple[list[Tensor], Tensor]:
        """Data -> latents. Returns ``(zs, logdet)``: one latent per level (finest first; a single one for the
        tabular model), standard normal under the model, and ``log|det d(zs)/dx|`` of shape (B,).

        ``x`` is cast to the model's floating-point dtype. ``exact``: run the conditioners in float32 (see the
        class docstring)."""
        x = self._check_data(x)
        with self.conditioner_precision(exact):
            return self._encode(x, self._cond(y, x.shape[0]))

    @without_autograd_bookkeeping
    def decode(
        self,
        zs: list[Tensor] | tuple[Tensor, ...],
        y: Tensor | int | str | None = None,
        *,
        exact: bool = True,
        validate: bool = True,
    ) -> Tensor:
        """Latents -> data; the exact inverse of :meth:`encode` (both with ``exact=True``, the default).

        ``validate``: raise :class:`~glowflow.errors.NonFiniteError` where the decoded data hold NaN or inf (finite
        latents whose inverse overflowed: far beyond what the model was trained on); ``False`` returns them as they
        are (the check reads the result back to the host once)."""
        zs = self._check_latents(zs)
        self._check_initialized()
        with self.conditioner_precision(exact):
            x = self._decode(zs, self._cond(y, zs[0].shape[0]))
        return _check_finite_output(x, "decoding these latents") if validate else x

    @without_autograd_bookkeeping
    def log_prob(self, x: Tensor, y: Tensor | int | str | None = None) -> Tensor:
        """Exact log-density (nats) of continuous data ``x`` (cast to the model's dtype); shape (B,)."""
        x = self._check_data(x)
        zs, logdet = self._encode(x, self._cond(y, x.shape[0]))
        return self._latent_log_prob(zs) + logdet

    @torch.no_grad()
    @without_autograd_bookkeeping
    def sample(
        self,
        n: int,
        temperature: float = 1.0,
        y: Tensor | int | str | None = None,
        generator: torch.Generator | None = None,
        *,
        exact: bool = False,
        validate: bool = True,
    ) -> Tensor:
        """Draw ``n`` samples with every latent's standard deviation scaled by ``temperature`` (a finite number >= 0,
        NumPy scalars included).

        ``exact=True`` decodes with float32 conditioners (only matters for ``precision="bf16"``). ``validate``: raise
        :class:`~glowflow.errors.NonFiniteError` where a sample holds NaN or inf (the inverse overflowed: a
        temperature far beyond 1, or diverged parameters); ``False`` returns such samples as they are."""
        n = check_positive_int("n (the number of samples)", n)
        temperature = TEMPERATURE.check("temperature", temperature)
        self._check_initialized()
        ref = self._reference_parameter()
        zs = [
            temperature * torch.randn((n, *shape), generator=generator, device=ref.device, dtype=ref.dtype)
            for shape in self.latent_shapes
        ]
        with self.conditioner_precision(exact):
            x = self._decode(zs, self._cond(y, n))
        return _check_finite_output(x, f"sampling at temperature {temperature:g}") if validate else x

    @contextmanager
    def conditioner_precision(self, exact: bool) -> Iterator[None]:
        """Within the block, run the coupling conditioners in float32 if ``exact``, else in the model's precision."""
        couplings = [m for m in self.modules() if isinstance(m, Coupling)]
        before = [c.exact for c in couplings]
        for c in couplings:
            c.exact = exact
        try:
            yield
        finally:
            for c, b in zip(couplings, before, strict=True):
                c.exact = b

    # ---- sharing: pretrained-model directories, see glowflow.models.pretrained ---------------------------------
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
        :func:`glowflow.models.pretrained.save_pretrained`."""
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
        :func:`glowflow.models.pretrained.from_pretrained`."""
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
        :func:`glowflow.models.pretrained.push_to_hub`."""
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
        return math.prod(self.data_shape)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def precision(self) -> str:
        """``"fp32"`` or ``"bf16"``: the precision the coupling conditioners train and score in (settable)."""
        return next(m.precision for m in self.bijection.modules() if isinstance(m, Coupling))

    @precision.setter
    def precision(self, value: str) -> None:
        check_choice("precision", value, tuple(PRECISIONS))
        for m in self.bijection.modules():
            if isinstance(m, Coupling):
                m.precision = value
        self.config["precision"] = value

    def describe(self) -> str:
        """One line: architecture, conditioning and parameter count."""
        c = self.config
        cond = f", conditional on {c['num_classes']} classes" if c.get("num_classes") else ""
        return f"{self._architecture()}{cond}: {self.num_parameters / 1e6:.2f}M parameters"

    def _architecture(self) -> str:
        raise NotImplementedError

    def label_index(self, label: int | str) -> int:
        """A class index from an index or a class name (case-insensitive)."""
        if self.num_classes is None:
            raise ValueError("this model is not class-conditional (num_classes=None); it takes no labels")
        if isinstance(label, str):
            text = label.strip()
            if self.class_names:
                lowered = [c.lower() for c in self.class_names]
                if text.lower() in lowered:
                    return lowered.index(text.lower())
            if text.lstrip("-").isdigit():
                label = int(text)
            else:
                known = f"; classes: {', '.join(self.class_names)}" if self.class_names else ""
                raise ValueError(f"unknown class {text!r}{known}")
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < self.num_classes:
            raise ValueError(f"label {label!r} out of range: the model has classes 0..{self.num_classes - 1}")
        return int(label)

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

    def _as_tensor(self, x: Any, what: str) -> Tensor:
        if isinstance(x, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(x))
        if not isinstance(x, Tensor):
            raise ValueError(f"expected a torch.Tensor or numpy array of {what}, got {type(x).__name__}")
        return x

    def _check_device(self, x: Tensor) -> None:
        ref = self._reference_parameter()
        if x.device != ref.device:
            raise ValueError(f"input is on {x.device} but the model is on {ref.device}; move one of them (.to(...))")

    def _check_data(self, x: Tensor, validate: bool = True) -> Tensor:
        """Check the shape of continuous data (and, with ``validate``, its values); return it cast to the model's
        dtype."""
        x = self._as_tensor(x, "data")
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
        self._check_device(x)
        if validate and not torch.compiler.is_compiling() and not all(map(math.isfinite, value_range(x))):
            raise ValueError("input contains NaN or inf")
        return x.to(self._reference_parameter().dtype)

    def _check_latents(self, zs: list[Tensor] | tuple[Tensor, ...]) -> list[Tensor]:
        if isinstance(zs, (Tensor, np.ndarray)) or not isinstance(zs, (list, tuple)):
            raise ValueError(f"expected a list of {len(self.latent_shapes)} latent tensors, as returned by encode")
        if len(zs) == 2 and isinstance(zs[0], (list, tuple)) and isinstance(zs[1], Tensor):
            raise ValueError("expected the latents zs, got encode's whole (zs, logdet) pair: pass encode(x)[0]")
        zs = [self._as_tensor(z, "latents") for z in zs]
        if len(zs) != len(self.latent_shapes):
            raise ValueError(f"expected {len(self.latent_shapes)} latent tensors, got {len(zs)}")
        batch = zs[0].shape[0] if zs[0].dim() > 0 else 0
        dtype = self._reference_parameter().dtype
        out = []
        for i, (z, shape) in enumerate(zip(zs, self.latent_shapes, strict=True)):
            if z.dim() != len(shape) + 1 or tuple(z.shape[1:]) != shape or z.shape[0] != batch or batch == 0:
                raise ValueError(
                    f"latent {i} must have shape (B, {', '.join(map(str, shape))}) with the same B>0 for all "
                    f"latents, got {tuple(z.shape)}"
                )
            if not z.is_floating_point():
                raise ValueError(f"latent {i} must be floating-point, got {z.dtype}")
            self._check_device(z)
            if not torch.compiler.is_compiling() and not bool(torch.isfinite(z).all()):
                raise ValueError(f"latent {i} contains NaN or inf")
            out.append(z.to(dtype))
        return out

    def _cond(
        self, y: Tensor | int | str | Sequence[int | str] | None, batch: int, validate: bool = True
    ) -> Tensor | None:
        """Labels (class indices or names) -> one-hot conditioning vector (B, num_classes), after checking them."""
        if self.num_classes is None:
            if y is not None:
                raise ValueError("this model is not class-conditional (num_classes=None); pass y=None")
            return None
        if y is None:
            raise ValueError(f"this model is class-conditional: pass labels y in [0, {self.num_classes})")
        ref = self._reference_parameter()
        if isinstance(y, str):
            y = self.label_index(y)
        elif isinstance(y, (list, tuple)) and any(isinstance(v, str) for v in y):
            y = [self.label_index(v) for v in y]
        y = torch.as_tensor(y, device=ref.device)
        if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
            raise ValueError(f"labels must be integers, got {y.dtype}")
        if y.dim() == 0:
            y = y.expand(batch)
        if y.shape != (batch,):
            raise ValueError(f"expected labels of shape ({batch},), got {tuple(y.shape)}")
        if validate and not torch.compiler.is_compiling() and bool((y < 0).any() or (y >= self.num_classes).any()):
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got {y.min().item()}..{y.max().item()}")
        return F.one_hot(y.long(), self.num_classes).to(ref.dtype)


def _check_finite_output(x: Tensor, what: str) -> Tensor:
    """``x`` (B, ...) if all its values are finite, else :class:`~glowflow.errors.NonFiniteError` saying for how
    many of the B examples ``what`` gave NaN or inf. Not while torch.compile / torch.export traces. A finite ``x`` is
    cleared by its range (:func:`~glowflow.layers.dequantization.value_range`, as the inputs' check: 7 us for
    16 x 3 x 32 x 32 on an AMD EPYC Zen 5); the per-example count is taken only for one that is not."""
    if torch.compiler.is_compiling() or all(map(math.isfinite, value_range(x))):
        return x
    bad = ~torch.isfinite(x.flatten(1)).all(1)
    if bool(bad.any()):
        raise NonFiniteError(
            f"{what} gave NaN or inf for {int(bad.sum())} of {x.shape[0]} examples: the model's inverse overflowed "
            "(latents or a temperature far beyond what it was trained on, or diverged parameters)"
        )
    return x
