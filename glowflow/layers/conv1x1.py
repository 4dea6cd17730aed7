"""Invertible channel mixing: the 1x1 convolution of Glow (section 3.2) and its dense-layer twin for vectors.

Both layers apply one invertible matrix ``W`` (n x n) to the channel vector of every position. ``W`` is either

* LU-parameterised (default): ``W = P L (U + diag(sign_s * exp(log_s)))`` with ``P`` a fixed permutation,
  ``L`` unit lower-triangular, ``U`` strictly upper-triangular; ``log|det W| = sum(log_s)``. Invertible by
  construction; the inverse uses two triangular solves; or
* dense: a plain parameter ``W`` with ``log|det W|`` from its LU factorisation. A (numerically) singular ``W``
  raises :class:`~glowflow.errors.SingularWeightError` instead of being used.

Both start from a random rotation (the Q factor of a Gaussian matrix). Under ``torch.no_grad`` (evaluation,
sampling) the weight, its inverse and the log-det are cached until the parameters change.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from glowflow.errors import SingularWeightError
from glowflow.layers.base import Flow
from glowflow.layers.fused import lu_inverse_weight, lu_weight, mix_channels


def random_rotation(n: int, generator: torch.Generator | None = None) -> Tensor:
    """A Haar-random orthogonal n x n matrix (float64)."""
    q, r = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=generator))
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


class InvertibleMatrix(nn.Module):
    """An invertible n x n matrix with ``weight()``, ``inverse_weight()`` and ``log_abs_det()``.

    Values computed while autograd is off are cached and reused until a parameter's value changes.
    """

    def __init__(self) -> None:
        super().__init__()
        self._cache: dict[str, Tensor] = {}
        self._cache_key: list[Tensor] = []

    def _cached(self, name: str, compute: Callable[[], Tensor]) -> Tensor:
        params = list(self.parameters())
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return compute()
        with torch.inference_mode(False), torch.no_grad():  # kept: ordinary tensors, also from inference mode
            if not self._cache_valid(params):
                self._cache = {}
                self._cache_key = [p.detach().clone() for p in params]
            if name not in self._cache:
                self._cache[name] = compute()
        return self._cache[name]

    def _cache_valid(self, params: list[Tensor]) -> bool:
        # Compare values rather than version counters: in-place edits through ``p.data`` bypass the counter.
        return len(params) == len(self._cache_key) and all(
            k.device == p.device and k.dtype == p.dtype and k.shape == p.shape and torch.equal(k, p)
            for k, p in zip(self._cache_key, params, strict=True)
        )

    def weight(self) -> Tensor:
        raise NotImplementedError

    def inverse_weight(self) -> Tensor:
        raise NotImplementedError

    def log_abs_det(self) -> Tensor:
        raise NotImplementedError


class LUMatrix(InvertibleMatrix):
    """``W = P L (U + diag(sign_s * exp(log_s)))``; ``log|det W| = sum(log_s)``."""

    def __init__(self, n: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        p, lower, upper = torch.linalg.lu(random_rotation(n, generator))
        s = torch.diagonal(upper)
        dtype = torch.get_default_dtype()
        self.register_buffer("perm", p.to(dtype))
        self.register_buffer("sign_s", torch.sign(s).to(dtype))
        self.lower = nn.Parameter(torch.tril(lower, -1).to(dtype))
        self.upper = nn.Parameter(torch.triu(upper, 1).to(dtype))
        self.log_s = nn.Parameter(s.abs().log().to(dtype))

    def _lu(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        return self.perm, self.lower, self.upper, self.sign_s, self.log_s

    def weight(self) -> Tensor:
        return self._cached("weight", lambda: lu_weight(*self._lu()))

    def inverse_weight(self) -> Tensor:
        return self._cached("inverse_weight", lambda: lu_inverse_weight(*self._lu()))

    def log_abs_det(self) -> Tensor:
        return self.log_s.sum()


class DenseMatrix(InvertibleMatrix):
    """A plain parameter ``W``; ``log|det W|`` from its LU factorisation, which also detects singularity."""

    def __init__(self, n: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.w = nn.Parameter(random_rotation(n, generator).to(torch.get_default_dtype()))

    def _lu(self) -> tuple[Tensor, Tensor]:
        lu, pivots, _ = torch.linalg.lu_factor_ex(self.w)
        d = torch.diagonal(lu).abs()
        # The pivot ratio is a cheap lower bound on the condition number.
        tolerance = torch.finfo(self.w.dtype).eps ** 0.5
        if not bool(torch.isfinite(d).all() and d.min() > tolerance * d.max()):
            raise SingularWeightError(
                f"the dense 1x1 convolution weight ({self.w.shape[0]}x{self.w.shape[0]}) is numerically "
                f"singular (smallest/largest LU pivot = {(d.min() / d.max()).item():.3g}); lower the learning "
                "rate, restore a checkpoint, or use the LU parameterisation"
            )
        return lu, pivots

    def weight(self) -> Tensor:
        return self.w

    def inverse_weight(self) -> Tensor:
        def compute() -> Tensor:
            lu, pivots = self._lu()
            eye = torch.eye(self.w.shape[0], dtype=self.w.dtype, device=self.w.device)
            return torch.linalg.lu_solve(lu, pivots, eye)

        return self._cached("inverse_weight", compute)

    def log_abs_det(self) -> Tensor:
        return self._cached("log_abs_det", lambda: torch.diagonal(self._lu()[0]).abs().log().sum())


def _make_matrix(n: int, lu: bool, generator: torch.Generator | None) -> InvertibleMatrix:
    return LUMatrix(n, generator) if lu else DenseMatrix(n, generator)


class InvertibleConv1x1(Flow):
    """Invertible 1x1 convolution: ``y[:, :, i, j] = W x[:, :, i, j]`` at every position.

    Shapes: (B, C, H, W) -> (B, C, H, W).  log|det dy/dx| = H * W * log|det W|.
    ``lu=True`` (default) uses the LU parameterisation, ``lu=False`` a dense ``W``.
    """

    def __init__(self, channels: int, lu: bool = True, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.channels = channels
        self.matrix = _make_matrix(channels, lu, generator)

    def extra_repr(self) -> str:
        return f"{self.channels}, lu={isinstance(self.matrix, LUMatrix)}"

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logdet = x.shape[2] * x.shape[3] * self.matrix.log_abs_det()
        return mix_channels(x, self.matrix.weight()), logdet.expand(x.shape[0])

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logdet = -y.shape[2] * y.shape[3] * self.matrix.log_abs_det()
        return mix_channels(y, self.matrix.inverse_weight()), logdet.expand(y.shape[0])


class InvertibleLinear(Flow):
    """Invertible dense map of feature vectors (the 1-D Glow's counterpart of the 1x1 convolution).

    Shapes: (B, D) -> (B, D), ``y = x W^T``.  log|det dy/dx| = log|det W|.
    """

    def __init__(self, features: int, lu: bool = True, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.features = features
        self.matrix = _make_matrix(features, lu, generator)

    def extra_repr(self) -> str:
        return f"{self.features}, lu={isinstance(self.matrix, LUMatrix)}"

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return mix_channels(x, self.matrix.weight()), self.matrix.log_abs_det().expand(x.shape[0])

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return mix_channels(y, self.matrix.inverse_weight()), (-self.matrix.log_abs_det()).expand(y.shape[0])
