"""K tensors of K modules stored as the K slices of one tensor, so that code batching over the K modules reads them
stacked without copying: :class:`TensorStack`.

:class:`~glowflow.layers.step.FlowSteps` packs the parameters and buffers of a level's K steps of flow this way (each
step's ActNorm bias is a view of one (K, C) tensor, and so on), and its folding of the K steps' weights reads each
kind as one (K, ...) tensor where ``torch.stack`` would copy it in every pass, and in training hand back the K
slices of its gradient by one ``unbind``. The modules, their parameters (the same ``nn.Parameter`` objects, each a
contiguous tensor of its own shape), ``state_dict`` and optimisers are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class TensorStack:
    """The K tensors ``tensors`` (same shape, dtype and device; parameters or buffers) re-pointed to the K slices of
    one new (K, *shape) tensor ``self.data`` that holds their values: ``tensors[k].data`` becomes ``data[k]``. The
    tensors stay the same objects, so modules, optimisers and hooks that hold them are unaffected.

    The packing lasts while the tensors keep their storage: writes in place (an optimiser step, ``copy_``, writes
    through ``.data``) land in ``data``; ``Module.to`` / ``.double()`` / ``load_state_dict(assign=True)`` and
    ``deepcopy`` give them new storage, which :meth:`holds` detects (their ``data_ptr``), and the owner packs them
    again. A ``state_dict`` of one of the modules alone shares the pack's storage, which ``torch.save`` writes
    whole; the model's own ``state_dict`` writes each pack once.
    """

    def __init__(self, tensors: Sequence[Tensor]) -> None:
        with torch.no_grad():
            self.data = torch.stack([t.detach() for t in tensors])
        for t, piece in zip(tensors, self.data, strict=True):
            t.data = piece
        self._pointers = [t.data_ptr() for t in tensors]

    @staticmethod
    def packable(tensors: Sequence[Tensor]) -> bool:
        """Whether ``tensors`` can be packed: at least two distinct tensors of one shape, dtype and device."""
        first = tensors[0]
        return (
            len(tensors) > 1
            and len({id(t) for t in tensors}) == len(tensors)
            and all(t.shape == first.shape and t.dtype == first.dtype and t.device == first.device for t in tensors)
        )

    def holds(self, tensors: Sequence[Tensor]) -> bool:
        """Whether ``tensors`` are still, in order, the slices of :attr:`data` (each at its slice's address)."""
        return [t.data_ptr() for t in tensors] == self._pointers

    def stacked(self, tensors: Sequence[Tensor]) -> Tensor:
        """``torch.stack(tensors)`` without the copy, for the ``tensors`` this stack :meth:`holds`: :attr:`data`
        itself where autograd does not record, else a view of it whose gradient goes to each tensor as its slice
        (one ``unbind`` of the gradient, made contiguous once for all K)."""
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            return _Slices.apply(self.data, *tensors)
        return self.data


class _Slices(torch.autograd.Function):
    """``stack(t_1..t_K)`` for tensors that are the slices of ``packed``: forward returns a view of ``packed`` (no
    copy), backward ``d t_k = grad[k]``."""

    @staticmethod
    def forward(ctx, packed: Tensor, *tensors: Tensor) -> Tensor:
        return packed.view_as(packed)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        return None, *grad.contiguous().unbind(0)
