"""Memory-saving backpropagation through a sequence of invertible layers.

* ``"checkpoint"``: ``torch.utils.checkpoint`` around each layer of the sequence: only the layer inputs are
  stored; each layer's forward runs again during the backward pass.
* ``"invertible"``: nothing inside the sequence is stored, only its output. The backward pass walks the layers
  in reverse, rebuilds each layer's input from its output with the exact inverse, re-runs that one layer with
  autograd on and backpropagates through it. Stored activations no longer grow with depth. Couplings provide
  ``rebuild(y, cond)``, which shares one conditioner evaluation between the inverse and the re-run forward;
  other layers are inverted and re-run.

Gradients equal those of standard backpropagation up to the round-off of the reconstruction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from glowflow.layers.actnorm import ActNorm
from glowflow.layers.base import zero_logdet

MEMORY_MODES = ("standard", "checkpoint", "invertible")


def leaf_layers(layers: Sequence[nn.Module]) -> list[nn.Module]:
    """Flatten nested sequences (anything with a ``layers`` list) into their leaf layers, in forward order."""
    out: list[nn.Module] = []
    for layer in layers:
        children = getattr(layer, "layers", None)
        out.extend(leaf_layers(children) if isinstance(children, nn.ModuleList) else [layer])
    return out


def memory_saving_forward(
    mode: str, layers: Sequence[nn.Module], x: Tensor, cond: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Run ``layers`` forward with autograd on, storing activations as ``mode`` (``"checkpoint"`` or
    ``"invertible"``) says. Returns ``(y, logdet)`` like ``FlowSequence.forward``."""
    if mode == "checkpoint":
        logdet = zero_logdet(x)
        for layer in layers:
            if _initializing(layer):  # the re-run in backward would skip the init and save different tensors
                x, ld = layer(x, cond)
            else:
                x, ld = checkpoint(layer, x, cond, use_reentrant=False, preserve_rng_state=False)
            logdet = logdet + ld
        return x, logdet
    leaves = leaf_layers(layers)
    params = [p for layer in leaves for p in layer.parameters() if p.requires_grad]
    return _InvertibleBackprop.apply(x, cond, leaves, *params)


def _initializing(layer: nn.Module) -> bool:
    return any(not m.is_initialized() for m in layer.modules() if isinstance(m, ActNorm))


def _rebuild(layer: nn.Module, y: Tensor, cond: Tensor | None):
    """-> (x, leaves, (y_rebuilt, logdet), input_grad), see ``_Coupling.rebuild``."""
    rebuild = getattr(layer, "rebuild", None)
    if rebuild is not None:
        return rebuild(y, cond)
    with torch.no_grad():
        x, _ = layer.inverse(y, cond)
    leaf = x.detach().requires_grad_()
    out = layer(leaf, cond)
    identity: Callable[[Tensor], Tensor] = lambda g: g  # noqa: E731
    return x.detach(), (leaf,), out, identity


class _InvertibleBackprop(torch.autograd.Function):
    """y, logdet = layers(x, cond); saves only y. Parameters are explicit inputs, so their gradients flow through
    the normal autograd machinery (gradient accumulation, DDP hooks)."""

    @staticmethod
    def forward(ctx, x: Tensor, cond: Tensor | None, layers: list[nn.Module], *params: Tensor):
        logdet = zero_logdet(x)
        y = x
        for layer in layers:
            y, ld = layer(y, cond)
            logdet = logdet + ld
        ctx.layers = layers
        ctx.params = params
        ctx.cond_needs_grad = cond is not None and cond.requires_grad
        ctx.save_for_backward(y, cond)
        return y, logdet

    @staticmethod
    def backward(ctx, grad_y: Tensor | None, grad_logdet: Tensor | None):
        y, cond = ctx.saved_tensors
        y = y.detach()
        grad_y = torch.zeros_like(y) if grad_y is None else grad_y
        if grad_logdet is None:
            grad_logdet = zero_logdet(y)
        index = {id(p): i for i, p in enumerate(ctx.params)}
        grad_params: list[Tensor | None] = [None] * len(ctx.params)
        cond_leaf = cond.detach().requires_grad_() if ctx.cond_needs_grad else cond
        grad_cond = None
        for layer in reversed(ctx.layers):
            with torch.enable_grad():
                x, leaves, (y_rebuilt, logdet), input_grad = _rebuild(layer, y, cond_leaf)
                params = [p for p in layer.parameters() if p.requires_grad]
                wrt = [*leaves, *params] + ([cond_leaf] if ctx.cond_needs_grad else [])
                # volume-preserving layers return a constant log-det, which has no graph
                pairs = [(o, g) for o, g in ((y_rebuilt, grad_y), (logdet, grad_logdet)) if o.requires_grad]
                outputs, out_grads = zip(*pairs, strict=True)
                grads = torch.autograd.grad(outputs, wrt, out_grads, allow_unused=True)
            n = len(leaves)
            grad_y = input_grad(
                *[torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads[:n], strict=True)]
            )
            for p, g in zip(params, grads[n : n + len(params)], strict=True):
                if g is not None:
                    i = index[id(p)]
                    grad_params[i] = g if grad_params[i] is None else grad_params[i] + g
            if ctx.cond_needs_grad and grads[-1] is not None:
                grad_cond = grads[-1] if grad_cond is None else grad_cond + grads[-1]
            y = x
        return (grad_y, grad_cond, None, *grad_params)
