"""Measure exactness: round-trip error and log-det error against the full autograd Jacobian, per layer and model.

    python benchmarks/exactness.py

Every layer and model is initialised on data and then has all parameters perturbed (N(0, 0.05^2)), so that
zero-initialised parts are not the identity. float64 rows: max |inverse(forward(x)) - x| and
max |logdet - log|det J|| with J from torch.autograd.functional.jacobian; float32 rows: round trip only, on the
paper-style 3x32x32 model (L=3, K=8, width 128).
"""

from __future__ import annotations

import torch

from glowflow import Glow, TabularGlow
from glowflow.layers import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    ChannelShuffle,
    GaussianPrior,
    InvertibleConv1x1,
    InvertibleLinear,
    Split,
    Squeeze,
)
from glowflow.layers.dequantization import to_continuous


@torch.no_grad()
def perturb(module: torch.nn.Module, scale: float = 0.05) -> None:
    for p in module.parameters():
        p.add_(scale * torch.randn_like(p))


def jacobian_logdet(fn, x: torch.Tensor) -> torch.Tensor:
    out = []
    for b in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda v: fn(v).reshape(-1), x[b : b + 1])
        out.append(torch.linalg.slogdet(jac.reshape(x[b].numel(), -1)).logabsdet)
    return torch.stack(out)


def layer_row(name: str, layer: torch.nn.Module, shape: tuple[int, ...]) -> tuple[str, float, float]:
    layer = layer.double()
    x = torch.randn(shape, dtype=torch.float64)
    layer(torch.randn(64, *shape[1:], dtype=torch.float64))
    perturb(layer)
    y, logdet = layer(x)
    rt = (layer.inverse(y)[0] - x).abs().max().item()
    ld = (logdet - jacobian_logdet(lambda v: layer(v)[0], x)).abs().max().item()
    return name, rt, ld


def model_row(name: str, model, shape: tuple[int, ...]) -> tuple[str, float, float]:
    model = model.double()
    model.encode(torch.rand(64, *shape[1:], dtype=torch.float64) - 0.5)
    perturb(model)
    x = torch.rand(shape, dtype=torch.float64) - 0.5
    zs, logdet = model.encode(x)
    rt = (model.decode(zs) - x).abs().max().item()

    def flat(v):
        return torch.cat([z.flatten(1) for z in model.encode(v)[0]], 1)

    ld = (logdet - jacobian_logdet(flat, x)).abs().max().item()
    return name, rt, ld


def main() -> None:
    torch.manual_seed(0)
    rows = [
        layer_row("ActNorm (B,C,H,W)", ActNorm(4), (2, 4, 4, 4)),
        layer_row("InvertibleConv1x1 LU", InvertibleConv1x1(6), (2, 6, 4, 4)),
        layer_row("InvertibleConv1x1 dense", InvertibleConv1x1(6, lu=False), (2, 6, 4, 4)),
        layer_row("InvertibleLinear LU", InvertibleLinear(6), (2, 6)),
        layer_row("ChannelShuffle", ChannelShuffle(6), (2, 6, 4, 4)),
        layer_row("AffineCoupling channel/glow", AffineCoupling(6, 16), (2, 6, 4, 4)),
        layer_row("AffineCoupling checkerboard/gated", AffineCoupling(3, 16, "gated", "checkerboard"), (2, 3, 4, 4)),
        layer_row("AdditiveCoupling channel/glow", AdditiveCoupling(6, 16), (2, 6, 4, 4)),
        layer_row("AffineCoupling MLP (B,D)", AffineCoupling(5, 16, "mlp"), (2, 5)),
        layer_row("Squeeze", Squeeze(), (2, 2, 4, 4)),
        layer_row("Split", Split(6), (2, 6, 4, 4)),
        layer_row("GaussianPrior", GaussianPrior((6, 4, 4)), (2, 6, 4, 4)),
        model_row("Glow 2x8x8 L=3 K=2 affine/LU", Glow((2, 8, 8), levels=3, steps=2, hidden=16), (2, 2, 8, 8)),
        model_row(
            "Glow 2x8x8 L=2 K=2 additive/reverse",
            Glow((2, 8, 8), levels=2, steps=2, hidden=16, coupling="additive", permutation="reverse"),
            (2, 2, 8, 8),
        ),
        model_row("TabularGlow D=6 K=4", TabularGlow(6, steps=4, hidden=32), (2, 6)),
    ]
    print(f"{'float64':40s} {'round trip':>12s} {'log-det err':>12s}")
    for name, rt, ld in rows:
        print(f"{name:40s} {rt:12.2e} {ld:12.2e}")

    model = Glow((3, 32, 32), levels=3, steps=8, hidden=128)
    k = torch.randint(0, 256, (16, 3, 32, 32)).float()
    x = to_continuous(k, torch.rand_like(k), 256)
    with torch.no_grad():
        model.encode(x)
        perturb(model, 0.01)
        zs, _ = model.encode(x)
        rt = (model.decode(zs) - x).abs().max().item()
    print(f"{'float32 Glow 3x32x32 L=3 K=8 w=128, B=16':40s} {rt:12.2e} {'':>12s}")


if __name__ == "__main__":
    main()
