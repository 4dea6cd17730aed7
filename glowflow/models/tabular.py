"""The 1-D Glow for vectors (tabular data)."""

from __future__ import annotations

from torch import Tensor

from glowflow.layers.base import FlowSequence
from glowflow.layers.priors import GaussianPrior
from glowflow.models.base import FlowModel, make_step


class TabularGlow(FlowModel):
    """Glow for vectors of dimension ``dim``: ``steps`` x (ActNorm -> LU linear -> coupling with an MLP
    conditioner), then a learned (optionally class-conditional) diagonal Gaussian.

    ``encode(x)`` returns ``([z], logdet)`` with ``z`` (B, dim), standard normal under the model.

    Args:
        dim: D >= 2.
        steps: steps of flow.
        hidden: width of the MLP conditioners.
        coupling: ``"affine"`` or ``"additive"``.
        permutation: ``"lu"``, ``"conv"`` (dense linear), ``"shuffle"`` or ``"reverse"``.
        num_classes: make the model class-conditional on labels in [0, num_classes).
        precision: ``"fp32"`` or ``"bf16"`` for the conditioners.
    """

    def __init__(
        self,
        dim: int,
        steps: int = 8,
        hidden: int = 64,
        coupling: str = "affine",
        permutation: str = "lu",
        num_classes: int | None = None,
        precision: str = "fp32",
    ) -> None:
        super().__init__()
        if int(dim) != dim or dim < 2:
            raise ValueError(f"dim must be an integer >= 2 (a coupling needs two parts), got {dim}")
        for name, value in (("steps", steps), ("hidden", hidden)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if num_classes is not None and (int(num_classes) != num_classes or num_classes < 1):
            raise ValueError(f"num_classes must be a positive integer or None, got {num_classes}")
        self.data_shape = (int(dim),)
        self.num_classes = num_classes
        self.latent_shapes = [(int(dim),)]
        self.config = dict(
            dim=dim, steps=steps, hidden=hidden, coupling=coupling, permutation=permutation,
            num_classes=num_classes, precision=precision,
        )  # fmt: skip
        cond_features = num_classes or 0
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
        self.bijection = self.flow

    def _encode(self, x: Tensor, cond: Tensor | None) -> tuple[list[Tensor], Tensor]:
        z, logdet = self.flow(x, cond)
        return [z], logdet

    def _decode(self, zs: list[Tensor], cond: Tensor | None) -> Tensor:
        return self.flow.inverse(zs[0], cond)[0]
