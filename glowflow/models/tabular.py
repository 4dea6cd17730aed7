"""The 1-D Glow for vectors (tabular data)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor

from glowflow.layers.priors import GaussianPrior
from glowflow.layers.sequence import FlowSequence
from glowflow.layers.standardize import Standardize
from glowflow.models.base import FlowModel, check_class_names, check_positive_int, make_step
from glowflow.models.registry import MODELS


@MODELS.register("TabularGlow", help="the 1-D Glow for vectors")
class TabularGlow(FlowModel):
    """Glow for vectors of dimension ``dim``: a fixed standardisation, then ``steps`` x (ActNorm -> LU linear ->
    coupling with an MLP conditioner), then a learned (optionally class-conditional) diagonal Gaussian.

    The standardisation (:class:`~glowflow.layers.Standardize`, ``model.standardize``) is part of the bijection:
    its ``mean`` / ``std`` buffers are saved in the ``state_dict`` and its log-det ``-sum(log std)`` is in every
    likelihood, so ``log_prob(x)`` is the log-density of raw rows ``x`` in the data's own units and samples come out
    in those units. It starts as the identity; ``model.standardize.fit(train_rows)`` sets it (``glowflow.train``
    does, from the training split).

    ``encode(x)`` returns ``([z], logdet)`` with ``z`` (B, dim), standard normal under the model.

    Args:
        dim: D >= 2.
        steps: steps of flow.
        hidden: width of the MLP conditioners.
        coupling: ``"affine"`` or ``"additive"`` (an entry of :data:`~glowflow.layers.COUPLINGS`).
        permutation: ``"lu"``, ``"conv"`` (dense linear), ``"shuffle"`` or ``"reverse"``.
        num_classes: make the model class-conditional on labels in [0, num_classes).
        precision: ``"fp32"`` or ``"bf16"`` for the conditioners.
        class_names: one name per class (labels may then be given by name).
    """

    is_image = False

    def __init__(
        self,
        dim: int,
        steps: int = 8,
        hidden: int = 64,
        coupling: str = "affine",
        permutation: str = "lu",
        num_classes: int | None = None,
        precision: str = "fp32",
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
            raise ValueError(f"dim must be an integer >= 2 (a coupling needs two parts), got {dim!r}")
        steps, hidden = check_positive_int("steps", steps), check_positive_int("hidden", hidden)
        if num_classes is not None:
            num_classes = check_positive_int("num_classes", num_classes)
        self.data_shape = (dim,)
        self.num_classes = num_classes
        self.class_names = check_class_names(class_names, num_classes)
        self.latent_shapes = [(dim,)]
        self.config = dict(
            dim=dim, steps=steps, hidden=hidden, coupling=coupling, permutation=permutation,
            num_classes=num_classes, precision=precision, class_names=self.class_names,
        )  # fmt: skip
        cond_features = num_classes or 0
        self.standardize = Standardize((dim,))
        self.flow = FlowSequence(
            *[
                make_step(
                    dim,
                    hidden,
                    coupling=coupling,
                    permutation=permutation,
                    conditioner="mlp",
                    parity=k % 2,
                    cond_features=cond_features,
                    image=False,
                    precision=precision,
                )  # fmt: skip
                for k in range(steps)
            ],
            GaussianPrior((dim,), cond_features),
        )

    @property
    def bijection(self) -> FlowSequence:
        return self.flow

    def _architecture(self) -> str:
        c = self.config
        return f"TabularGlow K={c['steps']} width {c['hidden']}, {c['coupling']} coupling, {c['permutation']}"

    def bits_per_dim(self, x: Tensor, y: Tensor | int | str | None = None) -> Tensor:
        """Negative log-density per dimension in bits, ``-log_prob(x) / (D ln 2)``; shape (B,). For continuous data
        this is a differential entropy rate (it can be negative), not a code length."""
        return -self.log_prob(x, y) / (self.num_dims * math.log(2.0))

    def _encode(self, x: Tensor, cond: Tensor | None) -> tuple[list[Tensor], Tensor]:
        s, logdet_std = self.standardize(x)
        z, logdet = self.flow(s, cond)
        return [z], logdet + logdet_std

    def _decode(self, zs: list[Tensor], cond: Tensor | None) -> Tensor:
        s = self.flow.inverse(zs[0], cond)[0]
        return self.standardize.inverse(s)[0]
