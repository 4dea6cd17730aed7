"""Fast paths of the Glow step of flow, written as the math they compute.

Every helper here is one fusion with its formula in the docstring, used by both directions of the layers that call
it (:class:`~glowflow.layers.step.FlowStep`, :class:`~glowflow.layers.step.FlowSteps`,
:class:`~glowflow.layers.conditioners.ConvActNorm`, :class:`~glowflow.layers.conditioners.ZeroConv2d`,
:class:`~glowflow.layers.conv1x1.LUMatrix`). Three kinds:

* **parameter folding** (:func:`fold_actnorm`, :func:`fold_gain`, :func:`lu_weight`, :func:`lu_inverse_weight`,
  :func:`fold_mixing`, :func:`fold_unmixing`): an ActNorm or a gain next to a linear map becomes part of the map's
  weights, so the data are touched once. Every function takes an optional leading batch dimension, which is how
  :class:`~glowflow.layers.step.FlowSteps` computes the weights of all K steps of a level in one set of operations.
* **kernels with a fused activation** (:func:`conv_relu`, :func:`linear_relu`): oneDNN's post-op ReLU on CPU
  (float32, bfloat16), ``relu_(conv(...))`` elsewhere.
* **the whole step** (:func:`glow_step`, :func:`glow_step_inverse`): ActNorm -> LU 1x1 conv -> channel-split
  coupling with Glow's conditioner, as one ``torch.autograd.Function`` whose backward is derived by hand (for the K
  steps of a level, one node: :func:`glow_steps`). It stores its input (the previous step's output), its output,
  one hidden activation and the scale, recomputing the other hidden activation in the backward pass where that is
  cheap (:func:`keeps_first_hidden`) and copying the conditioner's input again from its output, and writes the
  coupling in place into the mixed tensor, so a step makes no layout copies.

The fast paths compute the same function as the plain composition of the layers (the tests check round trip,
log-det and gradients against it in float64 and float32); they differ only in rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

AFFINE_SHIFT = 2.0
"""Glow's scale is ``sigmoid(h + 2)``: the offset that makes a zero conditioner output scale by sigmoid(2)."""


# ---- parameter folding ------------------------------------------------------------------------------------------
Weights = Tensor | Sequence[Tensor]
"""A weight tensor, or the K weights of K steps (stacked by the folding, which then stores only references)."""


def fold_actnorm(weight: Weights, bias: Tensor, log_scale: Tensor) -> tuple[Tensor, Tensor]:
    """A bias-free linear map (conv or matrix) followed by ActNorm, as one map with a bias:

        ``(conv(x, w) + b) e^s = conv(x, w e^s) + b e^s``   (per output channel).

    Shapes: ``weight`` (..., C_out, *rest) or a sequence of K (C_out, *rest), ``bias`` / ``log_scale``
    (..., C_out) or (K, C_out); returns ``(w e^s, b e^s)``.
    """
    scale = log_scale.exp()
    return scale_rows(weight, scale), bias * scale


def fold_gain(weight: Weights, bias: Tensor, logs: Tensor, factor: float = 3.0) -> tuple[Tensor, Tensor]:
    """A convolution followed by the learned gain ``g = exp(factor * logs)`` of Glow's zero conv:

        ``conv(x, w, b) g = conv(x, w g, b g)``   (per output channel).

    Shapes: ``weight`` (..., C_out, *rest) or a sequence of K (C_out, *rest), ``bias`` (..., C_out),
    ``logs`` (..., C_out, 1, 1) or (..., C_out).
    """
    gain = (factor * logs).exp().reshape(bias.shape)
    return scale_rows(weight, gain), bias * gain


def scale_rows(weight: Weights, scale: Tensor) -> Tensor:
    """``w * scale`` per output channel: ``scale`` (..., C_out) broadcast over the rest of ``w`` (..., C_out, *rest).
    For a sequence of K weights, ``stack(w) * scale`` with ``scale`` (K, C_out), by :class:`_StackedScale`, which
    stores references to the weights instead of their stacked copy."""
    if isinstance(weight, Tensor):
        return weight * scale.view(*scale.shape, *(1,) * (weight.dim() - scale.dim()))
    if not torch.is_grad_enabled():  # nothing to store (and torch.compile then traces no autograd.Function)
        return _stack_scaled(scale, weight)
    return _StackedScale.apply(scale, *weight)


def _stack_scaled(scale: Tensor, weights: Sequence[Tensor]) -> Tensor:
    """``stack(weights) * scale``, the scaling in place on the stack."""
    stacked = torch.stack(tuple(weights))
    return stacked.mul_(scale.view(*scale.shape, *(1,) * (stacked.dim() - scale.dim())))


class _StackedScale(torch.autograd.Function):
    """``stack(w_1..w_K) * scale`` (``scale`` (K, C_out)); the backward rebuilds the stack instead of storing it:
    ``dw_k = g_k * scale_k``, ``dscale = sum over the rest of g * stack(w)``."""

    @staticmethod
    def forward(ctx, scale, *weights):
        ctx.save_for_backward(scale, *weights)
        return _stack_scaled(scale, weights)

    @staticmethod
    def backward(ctx, grad):
        scale, *weights = ctx.saved_tensors
        view = scale.view(*scale.shape, *(1,) * (grad.dim() - scale.dim()))
        g_scale = (grad * torch.stack(weights)).sum(tuple(range(2, grad.dim()))) if ctx.needs_input_grad[0] else None
        return g_scale, *(grad * view).unbind(0)


def lu_weight(perm: Tensor, lower: Tensor, upper: Tensor, sign_s: Tensor, log_s: Tensor) -> Tensor:
    """``W = P L (U + diag(sign_s * exp(log_s)))`` with ``L = tril(lower, -1) + I`` and ``U = triu(upper, 1)``.

    Shapes: ``perm`` / ``lower`` / ``upper`` (..., n, n), ``sign_s`` / ``log_s`` (..., n); returns (..., n, n).
    """
    lo, up = _lu_factors(lower, upper, sign_s, log_s)
    return perm @ (lo @ up)


def lu_inverse_weight(perm: Tensor, lower: Tensor, upper: Tensor, sign_s: Tensor, log_s: Tensor) -> Tensor:
    """``W^-1 = U^-1 L^-1 P^T`` of :func:`lu_weight`, by two triangular solves (no general inverse)."""
    lo, up = _lu_factors(lower, upper, sign_s, log_s)
    lp = torch.linalg.solve_triangular(lo, perm.transpose(-1, -2), upper=False, unitriangular=True)
    return torch.linalg.solve_triangular(up, lp, upper=True)


def _lu_factors(lower: Tensor, upper: Tensor, sign_s: Tensor, log_s: Tensor) -> tuple[Tensor, Tensor]:
    eye = torch.eye(log_s.shape[-1], dtype=log_s.dtype, device=log_s.device)
    return torch.tril(lower, -1) + eye, torch.triu(upper, 1) + torch.diag_embed(sign_s * log_s.exp())


def fold_mixing(weight: Tensor, bias: Tensor, log_scale: Tensor) -> tuple[Tensor, Tensor]:
    """ActNorm ``(x + b) e^s`` followed by the channel mixing ``W``, as one affine map of the channel vector:

        ``W (e^s * (x + b)) = A x + c``,   ``A = W diag(e^s)``,   ``c = W (e^s * b)``.

    Shapes: ``weight`` (..., C, C), ``bias`` / ``log_scale`` (..., C); returns ``(A, c)``.
    """
    scale = log_scale.exp()
    return weight * scale.unsqueeze(-2), (weight @ (bias * scale).unsqueeze(-1)).squeeze(-1)


def fold_unmixing(inverse_weight: Tensor, bias: Tensor, log_scale: Tensor) -> tuple[Tensor, Tensor]:
    """The inverse of :func:`fold_mixing`'s map, from ``W^-1``:

    ``x = e^-s * (W^-1 y) - b = A' y + c'``,   ``A' = diag(e^-s) W^-1``,   ``c' = -b``.
    """
    return (-log_scale).exp().unsqueeze(-1) * inverse_weight, -bias


def channels_last_weights(weight: Tensor, rows: int | None = None) -> Tensor:
    """K convolution weights (K, C_out, C_in, kh, kw) laid out so that each ``weight[k]`` is channels-last, the layout
    oneDNN's kernels take with channels-last activations (otherwise every convolution call reorders its weight).
    With ``rows`` > C_out, zero filters are appended: (K, rows, C_in, kh, kw) (:func:`padded_out_channels`)."""
    extra = 0 if rows is None else rows - weight.shape[1]
    if extra > 0:
        return F.pad(weight.permute(0, 1, 3, 4, 2), (0, 0, 0, 0, 0, 0, 0, extra)).permute(0, 1, 4, 2, 3)
    return weight.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


CPU_OUTPUT_CHANNEL_BLOCK: int | None = {"AVX512": 16, "AVX2": 8}.get(torch.backends.cpu.get_cpu_capability())
"""Output channels per block of oneDNN's direct convolutions on this CPU (one float32 vector: 16 with AVX-512, 8 with
AVX2; None elsewhere), read once: ATen fixes its CPU capability at start-up, and torch.compile does not trace the
query."""


def padded_out_channels(c_out: int, device: torch.device) -> int:
    """How many output channels the conditioner's last convolution computes for ``c_out`` wanted ones: ``c_out``
    rounded up to a whole block of oneDNN's direct CPU convolution (:data:`CPU_OUTPUT_CHANNEL_BLOCK`), the extra filters
    zero and their outputs never read. A partial block cost about as much as a whole one, and the tail made the
    kernel slower still: Intel Xeon with AMX, 3x3 from 128 channels, batch 16, float32 (bfloat16): 12 -> 16 channels
    on 16x16 480 against 461 us (117 / 107), 24 -> 32 on 8x8 257 / 217 (102 / 86), 48 -> 64 on 4x4 179 / 143
    (107 / 98); limited to AVX2 (``ONEDNN_MAX_CPU_ISA``, blocks of 8) 12 -> 16 745 / 641, while 24 -> 32 and
    48 -> 64 were slower. Convolutions with at most :data:`FEW_OUTPUT_CHANNELS` keep their count (float32 takes the
    col2im form; bfloat16 256 -> 4 channels ran slower padded to 16: 256 against 301 us), as do other devices."""
    block = CPU_OUTPUT_CHANNEL_BLOCK if device.type == "cpu" else None
    if block is None or c_out <= FEW_OUTPUT_CHANNELS:
        return c_out
    return -(-c_out // block) * block


MKL_INFERENCE_PRODUCTS: bool = CPU_OUTPUT_CHANNEL_BLOCK == 8
"""Whether the fused steps' passes with autograd off (evaluation, sampling; not the forward of a training step)
compute their float32 matrix products by MKL (``F.linear`` then ``relu_``, ``torch.mm``) instead of oneDNN's: on a
CPU whose kernels are AVX2 only (:data:`CPU_OUTPUT_CHANNEL_BLOCK` 8), read once. On an AMD EPYC (Zen 3, AVX2),
hot and interleaved, MKL's ran 0.71-0.87x the time of oneDNN's for every 1x1-conv shape of S and M (256 x 128 @
128 x 128 rows: 65 against 92 us, with the ReLU; 8192 x 256 @ 256 x 256: 5.8 against 6.9 ms); in-process A/Bs
against oneDNN's products (paired medians): config M evaluation 0.930x, sampling 0.920x the time, S's evaluation
and sampling 0.985-1.015x (within the host's noise; toggled in one model 0.97-0.98x). In a training step's forward
they were neutral to slower (S 0.99x, M 1.01x; M 1.064x for the backward's products, fifteenth pass), so it keeps
oneDNN's. With AVX-512 oneDNN's stay, faster there: on Zen 4 1.2-1.9x ``torch.mm``'s speed (:func:`matmul`), and
on an Intel Xeon with AMX MKL's made M's evaluation 1.024x the time."""


def _mkl_products(x: Tensor, inference: bool) -> bool:
    """Whether an ``inference`` product of ``x`` goes to MKL (:data:`MKL_INFERENCE_PRODUCTS`)."""
    return inference and MKL_INFERENCE_PRODUCTS and x.dtype == torch.float32 and x.device.type == "cpu"


def mix_channels(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``W x (+ bias)`` applied to the channel vector at every position of ``x`` (B, C) or (B, C, H, W).

    Images are multiplied as one matrix product over the channel axis in (B, H, W, C) order, so the result has
    channels-last memory layout.
    """
    if x.dim() == 2:
        return F.linear(x, weight, bias)
    return F.linear(x.permute(0, 2, 3, 1), weight, bias).permute(0, 3, 1, 2)


# ---- kernels with a fused activation ------------------------------------------------------------------------------
# dtypes whose kernels oneDNN could not create on this CPU (fused activation or plain product; bf16 without
# AVX-512: "could not create a primitive descriptor"); from the first failure on, the plain operations serve them.
_NO_FUSED_KERNEL: set[torch.dtype] = set()


def _onednn(x: Tensor, *others: Tensor) -> bool:
    """Whether oneDNN's fused post-op kernels serve ``x``: CPU float32 / bfloat16 in eager mode, autograd not
    recording (those kernels have no derivative; the callers with autograd use the plain composition), and a
    kernel for its dtype on this CPU. ``is_compiling`` comes first: torch.compile does not trace
    ``torch.backends.mkldnn.is_available`` and would split its graph at every call."""
    return (
        not torch.compiler.is_compiling()
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and x.dtype not in _NO_FUSED_KERNEL
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in (x, *others)))
    )


def conv_relu(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``relu(conv(x, w) + b)``, stride 1, "same" padding, with the ReLU fused into the convolution where the
    backend can. Shapes: (B, C_in, H, W) -> (B, C_out, H, W)."""
    pad = weight.shape[-1] // 2
    if _onednn(x, weight, bias):
        try:
            args = (x, weight, bias, [pad, pad], [1, 1], [1, 1], 1, "relu", [], "")
            return torch.ops.mkldnn._convolution_pointwise(*args)
        except RuntimeError:
            _NO_FUSED_KERNEL.add(x.dtype)
    out = F.conv2d(x, weight, bias, padding=pad)
    return out.relu() if torch.is_grad_enabled() else out.relu_()


def linear_relu(x: Tensor, weight: Tensor, bias: Tensor, inference: bool = False) -> Tensor:
    """``relu(x W^T + b)`` for rows ``x`` (N, C_in) -> (N, C_out), the ReLU fused where the backend can;
    ``inference``: in a pass with autograd off (:data:`MKL_INFERENCE_PRODUCTS`). ``weight`` may be
    :func:`prepack_linear_weight`'s (autograd off)."""
    if weight.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "relu", [], "")
    if _onednn(x, weight, bias) and not _mkl_products(x, inference):
        try:
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "relu", [], "")
        except RuntimeError:
            _NO_FUSED_KERNEL.add(x.dtype)
    out = F.linear(x, weight, bias)
    return out.relu() if torch.is_grad_enabled() else out.relu_()


def matmul(a: Tensor, b: Tensor, inference: bool = False) -> Tensor:
    """``a @ b`` for a row-major (M, K) ``a`` and a (K, N) ``b``, by oneDNN's matrix product where it serves (CPU
    float32 / bfloat16, autograd not recording, see :func:`_onednn`), otherwise ``torch.mm``. The step's backward and
    the col2im convolutions use it: on Zen 4 (torch 2.13, MKL 2024.2, oneDNN 3.12) it ran 1.2-1.9x faster than
    ``torch.mm`` for their shapes (8192x256 @ 256x256: 189 vs 147 GFLOP/s; 8192x36 @ 36x256: 148 vs 79). The
    weight-gradient products ``a^T b`` stay with ``torch.mm``, which takes the transposed operand without a copy.
    ``inference``: in a pass with autograd off, where AVX2-only CPUs take ``torch.mm``
    (:data:`MKL_INFERENCE_PRODUCTS`)."""
    if a.is_contiguous() and a.dtype == b.dtype and _onednn(a, b) and not _mkl_products(a, inference):
        try:
            return torch.ops.mkldnn._linear_pointwise(a, b.t(), None, "none", [], "")
        except RuntimeError:
            _NO_FUSED_KERNEL.add(a.dtype)
    return a @ b


FEW_INPUT_CHANNELS = 4
"""At or below this many input channels a float32 convolution runs as unfold + matrix product (measured on Zen 4 with
oneDNN 3.12: 1.7x faster than the direct convolution, forward + backward, for 2 -> 256 channels on 16x16 images;
slower from 6 input channels on)."""
FEW_OUTPUT_CHANNELS = 8
"""At or below this many output channels a float32 convolution runs as matrix product + fold (measured: 2x faster for
256 -> 4 channels on 16x16, 1.1-1.8x for 256 -> 8 on 8x8; slower for 128 -> 12)."""
FEW_OUTPUT_CHANNELS_BACKWARD = 24 if CPU_OUTPUT_CHANNEL_BLOCK == 8 else FEW_OUTPUT_CHANNELS
"""At or below this many output channels a convolution's backward runs in the col2im form (:func:`conv_same_backward`;
float32, and bfloat16 where :func:`_few_channels` lets it). With AVX2 (:data:`CPU_OUTPUT_CHANNEL_BLOCK` 8) up to 24
as well, the forward staying direct (12 channels padded to 16, :func:`padded_out_channels`). On an AMD EPYC (Zen 3,
AVX2 only), batch 16: 128 -> 12 channels on 16x16 1,909 against 2,501 us (interleaved medians; 128 -> 8 1,328
against 1,500), config S's training 0.956x the time with the bound at 12; 128 -> 24 on 8x8 1,079 against 992 us hot,
yet in the step the bound at 24 made S's training 0.989-0.997x the time (paired medians of six in-process A/Bs, 20-40
rounds each; a null A/B read 0.994) and at 48 (S's third level too) 1.010x. With AVX-512 the bound stays 8: 12
there made S's training 1.032x the time (Zen 4)."""


def _few_channels(x: Tensor, c_in: int, c_out: int, backward: bool = False) -> tuple[bool, bool]:
    """Whether :func:`conv_same` (or with ``backward`` :func:`conv_same_backward`, whose col2im bound is
    :data:`FEW_OUTPUT_CHANNELS_BACKWARD`) takes the im2col (few input channels) or the col2im form (few output
    channels). Never for bfloat16 on a CPU with AMX (:func:`_cpu_has_amx`) or on another device, whose direct oneDNN
    convolutions ran faster at every channel count measured (Intel Xeon with AMX, batch 32: 2 -> 256 on 16x16 forward
    317 vs 532 us, backward 1137 vs 1394; 256 -> 4 forward 411 vs 950, backward 1234 vs 1176; config M's bf16 evaluation
    0.79x, sampling 0.84x, training 0.96x the time). Without AMX, bfloat16 takes them as float32 does: on an AMD EPYC
    (Zen 4, AVX512-BF16) config M's bf16 training 0.919-0.961x, evaluation 0.933-0.960x the time of the direct
    convolutions (their backward is the slow part there: 2 -> 256 on 16x16 2,555 against 1,803 us)."""
    if x.dtype == torch.bfloat16 and (x.device.type != "cpu" or _cpu_has_amx()):
        return False, False
    return c_in <= FEW_INPUT_CHANNELS, c_out <= (FEW_OUTPUT_CHANNELS_BACKWARD if backward else FEW_OUTPUT_CHANNELS)


def conv_same(
    x: Tensor,
    weight: Tensor | Col2imWeight | Im2colWeight,
    bias: Tensor,
    relu: bool = False,
    out_dtype: torch.dtype | None = None,
    inference: bool = False,
    cols: Tensor | None = None,
) -> Tensor:
    """``conv(x, w) + b`` (then ReLU if ``relu``), stride 1, "same" padding (odd k x k kernels), by whichever of
    three equal computations suits the channel counts and dtype (:func:`_few_channels`; differentiable when autograd
    records):

    * few input channels: im2col, ``unfold(x) @ w_flat^T + b`` (``w_flat[c, (i, j, h)] = w[c, h, i, j]``);
    * few output channels: col2im, ``fold(a @ W) + b`` with ``W[h, (i, j, c)] = w[c, h, k-1-i, k-1-j]`` (the
      flipped kernel: fold adds each position's patch of outputs around it, :func:`_fold_rows`);
    * otherwise oneDNN's direct convolution (:func:`conv_relu` with the ReLU fused).

    ``weight`` may be :func:`prepack_conv_weight`'s (autograd off), for the form it was prepared for.

    Shapes: (B, C_in, H, W) -> (B, C_out, H, W), in ``out_dtype`` (default ``x``'s). ``inference``: in a pass with
    autograd off, for the products of the first two forms (:data:`MKL_INFERENCE_PRODUCTS`). The col2im form's fold sums
    the k*k products in ``out_dtype``: a bfloat16 convolution with a float32 output rounds each product once and the
    sum not at all, where a bfloat16 fold would round the sum a second time. ``cols``: the im2col form's columns
    ``_unfold_rows(x, k)`` where the caller has them (:func:`im2col_columns`), not unfolded again.
    """
    c_out, c_in, k, _ = weight.shape
    out_dtype = out_dtype or x.dtype
    few_in, few_out = _few_channels(x, c_in, c_out)
    if few_in:
        cols = _unfold_rows(x, k) if cols is None else cols
        flat = weight.packed if isinstance(weight, Im2colWeight) else weight.permute(0, 2, 3, 1).reshape(c_out, -1)
        out = _image(linear_relu(cols, flat, bias, inference) if relu else _linear(cols, flat, bias), x)
    elif few_out:
        if isinstance(weight, Col2imWeight) and weight.packed is not None:
            cols = _linear(_rows(x), weight.packed)
        else:
            matrix = weight.matrix if isinstance(weight, Col2imWeight) else _fold_weight(weight)
            cols = matmul(_rows(x), matrix, inference)
        out = _fold_rows(cols.to(out_dtype), x, k, bias.to(out_dtype))
        return out.relu_() if relu and not torch.is_grad_enabled() else (out.relu() if relu else out)
    elif weight.is_mkldnn:  # prepacked by prepack_conv_weight
        args = ([k // 2] * 2, [1, 1], [1, 1], 1, "relu" if relu else "none", [], "")
        out = torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *args)
    elif relu:
        out = conv_relu(x, weight, bias)
    else:
        out = F.conv2d(x, weight, bias, padding=k // 2)
    return out.to(out_dtype)


def im2col_columns(x: Tensor, weight: Tensor | Col2imWeight | Im2colWeight) -> Tensor | None:
    """The columns ``_unfold_rows(x, k)`` that :func:`conv_same` multiplies where it takes the im2col form for
    ``x`` and ``weight`` (few input channels, :func:`_few_channels`), else None. The fused step's forward keeps them
    for its backward where the weight gradient is their product (:func:`keeps_columns`)."""
    c_out, c_in, k, _ = weight.shape
    return _unfold_rows(x, k) if _few_channels(x, c_in, c_out)[0] else None


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x W^T (+ b)`` for a plain weight or :func:`prepack_linear_weight`'s (autograd off)."""
    if weight.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class Col2imWeight(NamedTuple):
    """A convolution weight (C_out, C_in, k, k) that :func:`conv_same` takes in the col2im form, prepared once for
    passes with autograd off (:func:`prepack_conv_weight`): ``matrix`` is its ``_fold_weight`` (C_in, k * k * C_out),
    which every call with the plain weight computes again (a flip: about 58 us for config M's 256 -> 4 / 8
    channels, 32 of them in each of M's sampling calls); ``packed`` the same product's weight ``matrix^T`` in
    oneDNN's blocked layout (:func:`prepack_linear_weight`), or None where oneDNN's product does not serve."""

    shape: torch.Size
    matrix: Tensor
    packed: Tensor | None = None

    @property
    def dtype(self) -> torch.dtype:
        return self.matrix.dtype


class Im2colWeight(NamedTuple):
    """A convolution weight (C_out, C_in, k, k) that :func:`conv_same` takes in the im2col form, prepared once for
    passes with autograd off (:func:`prepack_conv_weight`): ``packed`` is its flat matrix ``w_flat`` (C_out,
    k * k * C_in) in oneDNN's blocked layout (:func:`prepack_linear_weight`)."""

    shape: torch.Size
    packed: Tensor

    @property
    def dtype(self) -> torch.dtype:
        return self.packed.dtype


def is_prepacked(weight: Tensor | Col2imWeight | Im2colWeight) -> bool:
    """Whether :func:`prepack_conv_weight` or :func:`prepack_linear_weight` changed ``weight`` (into oneDNN's
    blocked layout or col2im's / im2col's matrices)."""
    return isinstance(weight, (Col2imWeight, Im2colWeight)) or weight.is_mkldnn


def prepack_conv_weight(weight: Tensor, x_shape: Sequence[int]) -> Tensor | Col2imWeight | Im2colWeight:
    """``weight`` (C_out, C_in, k, k) reordered once into the blocked layout that oneDNN's direct convolution reads
    for inputs of ``x_shape`` (B, C_in, H, W): an opaque mkldnn tensor of the same values, which :func:`conv_same`
    takes in place of ``weight`` with autograd off (for inputs of any shape; of ``x_shape`` without a reorder).
    Given the plain weight, every such call first reorders it (oneDNN's verbose log: 50 weight reorders in each
    evaluation of config S). A weight that :func:`conv_same` takes in the col2im form comes back as its
    :class:`Col2imWeight`, one it takes in the im2col form (:func:`_few_channels`) as its :class:`Im2colWeight`,
    their products' weights prepacked where oneDNN's product serves (:func:`prepack_linear_weight`; on an AMD EPYC
    (Zen 5), hot, 4096 rows: im2col 18 -> 256 with the ReLU 107 against 120 us, col2im 256 -> 36 220 against 228, in
    bfloat16 115 against 153); ``weight`` as it is for an im2col weight without oneDNN's product, for a bfloat16
    weight on a CPU without native bfloat16, on other devices and where oneDNN does not serve. Hot on an AMD EPYC
    (Zen 3, AVX2), batch 16, float32, prepacked against plain (interleaved medians): 6 -> 128 channels on 16x16 819
    against 975 us, 12 -> 128 on 8x8 295 / 304, 24 -> 128 on 4x4 145 / 206, 128 -> 16 on 16x16 931 / 971, 128 -> 48
    on 4x4 208 / 244."""
    c_out, c_in, k, _ = weight.shape
    few_in, few_out = _few_channels(weight, c_in, c_out)  # the weight's dtype and device are its input's
    recording = torch.is_grad_enabled() and weight.requires_grad
    rows = x_shape[0] * x_shape[2] * x_shape[3]
    if few_in and not recording:
        packed = prepack_linear_weight(weight.permute(0, 2, 3, 1).reshape(c_out, -1).contiguous(), rows)
        return Im2colWeight(weight.shape, packed) if packed.is_mkldnn else weight
    if few_out and not recording:
        matrix = _fold_weight(weight)
        packed = prepack_linear_weight(matrix.t().contiguous(), rows)
        return Col2imWeight(weight.shape, matrix, packed if packed.is_mkldnn else None)
    if few_in or few_out or not _onednn_prepacks(weight):
        return weight
    try:
        return torch.ops.mkldnn._reorder_convolution_weight(weight, [k // 2] * 2, [1, 1], [1, 1], 1, list(x_shape))
    except RuntimeError:
        return weight


def prepack_linear_weight(weight: Tensor, rows: int) -> Tensor:
    """``weight`` (C_out, C_in) of :func:`linear_relu` (the conditioner's 1x1 convolution) reordered once into
    oneDNN's blocked layout for products with about ``rows`` rows: an opaque mkldnn tensor of the same values, which
    :func:`linear_relu` takes with autograd off for any number of rows. Given the plain weight, every product first
    reorders it: on an AMD EPYC (Zen 5), hot, float32 with the ReLU, 4096 rows 256 -> 256 1,094 against 1,301 us,
    1024 rows 289 / 336, 4096 rows 128 -> 128 285 / 357, 256 rows 33 / 38; bfloat16 0.95-0.96x the time; the same
    results bit for bit there, for every row count tried. ``weight`` as it is where :func:`linear_relu` would not
    take oneDNN's product in a pass with autograd off (:func:`_onednn`, :data:`MKL_INFERENCE_PRODUCTS`) and for a
    bfloat16 weight on a CPU without native bfloat16."""
    if not _onednn_prepacks(weight) or _mkl_products(weight, inference=True):
        return weight
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight, rows)
    except RuntimeError:
        return weight


def _onednn_prepacks(weight: Tensor) -> bool:
    """Whether oneDNN's kernels serve ``weight`` (:func:`_onednn`) in a layout of their own: not for a bfloat16
    weight on a CPU without native bfloat16."""
    return _onednn(weight) and not (weight.dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported())


def conv_same_backward(
    grad: Tensor, x: Tensor, weight: Tensor, cols: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (input, weight, bias) of :func:`conv_same` without the ReLU, by the same computation as its forward:
    ``dx = fold(dy_rows w_flat)``, ``dw_flat = dy_rows^T unfold(x)`` (im2col; in float32 on CPU oneDNN's weight gradient
    of the convolution instead, which on an AMD EPYC (Zen 4) took 444-565 us against 1,565-1,982 for the unfold and
    product at 2 -> 256 channels on 32 x 16 x 16, config M's training step 0.965-0.987x the time; in bf16 it gained
    nothing there); ``dx = unfold(dy) W'``, ``dW' = x_rows^T unfold(dy)`` with ``W'[(i, j, c), h] = w[c, h, k-1-i,
    k-1-j]`` (col2im); or oneDNN's convolution backward. In bfloat16 on AMX (direct convolutions,
    :func:`_few_channels`) a convolution with few output channels takes only ``dx`` from oneDNN and ``dW'`` as in
    col2im (MKL's bf16 product; oneDNN's weight gradient took 759 against 554 us for 256 -> 4 channels on 32 x 16 x
    16, config M's bf16 training 0.965x the time, Intel Xeon with AMX). The bias gradient, a sum over all positions,
    is :func:`channel_sum`'s (for bfloat16 with oneDNN's weight gradient the same rounding computed inside its
    convolution backward, sparing a pass over ``grad``). ``cols``: the im2col form's ``_unfold_rows(x, k)`` where the
    caller kept them from the forward pass (:func:`im2col_columns`), for the weight gradient's product."""
    c_out, c_in, k, _ = weight.shape
    few_in, few_out = _few_channels(x, c_in, c_out, backward=True)
    if few_in:
        g_rows = _rows(grad)
        if onednn_im2col_weight_gradient(grad):
            g_w = torch.ops.aten.convolution_backward(
                grad, x, weight, [c_out], [1, 1], [k // 2, k // 2], [1, 1], False, [0, 0], 1, [False, True, False]
            )[1]  # fmt: skip
        else:
            cols = _unfold_rows(x, k) if cols is None else cols
            g_w = rows_product(g_rows, cols).view(c_out, k, k, c_in).permute(0, 3, 1, 2)
        g_cols = matmul(g_rows, weight.permute(0, 2, 3, 1).reshape(c_out, -1))  # bf16's k*k terms summed in float32
        g_x = _fold_rows(g_cols.float() if g_cols.dtype == torch.bfloat16 else g_cols, x, k)
        return g_x, g_w, channel_sum(grad, (0, 2, 3))
    if few_out:
        g_cols = _unfold_rows(grad, k)
        g_x = _image(matmul(g_cols, weight.flip(2, 3).permute(2, 3, 0, 1).reshape(-1, c_in)), x)
        return g_x, _col2im_weight_grad(x, g_cols, k), channel_sum(grad, (0, 2, 3))
    bf16 = grad.dtype == torch.bfloat16
    rows_weight = bf16 and c_out <= FEW_OUTPUT_CHANNELS
    fused_bias = bf16 and not rows_weight
    g_x, g_w, g_bias = torch.ops.aten.convolution_backward(
        grad, x, weight, [c_out], [1, 1], [k // 2, k // 2], [1, 1], False, [0, 0], 1,
        [True, not rows_weight, fused_bias],
    )  # fmt: skip
    if rows_weight:
        return g_x, _col2im_weight_grad(x, _unfold_rows(grad, k), k), channel_sum(grad, (0, 2, 3))
    return g_x, g_w, g_bias.float() if fused_bias else channel_sum(grad, (0, 2, 3))


def onednn_im2col_weight_gradient(grad: Tensor) -> bool:
    """Whether :func:`conv_same_backward` takes an im2col convolution's weight gradient from oneDNN's convolution
    backward (float32 on the CPU) rather than as the product of ``grad``'s rows with the columns."""
    return grad.dtype == torch.float32 and grad.device.type == "cpu"


def _col2im_weight_grad(x: Tensor, g_cols: Tensor, k: int) -> Tensor:
    """The weight gradient of a "same" convolution from ``g_cols = unfold(dy)`` (B*H*W, k*k*C_out): ``x_rows^T g_cols``
    read back as (C_out, C_in, k, k), flipped (col2im's ``W'`` of :func:`conv_same_backward`)."""
    c_in, c_out = x.shape[1], g_cols.shape[1] // (k * k)
    return rows_product(_rows(x), g_cols).view(c_in, k, k, c_out).permute(3, 0, 1, 2).flip(2, 3)


def channel_sum(grad: Tensor, dims: tuple[int, ...]) -> Tensor:
    """A bias gradient: ``grad`` summed over ``dims`` (all but the channel dimension), accumulated in float32 and
    returned in at least float32.

    On an Intel CPU (:func:`_mkl_gemv_is_fast`), a float32 / float64 ``grad`` whose channels are its last, dense
    dimension (the (N, C) rows of a linear map or a channels-last (B, C, H, W) image) is summed as a matrix-vector
    product with ones, ``rows^T 1``: MKL's product read the rows faster than the reduction (config M's float32
    training step 0.980-0.985x the time, S's 0.991-0.997x; Intel Xeon with AMX, in-process A/B). Elsewhere the
    reduction serves: on an AMD EPYC (Zen 4) the same product ran 3x slower than it (8192 x 256 rows: 218 against
    73 us hot, 993 against 248 cold; config M's training step 0.968x the time with the reduction, S's 0.96-0.98x).

    A bfloat16 ``grad``'s sum is rounded once to bfloat16 (relative error <= 2^-9, as the bfloat16 weight gradients
    of the same layer): ``sum(dtype=float32)`` would first convert the whole of ``grad`` to float32, which made bf16
    training steps 3 % (S) and 8 % (M) slower on an Intel Xeon with AMX."""
    if grad.dtype == torch.bfloat16:
        return grad.sum(dims).float()
    rows = _channel_rows(grad, dims)
    if rows is not None:
        return torch.mv(rows.t(), _ones(rows.shape[0], grad.dtype, grad.device))
    if grad.dtype in (torch.float32, torch.float64):  # (torch.promote_types is a dispatched call: ~100 a step)
        return grad.sum(dims)
    return grad.sum(dims, dtype=torch.float32)


def _channel_rows(grad: Tensor, dims: tuple[int, ...]) -> Tensor | None:
    """``grad`` as its (N, C) matrix of channel vectors when that is a view and :func:`channel_sum` takes the
    product (an Intel CPU, float32 / float64, eager mode), else None."""
    cpu_float = grad.device.type == "cpu" and grad.dtype in (torch.float32, torch.float64)
    if not cpu_float or torch.compiler.is_compiling() or not _mkl_gemv_is_fast():
        return None
    if grad.dim() == 2 and dims == (0,) and grad.is_contiguous():
        return grad
    if grad.dim() == 4 and dims == (0, 2, 3) and grad.is_contiguous(memory_format=torch.channels_last):
        return _rows(grad)
    return None


def _cpu_capabilities() -> dict:
    """This CPU's name and instruction sets as torch's cpuinfo reads them (``torch.cpu.get_capabilities()``); empty
    where it cannot tell. Read once, at import: a constant to torch.compile, which does not trace the query."""
    try:
        return dict(torch.cpu.get_capabilities())
    except (AttributeError, RuntimeError):
        return {}


def _intel_cpu(capabilities: dict) -> bool:
    """Whether the CPU is an Intel one: by its name in ``capabilities``, else by ``/proc/cpuinfo``'s first
    ``vendor_id`` line (read up to it, not the whole file: this runs at import)."""
    if "intel" in str(capabilities.get("cpu_name", "")).lower():
        return True
    try:
        with open("/proc/cpuinfo") as info:
            vendor = next((line for line in info if line.startswith("vendor_id")), "")
    except OSError:
        return False
    return "GenuineIntel" in vendor


_CPU = _cpu_capabilities()
_INTEL = _intel_cpu(_CPU)


def _mkl_gemv_is_fast() -> bool:
    """Whether this CPU is an Intel one, where MKL (torch's CPU BLAS) takes its tuned code paths; on other vendors'
    CPUs it takes generic ones, and its matrix-vector product lost to aten's reduction (:func:`channel_sum`)."""
    return _INTEL


def _cpu_has_amx() -> bool:
    """Whether this CPU has AMX's bfloat16 tiles, on which oneDNN's direct bfloat16 convolutions beat the im2col and
    col2im forms (:func:`_few_channels`)."""
    return bool(_CPU.get("amx_bf16", False))


_ONES: dict[tuple[torch.dtype, torch.device], Tensor] = {}


def _ones(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A vector of ``n`` ones: a view of one kept per (dtype, device), grown to the longest asked for. Never written
    to; created outside inference mode, so that autograd may save it."""
    ones = _ONES.get((dtype, device))
    if ones is None or ones.shape[0] < n:
        with torch.inference_mode(False), torch.no_grad():
            ones = _ONES[(dtype, device)] = torch.ones(n, dtype=dtype, device=device)
    return ones[:n]


def rows_product(a: Tensor, b: Tensor) -> Tensor:
    """``a^T b`` for two row matrices ``a`` (N, P) and ``b`` (N, Q) with the same N rows (a weight gradient: sum over
    positions of outer products), -> (P, Q). Where :func:`_onednn_weight_gradient` says (float32, a non-Intel CPU with
    AVX-512, a large enough product) oneDNN's :func:`conv1x1_weight_gradient`: on an AMD EPYC (Zen 5) config M's
    float32 training step 0.857x the time, S's 0.968x (paired medians of in-process A/Bs, 10-12 rounds), where MKL's
    products had run at 200 GFLOP/s against oneDNN's 450-510.

    Otherwise, for a narrower ``b``, ``(b^T a)^T`` (a transposed view): MKL's product with the few columns as its rows
    ran 1.6-2x faster on an Intel Xeon with AMX (8192 rows, 256 @ 36: 600 against 961 us; 256 @ 18: 434 against
    874 us, hot), config M's float32 training 0.96-0.97x the time; equal on Zen 4 (cold).

    On a CPU with T > 1 threads and at least 2048 rows per thread, the rows are cut into T blocks, their T products
    computed as one batched product (a block per thread, no output shared between threads) and summed: on an AMD
    EPYC (Zen 4), 2 threads, 8192 rows, 256 @ 256: 5.9 against 6.4 ms; 36 @ 256: 0.90 against 1.20 ms (hot); at
    2048 rows no faster. Config M's float32 training 0.960-0.967x the time, bf16 0.956-0.992x. Two blocks are summed
    by one addition, the same single rounding as the reduction over them, which ran 7x slower for bf16 blocks (256
    x 256: 57 against 8 us; float32 12 against 6; Zen 5). Not while torch.compile traces (the thread count is not
    part of its graph)."""
    if _onednn_weight_gradient(a, b):
        return conv1x1_weight_gradient(a, b)
    if b.shape[1] < a.shape[1]:
        return rows_product(b, a).t()
    n = a.shape[0]
    if a.device.type == "cpu" and not torch.compiler.is_compiling() and a.is_contiguous() and b.is_contiguous():
        parts = torch.get_num_threads()
        if parts > 1 and n % parts == 0 and n // parts >= 2048:
            blocks = torch.bmm(a.view(parts, n // parts, -1).transpose(1, 2), b.view(parts, n // parts, -1))
            return blocks[0] + blocks[1] if parts == 2 else blocks.sum(0)
    return a.t() @ b


ONEDNN_WEIGHT_GRADIENT_MACS = 2**23
"""From this many multiply-adds (N * P * Q) on, :func:`rows_product` of float32 rows on a non-Intel CPU with
AVX-512 is oneDNN's 1x1-convolution weight gradient (:func:`conv1x1_weight_gradient`), below it MKL's product: on
an AMD EPYC (Zen 5), hot, 8192 rows, 256 @ 256: 2.48 against 5.19 ms; 256 @ 36: 0.37 against 1.06; 16 @ 256: 0.23
against 0.56; 1024 rows, 128 @ 128: 0.15 against 0.18; but 256 rows, 128 @ 128 (4.2 M): 0.082 against 0.049 and
4096 rows, 24 @ 24: 0.061 against 0.041 (oneDNN's fixed cost)."""


def _onednn_weight_gradient(a: Tensor, b: Tensor) -> bool:
    """Whether :func:`rows_product` takes :func:`conv1x1_weight_gradient`: float32 rows on a CPU that is not an
    Intel one (where MKL takes generic code paths, :func:`_mkl_gemv_is_fast`) and has AVX-512
    (:data:`CPU_OUTPUT_CHANNEL_BLOCK` 16), at least :data:`ONEDNN_WEIGHT_GRADIENT_MACS` multiply-adds, oneDNN serving
    (:func:`_onednn`). Measured on Zen 5 only: on Intel CPUs and AVX2-only ones MKL's product stays."""
    return (
        CPU_OUTPUT_CHANNEL_BLOCK == 16
        and not _mkl_gemv_is_fast()
        and a.dtype == b.dtype == torch.float32
        and a.is_contiguous()
        and b.is_contiguous()
        and a.shape[0] * a.shape[1] * b.shape[1] >= ONEDNN_WEIGHT_GRADIENT_MACS
        and _onednn(a, b)
    )


def conv1x1_weight_gradient(a: Tensor, b: Tensor) -> Tensor:
    """``a^T b`` for row-major (N, P) ``a`` and (N, Q) ``b`` -> (P, Q), as oneDNN's weight gradient of a 1x1
    convolution: the rows viewed without a copy as channels-last images (1, P, N, 1) (the output gradient) and
    (1, Q, N, 1) (the input). Autograd off, CPU."""
    n, p, q = a.shape[0], a.shape[1], b.shape[1]
    grad_out, inp = (t.view(1, n, 1, t.shape[1]).permute(0, 3, 1, 2) for t in (a, b))
    weight = a.new_empty((p, q, 1, 1))  # its values are not read for the weight gradient
    mask = [False, True, False]
    args = (None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, mask)
    return torch.ops.aten.convolution_backward(grad_out, inp, weight, *args)[1].view(p, q)


def _unfold_rows(x: Tensor, k: int) -> Tensor:
    """im2col: (B, C, H, W) -> (B*H*W, k*k*C), row n = the k x k patch around position n ("same" zero padding),
    columns in (i, j, c) order. One copy of a view of the zero-padded (B, H, W, C) image with k x k overlapping
    windows (measured 1.7-5x faster than ``F.unfold``, which loops over the batch); while autograd records ``x``
    or torch.compile traces, the k*k shifted windows concatenated instead (the overlapping view's backward is slow,
    and the compiler does not trace ``as_strided``)."""
    b, c, h, w = x.shape
    p = k // 2
    padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, p, p, p, p))
    if torch.compiler.is_compiling() or (torch.is_grad_enabled() and x.requires_grad):
        windows = [padded[:, i : i + h, j : j + w] for i in range(k) for j in range(k)]
        return torch.cat(windows, dim=-1).view(b * h * w, k * k * c)
    s0, s1, s2, s3 = padded.stride()
    view = padded.as_strided((b, h, w, k, k, c), (s0, s1, s2, s1, s2, s3), padded.storage_offset())
    return view.reshape(b * h * w, k * k * c)


def _fold_rows(rows: Tensor, like: Tensor, k: int, bias: Tensor | None = None) -> Tensor:
    """col2im: (B*H*W, k*k*C) with columns in (i, j, c) order (:func:`_unfold_rows`' order) -> (B, C, H, W)
    channels-last, ``out[y, x] = bias + sum_{i, j} rows[(y - i + k//2, x - j + k//2), (i, j)]``: each row's k x k patch
    added at the positions around its own ("same" zero padding). Its adjoint is :func:`_unfold_rows`, which is the
    backward when autograd records (:class:`_Fold`).

    Computed separably (:func:`_fold_separable`): the k patch rows shifted vertically and added, then the k
    columns horizontally, 2(k-1) slice additions on (B, H, W, k*C) and (B, H, W, C) tensors. On an AMD EPYC (Zen 4),
    hot: 202 against 460 us for 32 x 16 x 16 x (9 x 4) -> 4 channels, 100 against 277 for 32 x 8 x 8 x (9 x 8) -> 8,
    174 against 248 for (9 x 2) -> 2 on 16 x 16, than the grouped convolution with one-hot kernels it replaces
    (which itself ran 1.9x faster than ``F.fold`` on an Intel Xeon)."""
    if torch.is_grad_enabled() and (rows.requires_grad or (bias is not None and bias.requires_grad)):
        out = _Fold.apply(rows, like.shape, k)
        return out if bias is None else out + bias.view(1, -1, 1, 1)
    return _fold_separable(rows, like.shape, k, bias)


def _fold_separable(rows: Tensor, shape: Sequence[int], k: int, bias: Tensor | None = None) -> Tensor:
    """:func:`_fold_rows` without autograd: first ``t[y, x, (j, c)] = sum_i rows[(y - i + p, x), (i, j, c)]``, then
    ``out[y, x, c] = bias + sum_j t[y, x - j + p, (j, c)]`` (p = k // 2), each by :func:`_sum_shifted_taps`."""
    b, h, w = shape[0], shape[2], shape[3]
    c = rows.shape[1] // (k * k)
    t = _sum_shifted_taps(rows.view(b, h, w, k, k * c), dim=1)
    return _sum_shifted_taps(t.view(b, h, w, k, c), dim=2, bias=bias).permute(0, 3, 1, 2)


def _sum_shifted_taps(taps: Tensor, dim: int, bias: Tensor | None = None) -> Tensor:
    """``(bias +) sum_i taps[:, :, :, i]`` shifted by ``i - k//2`` along ``dim`` (1 or 2 of the (B, H, W) axes; the
    k taps on axis 3): a copy of the centre tap, then k - 1 in-place additions of the in-image part of the others."""
    k, n = taps.shape[3], taps.shape[dim]
    centre = taps[:, :, :, k // 2]
    out = centre + bias if bias is not None else centre.clone()
    for i in range(k):
        d = i - k // 2
        if d != 0 and abs(d) < n:
            out.narrow(dim, max(d, 0), n - abs(d)).add_(taps[:, :, :, i].narrow(dim, max(-d, 0), n - abs(d)))
    return out


class _Fold(torch.autograd.Function):
    """:func:`_fold_separable` for autograd: the gradient of a fold is the unfold of its output's gradient
    (``d rows[n, (i, j)] = g[n + (i - p, j - p)]``, :func:`_unfold_rows`), one copy instead of the backward of
    2(k-1) slice additions."""

    @staticmethod
    def forward(ctx, rows: Tensor, shape: torch.Size, k: int) -> Tensor:
        ctx.k = k
        return _fold_separable(rows, shape, k)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        return _unfold_rows(grad, ctx.k), None, None


def _fold_weight(weight: Tensor) -> Tensor:
    """The col2im form of a conv weight (C_out, C_in, k, k): ``W[h, (i, j, c)] = w[c, h, k-1-i, k-1-j]``."""
    return weight.flip(2, 3).permute(1, 2, 3, 0).reshape(weight.shape[1], -1)


# ---- the whole step of flow ---------------------------------------------------------------------------------------
@dataclass
class ConditionerWeights:
    """Glow's coupling network ``out o relu o conv2 o relu o conv1`` with every ActNorm and gain folded in:
    ``conv1`` (hidden, C_a, k, k), ``conv2`` (hidden, hidden) (the 1x1 conv as a matrix), ``out``
    (C_pad, hidden, k, k), each with its bias; for the affine coupling ``AFFINE_SHIFT`` is already added to the bias
    of the scale half of ``out`` (:func:`add_affine_shift`). ``out`` may hold zero filters after its C_out real ones
    (C_pad >= C_out, :func:`padded_out_channels`): the conditioner's output then has C_pad channels, of which the
    coupling reads the first C_out. A leading K dimension holds K steps' weights."""

    conv1: Tensor
    conv1_bias: Tensor
    conv2: Tensor
    conv2_bias: Tensor
    out: Tensor
    out_bias: Tensor

    def tensors(self) -> tuple[Tensor, ...]:
        return (self.conv1, self.conv1_bias, self.conv2, self.conv2_bias, self.out, self.out_bias)

    def cast(self, dtype: torch.dtype) -> ConditionerWeights:
        return ConditionerWeights(*(t.to(dtype) for t in self.tensors()))

    def prepacked(self, x_shape: Sequence[int]) -> ConditionerWeights:
        """One step's weights with both k x k convolutions' weights prepacked (:func:`prepack_conv_weight`: opaque
        oneDNN tensors, :class:`Col2imWeight` or :class:`Im2colWeight`, which only :func:`conv_same` reads) and the 1x1
        convolution's (:func:`prepack_linear_weight`, which only :func:`linear_relu` reads) for a conditioner input of
        ``x_shape`` (B, C_a, H, W); for computing with autograd off."""
        b, _, h, w = x_shape
        conv1 = prepack_conv_weight(self.conv1, x_shape)
        conv2 = prepack_linear_weight(self.conv2, b * h * w)
        out = prepack_conv_weight(self.out, (b, self.conv2.shape[0], h, w))
        return ConditionerWeights(conv1, self.conv1_bias, conv2, self.conv2_bias, out, self.out_bias)


@dataclass
class GlowStepWeights:
    """The folded weights of one step of flow (or, with a leading K dimension, of K steps), see :func:`glow_step`:
    ``mix`` (C, C) / ``mix_bias`` (C,) the ActNorm + 1x1 conv affine map (:func:`fold_mixing`, or
    :func:`fold_unmixing` for the inverse direction), ``mix_logdet`` its log|det| per position (0-dim), ``net`` the
    conditioner."""

    mix: Tensor
    mix_bias: Tensor
    mix_logdet: Tensor
    net: ConditionerWeights

    def conditioner_in(self, dtype: torch.dtype | None) -> GlowStepWeights:
        """These weights with the conditioner's cast to ``dtype`` (None: as they are): for K stacked steps one cast
        of each tensor instead of one per step, in the forward and again in the backward pass."""
        if dtype is None or dtype == self.net.conv1.dtype:
            return self
        return GlowStepWeights(self.mix, self.mix_bias, self.mix_logdet, self.net.cast(dtype))

    def stacked(self) -> GlowStepWeights:
        """One step's weights as K = 1 stacked steps (a leading dim of 1, views), the inverse of :meth:`unbind`."""
        net = ConditionerWeights(*(t.unsqueeze(0) for t in self.net.tensors()))
        return GlowStepWeights(self.mix.unsqueeze(0), self.mix_bias.unsqueeze(0), self.mix_logdet.unsqueeze(0), net)

    def unbind(self) -> list[GlowStepWeights]:
        """Split batched weights (leading dim K) into K steps' weights (one autograd node per tensor)."""
        mix, mix_bias, mix_logdet = self.mix.unbind(0), self.mix_bias.unbind(0), self.mix_logdet.unbind(0)
        nets = zip(*(t.unbind(0) for t in self.net.tensors()), strict=True)
        return [
            GlowStepWeights(m, b, ld, ConditionerWeights(*net))
            for m, b, ld, net in zip(mix, mix_bias, mix_logdet, nets, strict=True)
        ]


def add_affine_shift(out_bias: Tensor) -> Tensor:
    """The out conv's bias with ``AFFINE_SHIFT`` added to its scale half (the last ``C_out - C_out // 2`` entries of
    the last dimension): ``(t, z) = conv(a, w, b + (0, 2)) = (t, h + 2)``."""
    half = out_bias.shape[-1] // 2
    offset = torch.full_like(out_bias, AFFINE_SHIFT)
    offset[..., :half] = 0.0
    return out_bias + offset


SIGMOID_2 = 1.0 / (1.0 + math.exp(-AFFINE_SHIFT))
"""``sigmoid(2)``: dividing the scale by it makes a zero conditioner output scale by 1 (up to one rounding)."""


def _rows(x: Tensor) -> Tensor:
    """(B, C, H, W) -> its (B*H*W, C) matrix of channel vectors (a view when ``x`` is channels-last)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _image(rows: Tensor, like: Tensor) -> Tensor:
    """Inverse of :func:`_rows`: (B*H*W, C) -> (B, C, H, W) in channels-last layout, the batch and size of ``like``."""
    b, _, h, w = like.shape
    return rows.view(b, h, w, -1).permute(0, 3, 1, 2)


def _conditioner(
    x_a: Tensor, net: ConditionerWeights, dtype: torch.dtype, inference: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``out(relu(conv2 relu(conv1 x_a)))`` computed in ``dtype``; differentiable when autograd records;
    ``inference``: in a pass with autograd off (:data:`MKL_INFERENCE_PRODUCTS`).
    Returns ``(conv1's im2col columns of x_a in dtype, or None where it is not an im2col convolution
    (:func:`im2col_columns`); hidden 1; hidden 2; output in x_a's dtype)``.
    """
    net_in = _conditioner_input(x_a, dtype)
    if net.conv1.dtype != dtype:  # FlowSteps casts a level's weights once (GlowStepWeights.conditioner_in)
        net = net.cast(dtype)
    cols = im2col_columns(net_in, net.conv1)
    a1 = conv_same(net_in, net.conv1, net.conv1_bias, relu=True, inference=inference, cols=cols)
    a2 = _image(linear_relu(_rows(a1), net.conv2, net.conv2_bias, inference), a1)
    return cols, a1, a2, conv_same(a2, net.out, net.out_bias, out_dtype=x_a.dtype, inference=inference)


def _conditioner_input(x_a: Tensor, dtype: torch.dtype) -> Tensor:
    """``x_a`` in ``dtype`` and channels-last layout, the first convolution's input (a copy: one pass for the cast
    and the layout where autograd is off)."""
    if torch.is_grad_enabled():
        return x_a.to(dtype).contiguous(memory_format=torch.channels_last)
    net_in = torch.empty(x_a.shape, dtype=dtype, device=x_a.device, memory_format=torch.channels_last)
    return net_in.copy_(x_a)


def _couple_(h_b: Tensor, net_out: Tensor, affine: bool, keep_scale: bool) -> tuple[Tensor, Tensor | None]:
    """The coupling of the transformed half, in place on ``h_b`` (autograd off): ``y_b = (h_b + t) * s`` with
    ``s = sigmoid(z) / sigmoid(2)`` (affine, :func:`_coupling_scale`) or ``y_b = h_b + t`` (additive), ``(t, z)`` the
    first C_b and the next C_b channels of ``net_out`` (any further channels, padding, are not read).
    Returns ``(log|det| per example = sum(log s), s)``; ``s`` is None for the additive coupling or unless
    ``keep_scale``."""
    cb = h_b.shape[1]
    if not affine:
        h_b.add_(net_out[:, :cb])
        return h_b.new_zeros(h_b.shape[0]), None
    scale = _coupling_scale(net_out, cb)
    h_b.add_(net_out[:, :cb]).mul_(scale)
    if keep_scale:
        return scale.log().sum((1, 2, 3)), scale
    return scale.log_().sum((1, 2, 3)), None


def _coupling_scale(net_out: Tensor, cb: int) -> Tensor:
    """``s = sigmoid(z) / sigmoid(2)`` for ``z = net_out[:, cb : 2 * cb]``, as a new dense channels-last tensor
    (autograd off).

    ``z`` is a strided half of a channels-last tensor, over which aten's elementwise kernels run element by element:
    copied into a dense tensor first (one fast copy), the sigmoid runs there in place, vectorised. 16 x 6 x 16 x 16:
    8.6 + 5 us against 62 us for the sigmoid of the strided half, and against 10 us for the sigmoid of the whole
    dense ``net_out`` (the evaluation's former way: computing over both halves and reading one). Config S,
    in-process A/B against the sigmoid of the half (training, sampling) or of the whole (evaluation): training
    0.990-0.995x the time, sampling 0.981-0.984x, evaluation 0.982-0.990x, M's evaluation 0.990x (Intel Xeon with
    AMX)."""
    scale = torch.empty_like(net_out[:, cb : 2 * cb], memory_format=torch.channels_last)
    return scale.copy_(net_out[:, cb : 2 * cb]).sigmoid_().div_(SIGMOID_2)


def _uncouple(y_b: Tensor, net_out: Tensor, affine: bool) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`_couple_`: ``h_b = y_b / s - t`` (affine) or ``y_b - t``; returns ``(h_b, -sum(log s))``."""
    cb = y_b.shape[1]
    if not affine:
        return y_b - net_out[:, :cb], y_b.new_zeros(y_b.shape[0])
    scale = torch.sigmoid(net_out[:, cb : 2 * cb]) / SIGMOID_2
    return y_b / scale - net_out[:, :cb], -scale.log().sum((1, 2, 3))


def _uncouple_(y_b: Tensor, net_out: Tensor, affine: bool) -> Tensor:
    """:func:`_uncouple` in place on ``y_b`` (autograd off), which becomes ``h_b``; returns ``-sum(log s)``."""
    cb = y_b.shape[1]
    if not affine:
        y_b.sub_(net_out[:, :cb])
        return y_b.new_zeros(y_b.shape[0])
    scale = _coupling_scale(net_out, cb)
    y_b.div_(scale).sub_(net_out[:, :cb])
    return scale.log_().sum((1, 2, 3)).neg_()


def _step_forward(
    x: Tensor, mix: Tensor, mix_bias: Tensor, net: ConditionerWeights, affine: bool, dtype: torch.dtype
) -> tuple[Tensor, Tensor, tuple]:
    """The forward math of :func:`glow_step` in a training step (autograd off inside :class:`_GlowSteps`); returns
    ``(y, logdet_coupling, saved)``, ``saved`` what the backward pass may read: the first convolution's im2col
    columns (or None), the conditioner's hidden activations and the scale."""
    y = mix_channels(x, mix, mix_bias)  # h = A x + c (a new channels-last tensor), turned into y in place
    ca = x.shape[1] // 2
    cols, a1, a2, net_out = _conditioner(y[:, :ca], net, dtype)
    logdet, scale = _couple_(y[:, ca:], net_out, affine, keep_scale=True)
    return y, logdet, (cols, a1, a2, scale)


def _inference_step(x: Tensor, w: GlowStepWeights, affine: bool, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The forward math of :func:`glow_step` in a pass with autograd off, the conditioner by
    :func:`inference_conditioner`; returns ``(y, logdet_coupling)``."""
    y = mix_channels(x, w.mix, w.mix_bias)
    ca = x.shape[1] // 2
    logdet, _ = _couple_(y[:, ca:], inference_conditioner(y[:, :ca], w.net, dtype), affine, keep_scale=False)
    return y, logdet


INFERENCE_CHUNK_BYTES = 4 * 2**20
"""The conditioner of a pass with autograd off on the CPU runs on batch chunks whose hidden activations are at most
this many bytes each (:func:`inference_conditioner`). On an AMD EPYC (Zen 3, 1 MiB of L2, 32 MiB of shared L3),
in-process A/B against the whole batch, chunk limits of 1 / 2 / 4 / 8 / 16 MiB: config S's evaluation at batch 256
0.83 / 0.72 / 0.70 / 0.71 / 0.77x the time, config M's at batch 32 1.05 / 0.95 / 0.90x, at 64 1.00 / 1.01 / 0.93 /
1.04x; ``glowflow score`` of MNIST's test set with the shipped model (batch 256) 345 against 223 images/s."""


def inference_chunk(x_a: Tensor, hidden: int, dtype: torch.dtype) -> int:
    """How many images of the conditioner input ``x_a`` (B, C_a, H, W) :func:`inference_conditioner` takes at a time:
    as many as keep a hidden activation (H x W rows of ``hidden`` channels in ``dtype`` per image) within
    :data:`INFERENCE_CHUNK_BYTES`, at least one; all B on other devices and while torch.compile traces."""
    if x_a.device.type != "cpu" or torch.compiler.is_compiling():
        return x_a.shape[0]
    per_image = x_a.shape[2] * x_a.shape[3] * hidden * dtype.itemsize
    return max(1, min(x_a.shape[0], INFERENCE_CHUNK_BYTES // per_image))


def inference_conditioner(x_a: Tensor, net: ConditionerWeights, dtype: torch.dtype) -> Tensor:
    """The conditioner's output (:func:`_conditioner`) for a pass with autograd off: the batch in chunks of
    :func:`inference_chunk` images (the images are independent), their outputs concatenated. Each chunk's hidden
    activations are new tensors that the next operation reads at once; held to a few MiB they stay in the CPU's
    caches and in glibc's heap, where a whole large batch's (32 MiB and more for config S at batch 256; glibc maps
    every block above 32 MiB afresh, and under its default settings smaller ones too) is written to memory and
    faulted in again at every step of flow."""
    size = inference_chunk(x_a, net.conv2.shape[0], dtype)
    if size >= x_a.shape[0]:
        return _conditioner(x_a, net, dtype, inference=True)[-1]
    return torch.cat([_conditioner(c, net, dtype, inference=True)[-1] for c in x_a.split(size)])


KEEP_FIRST_HIDDEN_FLOPS_PER_BYTE = 100
"""The fused step stores its first hidden activation for the backward pass where recomputing it would cost at least
this many FLOPs per byte stored, and recomputes it elsewhere (:func:`keeps_first_hidden`)."""


def keeps_first_hidden(conv1: Tensor, a1: Tensor) -> bool:
    """Whether :class:`_GlowSteps` stores ``a1 = relu(conv1(x_a))`` instead of recomputing it in the backward pass:
    when the first conv's ``2 C_in k^2`` FLOPs per element of ``a1`` are at least
    :data:`KEEP_FIRST_HIDDEN_FLOPS_PER_BYTE` per byte of it. The first conv reads only the C/2 channels of ``x_a``, so
    recomputing is cheap per byte of the wide activation it spares for few input channels and dear for many. In
    float32 that keeps S's third level's (24 channels, 108 FLOPs per byte; 1 MiB at batch 16) and recomputes the
    rest (S's levels 1 and 2: 27 and 54 per byte, M's: 9 and 18); in bfloat16, whose bytes are half as many, S's
    levels 2 and 3. Intel Xeon with AMX, in-process A/B against recomputing every level's: S's float32 training step
    0.983-0.988x the time, bf16 0.972x. Keeping level 2's too (the limit at 48) gained another 1.2-1.9 % in float32
    but stored 4 MiB more, which took S's training peak under the default allocator from about 0.56x to 0.6x the
    leanest port's; keeping level 1's as well gained nothing more, nor did keeping M's."""
    return 2 * conv1[0].numel() / a1.element_size() >= KEEP_FIRST_HIDDEN_FLOPS_PER_BYTE


def keeps_columns(cols: Tensor | None) -> Tensor | None:
    """What :class:`_GlowSteps` stores of the first convolution's im2col columns ``cols`` (None where it is not an
    im2col convolution) for the backward pass: the columns where its weight gradient is their product with the
    output gradient's rows (:func:`onednn_im2col_weight_gradient` false: bfloat16, float64, other devices), which then
    also recomputes the first hidden activation from them: the conditioner's input is unfolded once a step instead of
    three times (config M's bf16 training step 0.969-0.976x the time, paired medians of in-process A/Bs 1.025-1.037x
    for unfolding again; AMD EPYC Zen 5). In float32 on the CPU, whose weight gradient oneDNN computes from the input
    itself, storing them only for the recomputation gained nothing measurable (0.99-1.00x) for 9 C_a values a
    position more (config M: 13.5 MiB): None there."""
    if cols is None or onednn_im2col_weight_gradient(cols):
        return None
    return cols


class _GlowSteps(torch.autograd.Function):
    """:func:`glow_steps` (and :func:`glow_step`, K = 1) with autograd on: K fused steps as one node, their weights
    stacked (leading dim K). For each step it stores its input, output, the conditioner's second hidden activation
    (and the first where :func:`keeps_first_hidden`), the first convolution's im2col columns where the backward reads
    them (:func:`keeps_columns`) and the scale (the output of one step is the input of the next,
    stored once), and the stacked weights; the backward runs :func:`_step_backward` from the last step to the first and
    returns the stacked weight gradients. One node instead of K: no per-step ``apply``, no ``unbind`` of the
    weights into K autograd nodes and no stacking of their K gradients by autograd (S's training step 0.967x the
    time, M's 0.986x, S's bf16 0.948x; Intel Xeon with AMX, in-process A/B)."""

    @staticmethod
    def forward(ctx, x, mix, mix_bias, conv1, conv1_bias, conv2, conv2_bias, out, out_bias, affine, dtype):
        stacks = (mix, mix_bias, conv1, conv1_bias, conv2, conv2_bias, out, out_bias)
        saved, logdet = [], None
        for m, mb, *net in zip(*(t.unbind(0) for t in stacks), strict=True):
            net = ConditionerWeights(*net)
            y, ld, (cols, a1, a2, scale) = _step_forward(x, m, mb, net, affine, dtype)
            # the first hidden activation is recomputed in backward (from the conditioner's input) where it is cheap
            a1 = a1 if keeps_first_hidden(net.conv1, a1) else None
            saved += [x, y, a1, keeps_columns(cols), a2, scale]
            x, logdet = y, ld if logdet is None else logdet + ld
        ctx.affine = affine
        ctx.save_for_backward(*saved, mix, conv1, conv1_bias, conv2, out)
        return x, logdet

    @staticmethod
    @once_differentiable  # a hand-derived first derivative: a second one raises instead of being wrong
    def backward(ctx, grad_y, grad_logdet):
        *saved, mix, conv1, conv1_bias, conv2, out = ctx.saved_tensors
        weights = list(zip(*(t.unbind(0) for t in (mix, conv1, conv1_bias, conv2, out)), strict=True))
        n = len(saved) // len(weights)
        grads = []
        for k in reversed(range(len(weights))):
            step = (*saved[k * n : (k + 1) * n], *weights[k])
            needs = (k > 0 or ctx.needs_input_grad[0], True, True)
            grad_y, *step_grads = _step_backward(step, grad_y, grad_logdet, ctx.affine, needs)
            grads.append(step_grads)
        stacked = [torch.stack(g[::-1]) for g in zip(*grads, strict=True)]
        padding = out.shape[1] - stacked[6].shape[1]  # zero filters of padded_out_channels, once for the K steps
        if padding:
            stacked[6] = F.pad(stacked[6], (0, 0, 0, 0, 0, 0, 0, padding))
            stacked[7] = F.pad(stacked[7], (0, padding))
        return grad_y, *stacked, None, None


def _step_backward(saved, grad_y, grad_logdet, affine: bool, needs) -> tuple:
    """The hand-derived backward of one fused step (formulas in :func:`glow_step`) from what it saved (its
    activations, then its weights ``mix, conv1, conv1_bias, conv2, out``): the gradients of its input and of
    ``mix, mix_bias, conv1, conv1_bias, conv2, conv2_bias, out, out_bias``, those of the input / ``mix`` /
    ``mix_bias`` only where ``needs`` says (None otherwise); ``out`` / ``out_bias``'s for the C_out filters the
    coupling reads, without the zero filters of :func:`padded_out_channels` (whose outputs were never read: the
    caller pads the K steps' stacked gradients once)."""
    x, y, a1, cols, a2, scale, mix, conv1, conv1_bias, conv2, out = saved
    dtype = a2.dtype  # the conditioner's
    weights_dtype = conv1.dtype  # the gradients' dtype: bf16 where FlowSteps cast a level's weights once
    ca, cb = x.shape[1] // 2, x.shape[1] - x.shape[1] // 2
    c_out = 2 * cb if affine else cb
    out = out[:c_out]
    if grad_y is None:
        grad_y = torch.zeros_like(y)
    grad_h = torch.empty_like(y, memory_format=torch.channels_last)
    g_net = torch.empty(
        (y.shape[0], c_out, *y.shape[2:]), dtype=y.dtype, device=y.device, memory_format=torch.channels_last
    )
    g_y_b = grad_y[:, ca:]
    if affine:  # dh_b = dt = dy_b * s;  dz = (dy_b * y_b + dlogdet) * (1 - sigmoid(2) * s)
        _into(grad_h[:, ca:], torch.mul, g_y_b, scale)
        g_logdet = y.new_zeros(y.shape[0]) if grad_logdet is None else grad_logdet
        v = torch.addcmul(g_logdet.to(y.dtype).view(-1, 1, 1, 1), g_y_b, y[:, ca:])
        _into(g_net[:, cb:], torch.addcmul, v, v, scale, value=-SIGMOID_2)
    else:  # dh_b = dt = dy_b
        grad_h[:, ca:] = g_y_b
    g_net[:, :cb] = grad_h[:, ca:]
    if dtype != y.dtype:
        conv1, conv1_bias, conv2, out = conv1.to(dtype), conv1_bias.to(dtype), conv2.to(dtype), out.to(dtype)
    net_in = _conditioner_input(y[:, :ca], dtype)  # y_a = h_a, the conditioner's input: copied, not stored
    if a1 is None:
        a1 = conv_same(net_in, conv1, conv1_bias, relu=True, cols=cols)
    # the conditioner backwards: out conv, ReLU, 1x1 conv (a matrix product), ReLU, first conv
    g_a2, g_out, g_out_bias = conv_same_backward(g_net.to(dtype), a2, out)
    if dtype != y.dtype:  # a bf16 conditioner's: summed from the float32 gradient, then in weights_dtype
        g_out_bias = g_net.sum((0, 2, 3))
    g_a2 = _rows(_relu_backward_(g_a2, a2))
    g_conv2, g_conv2_bias = rows_product(g_a2, _rows(a1)), channel_sum(g_a2, (0,))
    g_a1 = _relu_backward_(_image(matmul(g_a2, conv2), a1), a1)
    g_x_a, g_conv1, g_conv1_bias = conv_same_backward(g_a1, net_in, conv1, cols)
    _into(grad_h[:, :ca], torch.add, grad_y[:, :ca], g_x_a)
    # the mixing h = A x + c:  dx = A^T dh,  dA = dh x^T,  dc = sum of dh over positions
    g_rows = _rows(grad_h)
    grad_x = _image(g_rows @ mix, x) if needs[0] else None
    g_mix = rows_product(g_rows, _rows(x)) if needs[1] else None
    g_mix_bias = channel_sum(g_rows, (0,)) if needs[2] else None
    g_params = (t.to(weights_dtype) for t in (g_conv1, g_conv1_bias, g_conv2, g_conv2_bias, g_out, g_out_bias))
    return grad_x, g_mix, g_mix_bias, *g_params


def _relu_backward_(grad: Tensor, out: Tensor) -> Tensor:
    """``grad * (out > 0)`` in place on ``grad``, for ``out = relu(...)`` (a new tensor while torch.compile traces,
    see :func:`_into`).

    bfloat16 runs on the tensors' bits viewed as int16, which order as the values do for ``out >= 0`` (+0 is 0, -0
    and anything negative are <= 0): the same result bit for bit, and aten's int16 kernel ran 6x faster than its
    bf16 one (32 x 256 x 16 x 16, cold: 218 against 1378 us, Intel Xeon with AMX)."""
    if torch.compiler.is_compiling():
        return torch.ops.aten.threshold_backward(grad, out, 0)
    if grad.dtype == out.dtype == torch.bfloat16:
        bits = grad.view(torch.int16)
        torch.ops.aten.threshold_backward.grad_input(bits, out.view(torch.int16), 0, grad_input=bits)
        return grad
    return torch.ops.aten.threshold_backward.grad_input(grad, out, 0, grad_input=grad)


def _into(out: Tensor, op, *args, **kwargs) -> Tensor:
    """``op(*args, **kwargs, out=out)``, the result written straight into ``out``, a view into a larger tensor (no
    concatenation afterwards). While torch.compile traces, computed and copied in instead: TorchDynamo does not
    trace ``out=`` into a non-contiguous view and would split the graph at every step of flow."""
    if torch.compiler.is_compiling():
        return out.copy_(op(*args, **kwargs))
    return op(*args, **kwargs, out=out)


def glow_step(x: Tensor, w: GlowStepWeights, affine: bool, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """One step of flow, normalizing direction: ActNorm -> LU 1x1 conv -> channel-split coupling (Glow):

        ``h = A x + c``                                 (ActNorm and 1x1 conv: :func:`fold_mixing`)
        ``(h_a, h_b) = (h[:, :C//2], h[:, C//2:])``,   ``(t, z) = NN(h_a)``
        affine:    ``y = (h_a, (h_b + t) * s)``,  ``s = sigmoid(z) / sigmoid(2)``,  log|det| = S mix_logdet + sum log s
        additive:  ``y = (h_a, h_b + t)``,                                       log|det| = S mix_logdet

    with ``NN = out o relu o conv2 o relu o conv1`` (:class:`ConditionerWeights`; ``z`` already includes Glow's
    ``+ 2``) and S = H * W positions. ``NN`` runs in ``dtype`` (``torch.bfloat16`` for bf16 conditioners; None:
    ``x``'s dtype), everything else in ``x``'s dtype. Shapes: ``x`` (B, C, H, W) -> ``y`` (B, C, H, W)
    channels-last, log|det| (B,).

    Computed as :func:`glow_steps` of one step: with autograd on, one :class:`_GlowSteps` node with the
    hand-derived backward ``dh_b = dt = dy_b * s``,  ``dz = (dy_b * y_b + dlogdet) * (1 - sigmoid(z))``,
    ``dh_a = dy_a + NN^T(dt, dz)``, ``dx = A^T dh``; it stores ``x``, ``y``, the conditioner's second hidden
    activation and ``s``, and the first hidden activation where recomputing it in the backward pass would cost more
    per byte than :func:`keeps_first_hidden` allows; the conditioner's input is ``y_a`` again (copied in the
    backward pass: S's training step stored 1.3 MiB less). Without autograd the same forward stores nothing.
    """
    return glow_steps(x, w.stacked(), affine, dtype)


def glow_steps(x: Tensor, w: GlowStepWeights, affine: bool, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """K steps of flow one after the other, ``w`` the K steps' weights stacked (leading dim K, from
    :func:`~glowflow.layers.step.glow_step_weights`): the same map, log-det and gradients as K calls of
    :func:`glow_step`. With autograd on, one :class:`_GlowSteps` node for the K steps (S's training step 0.97x the
    time, see :class:`_GlowSteps`); without, :func:`_inference_step` K times. Shapes as in :func:`glow_step`."""
    if torch.is_grad_enabled():
        y, logdet = _GlowSteps.apply(x, w.mix, w.mix_bias, *w.net.tensors(), affine, dtype or x.dtype)
        return y, logdet + x.shape[2] * x.shape[3] * w.mix_logdet.sum()
    return run_steps(x, w.unbind(), w.mix_logdet, affine, dtype)


def run_steps(
    x: Tensor, steps: Sequence[GlowStepWeights], mix_logdet: Tensor, affine: bool, dtype: torch.dtype | None = None
) -> tuple[Tensor, Tensor]:
    """:func:`glow_steps` with autograd off, given the K steps' weights one by one (``steps``, e.g. with prepacked
    convolutions: :meth:`ConditionerWeights.prepacked`) and ``mix_logdet`` (K,) their mixing log-dets per
    position; each conditioner on batch chunks (:func:`inference_conditioner`). Shapes as in :func:`glow_step`."""
    dtype = dtype or x.dtype
    total_mix_logdet = x.shape[2] * x.shape[3] * mix_logdet.sum()
    logdet = None
    for step in steps:
        x, ld = _inference_step(x, step, affine, dtype)
        logdet = ld if logdet is None else logdet + ld
    return x, logdet + total_mix_logdet


def glow_step_inverse(
    y: Tensor, w: GlowStepWeights, affine: bool, dtype: torch.dtype | None = None, overwrite: bool = False
) -> tuple[Tensor, Tensor]:
    """Generative direction of :func:`glow_step`, with ``w`` from :func:`fold_unmixing` (``A' = A^-1``):

        ``(t, z) = NN(y_a)``;  ``h = (y_a, y_b / s - t)`` (affine) or ``(y_a, y_b - t)``;  ``x = A' h + c'``;
        log|det| = -(S mix_logdet + sum log s).

    Differentiable by ordinary autograd; with autograd off the conditioner runs on batch chunks
    (:func:`inference_conditioner`). With ``overwrite`` and autograd off, ``h`` is computed in place in ``y``
    (which the caller must own: :class:`~glowflow.layers.step.FlowSteps` passes its intermediate results) instead
    of concatenating ``y_a`` with a new ``h_b``: S's sampling 0.98x, M's 0.99x the time. Shapes as in
    :func:`glow_step`.
    """
    dtype = dtype or y.dtype
    ca = y.shape[1] // 2
    y_a = y[:, :ca]
    net_out = (
        _conditioner(y_a, w.net, dtype)[-1] if torch.is_grad_enabled() else inference_conditioner(y_a, w.net, dtype)
    )
    if overwrite and not torch.is_grad_enabled():
        logdet = _uncouple_(y[:, ca:], net_out, affine)
        h = y
    else:
        h_b, logdet = _uncouple(y[:, ca:], net_out, affine)
        h = torch.cat([y_a, h_b], dim=1)
    return mix_channels(h, w.mix, w.mix_bias), logdet - y.shape[2] * y.shape[3] * w.mix_logdet


# ---- the folded weights of K steps, with a hand-derived backward ---------------------------------------------------
class StepParameters(NamedTuple):
    """The parameters and buffers of one fused step of flow that its folding reads, or, field by field, those of K
    steps stacked (a leading K dimension). Shapes for one step with C channels, C_a = C // 2 conditioner inputs,
    H hidden channels, k x k kernels and C_out conditioner outputs: ActNorm ``an_bias`` / ``an_log_scale`` (C,); LU
    ``perm`` / ``lower`` / ``upper`` (C, C), ``sign_s`` / ``log_s`` (C,); conditioner ``conv1`` (H, C_a, k, k)
    with its ActNorm ``conv1_norm_bias`` / ``conv1_norm_log_scale`` (H,), ``conv2`` (H, H, 1, 1) with
    ``conv2_norm_bias`` / ``conv2_norm_log_scale`` (H,), ``out`` (C_out, H, k, k) with ``out_bias`` (C_out,) and
    ``out_logs`` (C_out, 1, 1)."""

    an_bias: Tensor
    an_log_scale: Tensor
    perm: Tensor
    lower: Tensor
    upper: Tensor
    sign_s: Tensor
    log_s: Tensor
    conv1: Tensor
    conv1_norm_bias: Tensor
    conv1_norm_log_scale: Tensor
    conv2: Tensor
    conv2_norm_bias: Tensor
    conv2_norm_log_scale: Tensor
    out: Tensor
    out_bias: Tensor
    out_logs: Tensor


def fold_steps(
    steps: StepParameters, read: Callable[[Sequence[Tensor]], StepParameters], inverse: bool, affine: bool
) -> GlowStepWeights:
    """The folded weights (:class:`GlowStepWeights`, leading dim K) of K fused steps whose tensors ``steps`` holds
    field by field (K tensors each): the LU weight ``W = P L U'`` (:func:`lu_weight`, or ``W^-1``), the ActNorm +
    1x1 conv map (:func:`fold_mixing` / :func:`fold_unmixing`) and its log-det per position ``sum(s) + sum(log_s)``,
    the conditioner's ActNorms (:func:`fold_actnorm`) and gain (:func:`fold_gain`), Glow's ``+ 2``
    (:func:`add_affine_shift`) and the out conv's zero filters (:func:`padded_out_channels`), its conv weights
    channels-last (:func:`channels_last_weights`): the same values as those functions composed.

    ``read`` turns the flat K * 16 tensors (field-major) into their (K, ...) stacks (a packed level's without
    copying). With autograd recording, one :class:`_FoldedSteps` node with a hand-derived backward for the forward
    direction (the inverse direction's weights are differentiated by :func:`lu_inverse_weight`'s composition:
    the caller's)."""
    flat = [t for kind in steps for t in kind]
    if torch.is_grad_enabled() and any(t.requires_grad for t in flat):
        if inverse:
            raise ValueError("fold_steps differentiates the forward direction only")
        mix, mix_bias, mix_logdet, *net = _FoldedSteps.apply(read, affine, len(steps.log_s), *flat)
        return GlowStepWeights(mix, mix_bias, mix_logdet, ConditionerWeights(*net))
    return _fold_forward(read(flat), inverse, affine)[0]


def _fold_forward(p: StepParameters, inverse: bool, affine: bool) -> tuple[GlowStepWeights, tuple]:
    """:func:`fold_steps`' values from the stacked tensors ``p``, and what :func:`_fold_backward` reads again
    (``L``, ``U'``, ``W``, ``e^s`` of the step's ActNorm, of the conditioner's two ActNorms and its gain; the first
    four None for the inverse direction)."""
    lu = (p.perm, p.lower, p.upper, p.sign_s, p.log_s)
    if inverse:
        mix, mix_bias = fold_unmixing(lu_inverse_weight(*lu), p.an_bias, p.an_log_scale)
        lo = up = weight = scale = None
    else:
        lo, up = _lu_factors(*lu[1:])
        weight, scale = p.perm @ (lo @ up), p.an_log_scale.exp()
        mix, mix_bias = weight * scale.unsqueeze(-2), (weight @ (p.an_bias * scale).unsqueeze(-1)).squeeze(-1)
    mix_logdet = p.an_log_scale.sum(-1) + p.log_s.sum(-1)
    e1, e2 = p.conv1_norm_log_scale.exp(), p.conv2_norm_log_scale.exp()
    gain = (3.0 * p.out_logs).exp().reshape(p.out_bias.shape)
    c_out = p.out_bias.shape[-1]
    rows = padded_out_channels(c_out, p.out_bias.device)
    out_bias = p.out_bias * gain
    out_bias = F.pad(add_affine_shift(out_bias) if affine else out_bias, (0, rows - c_out))
    net = ConditionerWeights(
        _scaled_channels_last(p.conv1, e1), p.conv1_norm_bias * e1,
        p.conv2.flatten(2) * e2.unsqueeze(-1), p.conv2_norm_bias * e2,
        _scaled_channels_last(p.out, gain, rows), out_bias,
    )  # fmt: skip
    return GlowStepWeights(mix, mix_bias, mix_logdet, net), (lo, up, weight, scale, e1, e2, gain)


def _scaled_channels_last(weight: Tensor, scale: Tensor, rows: int | None = None) -> Tensor:
    """``weight * scale`` per output channel for K conv weights (K, C_out, C_in, kh, kw), ``scale`` (K, C_out),
    written straight into :func:`channels_last_weights`' layout (with ``rows - C_out`` zero filters appended)."""
    k, c_out, c_in, kh, kw = weight.shape
    buffer = weight.new_empty(k, rows or c_out, kh, kw, c_in).permute(0, 1, 4, 2, 3)
    if rows and rows > c_out:
        buffer[:, c_out:].zero_()
    torch.mul(weight, scale.view(k, c_out, 1, 1, 1), out=buffer[:, :c_out])
    return buffer


class _FoldedSteps(torch.autograd.Function):
    """:func:`fold_steps` with autograd on, forward direction: one node for the ~100 operations of a level's
    folding, its backward derived by hand (:func:`_fold_backward`). Inputs: ``read``, ``affine``, K, then the K * 16
    tensors field-major; it stores references to them (re-read as stacks in the backward pass) and the LU factors,
    ``W`` and the scales, and hands each tensor its slice of its field's gradient."""

    @staticmethod
    def forward(ctx, read, affine, k, *tensors):
        weights, saved = _fold_forward(read(tensors), inverse=False, affine=affine)
        ctx.read, ctx.k = read, k
        ctx.save_for_backward(*tensors, *saved)
        return weights.mix, weights.mix_bias, weights.mix_logdet, *weights.net.tensors()

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        n = len(StepParameters._fields) * ctx.k
        stored = ctx.saved_tensors  # unpacked once (saved-tensor hooks, checkpointing)
        tensors, saved = stored[:n], stored[n:]
        needs = ctx.needs_input_grad[3:]
        wanted = [any(needs[i * ctx.k : (i + 1) * ctx.k]) for i in range(len(StepParameters._fields))]
        fields = _fold_backward(ctx.read(tensors), saved, grads, StepParameters(*wanted))
        out: list[Tensor | None] = [None, None, None]
        for i, g in enumerate(fields):
            slices = g.unbind(0) if g is not None else (None,) * ctx.k
            out += [s if need else None for s, need in zip(slices, needs[i * ctx.k : (i + 1) * ctx.k], strict=True)]
        return tuple(out)


def _fold_backward(
    p: StepParameters, saved: Sequence[Tensor], grads: Sequence[Tensor], wanted: StepParameters
) -> StepParameters:
    """Gradients of :func:`_fold_forward`'s forward direction, field by field (None where not ``wanted``), from the
    gradients of ``(A, c, mix_logdet, conv1, conv1_bias, conv2, conv2_bias, out, out_bias)``:

    * a map ``w e`` with bias ``b e`` (``e = e^s`` per output channel; ActNorm, gain with ``s = 3 logs``):
      ``dw = g_w e``,  ``db = g_b e``,  ``ds = e (sum(g_w w) + g_b b)`` (sums over each output channel's weights);
    * ``A = W diag(e)``, ``c = W (b e)``: ``dW = g_A diag(e) + g_c (b e)^T``,  ``db = e W^T g_c``,
      ``ds = e (diag(W^T g_A) + b W^T g_c) + g_logdet``;
    * ``W = P L U'``: ``dlower = tril(P^T dW U'^T, -1)``,  ``dU' = L^T P^T dW``,  ``dupper = triu(dU', 1)``,
      ``dlog_s = diag(dU') sign_s e^log_s + g_logdet``.
    """
    lo, up, weight, scale, e1, e2, gain = saved
    g_mix, g_mix_bias, g_logdet, g_conv1, g_conv1_bias, g_conv2, g_conv2_bias, g_out, g_out_bias = grads
    c_out = p.out_bias.shape[-1]
    conv1 = _scaled_map_backward(p.conv1, p.conv1_norm_bias, e1, g_conv1, g_conv1_bias)
    conv2 = _scaled_map_backward(p.conv2, p.conv2_norm_bias, e2, g_conv2.view(p.conv2.shape), g_conv2_bias)
    out = _scaled_map_backward(p.out, p.out_bias, gain, g_out[:, :c_out], g_out_bias[:, :c_out])
    g_logdet = g_logdet.unsqueeze(-1)
    wt_gc = (weight.transpose(-1, -2) @ g_mix_bias.unsqueeze(-1)).squeeze(-1)
    g_an_log_scale = scale * ((g_mix * weight).sum(-2) + wt_gc * p.an_bias) + g_logdet
    g_weight = torch.baddbmm(g_mix * scale.unsqueeze(-2), g_mix_bias.unsqueeze(-1), (p.an_bias * scale).unsqueeze(-2))
    g_lu = p.perm.transpose(-1, -2) @ g_weight
    g_up = lo.transpose(-1, -2) @ g_lu
    g_log_s = g_up.diagonal(dim1=-2, dim2=-1) * (p.sign_s * p.log_s.exp()) + g_logdet
    fields = StepParameters(
        wt_gc * scale, g_an_log_scale, None, torch.tril(g_lu @ up.transpose(-1, -2), -1), torch.triu(g_up, 1),
        None, g_log_s, conv1[0], conv1[2], conv1[1], conv2[0], conv2[2], conv2[1],
        out[0], out[2], 3.0 * out[1].view(p.out_logs.shape),
    )  # fmt: skip
    return StepParameters(*(g if want else None for g, want in zip(fields, wanted, strict=True)))


def _scaled_map_backward(
    weight: Tensor, bias: Tensor, scale: Tensor, g_weight: Tensor, g_bias: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """For K maps ``weight * scale`` (per output channel, ``weight`` (K, C_out, ...), ``scale`` (K, C_out)) with
    biases ``bias * scale``: ``(dweight, d log scale, dbias)`` from the gradients of the scaled weight and bias;
    ``dweight`` in ``weight``'s layout."""
    view = scale.view(*scale.shape, *(1,) * (weight.dim() - 2))
    g_w = torch.mul(g_weight, view, out=torch.empty_like(weight, memory_format=torch.contiguous_format))
    g_log_scale = (g_w * weight).sum(tuple(range(2, weight.dim()))) + g_bias * bias * scale
    return g_w, g_log_scale, g_bias * scale
