"""Deployment export: a model's methods as ``torch.export`` programs (``.pt2``) and ONNX graphs (``.onnx``).

Every exported method is a graph of tensors in and tensors out, with a dynamic batch dimension ``B``. A
class-conditional model takes one more input, ``y`` (B,) int64 labels in [0, num_classes), after the others.

- ``log_prob``: ``x`` (B, *data_shape) continuous data -> ``log_prob`` (B,), the log-density in nats;
- ``bits_per_dim`` (image :class:`~glowflow.Glow` only): ``k`` (B, C, H, W) int64 levels in [0, num_bins) and
  ``noise`` (B, C, H, W), the dequantization draw -> ``bits_per_dim`` (B,);
- ``encode``: ``x`` -> ``z_0`` ... ``z_{L-1}`` (the shapes of ``model.latent_shapes``, finest first) and
  ``logdet`` (B,);
- ``decode``: ``z_0`` ... ``z_{L-1}`` -> ``x``;
- ``sample``: ``noise_0`` ... ``noise_{L-1}`` ~ N(0, I) and ``temperature`` (a 0-d float) ->
  ``x = decode(temperature * noise)``.

Random draws are inputs, so that a deployed score or sample is reproducible and equal to eager PyTorch's for
the same draw: ``bits_per_dim``'s ``noise`` is ``u`` in [0, 1) for uniform dequantization (``bits_per_dim(k)``
in eager use draws ``u = torch.rand_like(k)``) and ``eps ~ N(0, I)`` for variational dequantization; ``sample``'s
noise is what ``model.sample`` draws with ``torch.randn``.

What the graph runs is a copy of the model in eval mode whose invertible matrices (the 1x1 convolutions and
their dense twins) are frozen to the weight, inverse and log-determinant that eager PyTorch computes: LU
factorisations and triangular solves have no ONNX operators, and eager use caches them keyed by parameter
values, which a graph cannot branch on. Checks on input *values* (finite, integer levels in range, labels in
range) are skipped inside the graph, since a graph cannot raise; the graph's signature fixes shapes and dtypes.
A deployment checks its input values itself. Every check still runs in eager use.

ONNX specifics: ``log_sigmoid`` (affine couplings, variational dequantization) gets a stable translation, as
the exporter's own ``Log(Sigmoid(x))`` loses all precision below x = -15 in ONNX Runtime; the bin edges of
dequantization are a lookup table, as ONNX has no ``nextafter``; bfloat16 models are refused, as ONNX has no
bfloat16 convolutions.

Not exported: noise drawn inside the graph (``model.sample(n)`` itself). A graph's random operators draw from
the runtime's generator, so its outputs could be neither reproduced nor compared with eager PyTorch (and
``torch.export`` of ``model.sample``'s ``torch.randn`` fails with a dynamic batch size). Nor several
dequantization draws per example or the importance-weighted estimate: a service averages single-draw
``bits_per_dim`` outputs itself.

Files: ``METHOD.onnx`` (or ``METHOD.pt2``) per method, and ``onnx.json`` (``pt2.json``) describing each method's
inputs and outputs, the model's class and constructor arguments, and the versions that wrote them.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

import glowflow
from glowflow.errors import NotInitializedError
from glowflow.io import atomic_write_bytes
from glowflow.layers.actnorm import ActNorm
from glowflow.layers.conv1x1 import InvertibleMatrix
from glowflow.layers.dequantization import VariationalDequantization, bits_per_dim, check_discrete
from glowflow.models import FlowModel, Glow

if TYPE_CHECKING:
    import onnx_ir  # the onnx extra

FORMAT = "glowflow-export"
VERSION = 1
METHODS = ("log_prob", "bits_per_dim", "encode", "decode", "sample")
BATCH = "batch"  # the name of the dynamic dimension in shapes and in the JSON description


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of an exported method: ``shape`` has :data:`BATCH` where the batch size goes; ``kind``
    says which values it takes (``"data"``, ``"levels"``, ``"uniform"``, ``"normal"``, ``"labels"``,
    ``"temperature"``, or ``"output"``)."""

    name: str
    shape: tuple[int | str, ...]
    dtype: torch.dtype
    kind: str
    description: str

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": str(self.dtype).removeprefix("torch."),
            "description": self.description,
        }


def _batch(shape: Sequence[int]) -> tuple[int | str, ...]:
    return (BATCH, *shape)


def _labels(model: FlowModel) -> list[TensorSpec]:
    if model.num_classes is None:
        return []
    return [TensorSpec("y", (BATCH,), torch.int64, "labels", f"class labels in [0, {model.num_classes})")]


def _data_spec(model: FlowModel, name: str, kind: str) -> TensorSpec:
    what = "continuous data in [-0.5, 0.5)" if isinstance(model, Glow) else "continuous data"
    return TensorSpec(name, _batch(model.data_shape), _dtype(model), kind, what)


def _latent_specs(model: FlowModel, prefix: str, kind: str, what: str) -> list[TensorSpec]:
    n = len(model.latent_shapes)
    return [
        TensorSpec(f"{prefix}_{i}", _batch(shape), _dtype(model), kind, f"{what} {i} of {n} (finest first)")
        for i, shape in enumerate(model.latent_shapes)
    ]


def _logdet_spec(model: FlowModel, name: str, description: str) -> TensorSpec:
    return TensorSpec(name, (BATCH,), torch.promote_types(_dtype(model), torch.float32), "output", description)


# ---- the methods: signature and computation ----------------------------------------------------------------
def _log_prob_signature(model: FlowModel) -> tuple[list[TensorSpec], list[TensorSpec]]:
    inputs = [_data_spec(model, "x", "data"), *_labels(model)]
    return inputs, [_logdet_spec(model, "log_prob", "log-density of x, nats")]


def _log_prob(model: FlowModel, inputs: list[Tensor], y: Tensor | None) -> Tensor:
    return model.log_prob(inputs[0], y)


def _bits_per_dim_signature(model: FlowModel) -> tuple[list[TensorSpec], list[TensorSpec]]:
    if isinstance(model.dequantizer, VariationalDequantization):
        noise = TensorSpec("noise", _batch(model.data_shape), _dtype(model), "normal", "eps ~ N(0, I)")
    else:
        noise = TensorSpec("noise", _batch(model.data_shape), _dtype(model), "uniform", "u ~ U[0, 1)")
    levels = TensorSpec(
        "k", _batch(model.data_shape), torch.int64, "levels", f"discrete levels in [0, {model.num_bins})"
    )
    outputs = [_logdet_spec(model, "bits_per_dim", "bits per dimension of k, one dequantization draw")]
    return [levels, noise, *_labels(model)], outputs


def _bits_per_dim(model: FlowModel, inputs: list[Tensor], y: Tensor | None) -> Tensor:
    # Glow.discrete_log_prob with the dequantization draw given instead of drawn.
    k, noise = inputs
    k = check_discrete(k, model.num_bins).to(_dtype(model))
    x, logdet = model.dequantizer.dequantize(k, noise)
    return bits_per_dim(model.log_prob(x, y) + logdet, model.num_dims)


def _encode_signature(model: FlowModel) -> tuple[list[TensorSpec], list[TensorSpec]]:
    outputs = [*_latent_specs(model, "z", "output", "latent"), _logdet_spec(model, "logdet", "log|det dz/dx|")]
    return [_data_spec(model, "x", "data"), *_labels(model)], outputs


def _encode(model: FlowModel, inputs: list[Tensor], y: Tensor | None) -> tuple[Tensor, ...]:
    zs, logdet = model.encode(inputs[0], y)
    return (*zs, logdet)


def _decode_signature(model: FlowModel) -> tuple[list[TensorSpec], list[TensorSpec]]:
    return [*_latent_specs(model, "z", "normal", "latent"), *_labels(model)], [_data_spec(model, "x", "output")]


def _decode(model: FlowModel, inputs: list[Tensor], y: Tensor | None) -> Tensor:
    return model.decode(inputs, y)


def _sample_signature(model: FlowModel) -> tuple[list[TensorSpec], list[TensorSpec]]:
    temperature = TensorSpec("temperature", (), _dtype(model), "temperature", "scale of the latents, >= 0")
    inputs = [*_latent_specs(model, "noise", "normal", "standard normal noise of latent"), temperature, *_labels(model)]
    return inputs, [_data_spec(model, "x", "output")]


def _sample(model: FlowModel, inputs: list[Tensor], y: Tensor | None) -> Tensor:
    *noise, temperature = inputs
    return model.decode([temperature * n for n in noise], y)


Signature = Callable[[FlowModel], tuple[list[TensorSpec], list[TensorSpec]]]
Compute = Callable[[FlowModel, list[Tensor], "Tensor | None"], "Tensor | tuple[Tensor, ...]"]
_METHODS: dict[str, tuple[Signature, Compute]] = {
    "log_prob": (_log_prob_signature, _log_prob),
    "bits_per_dim": (_bits_per_dim_signature, _bits_per_dim),
    "encode": (_encode_signature, _encode),
    "decode": (_decode_signature, _decode),
    "sample": (_sample_signature, _sample),
}


def available_methods(model: FlowModel) -> tuple[str, ...]:
    """The methods of :data:`METHODS` that ``model`` has: all of them for ``Glow``, all but ``bits_per_dim``
    (which scores discrete images) for ``TabularGlow``."""
    return tuple(m for m in METHODS if m != "bits_per_dim" or isinstance(model, Glow))


class MethodModule(nn.Module):
    """One method of a (frozen) model as a module whose ``forward`` takes and returns tensors only, in the order
    of :func:`signature`: what the exporters trace."""

    def __init__(self, model: FlowModel, method: str) -> None:
        super().__init__()
        self.model = model
        self.method = method
        self._compute = _METHODS[method][1]

    def forward(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        if self.model.num_classes is None:
            return self._compute(self.model, list(inputs), None)
        return self._compute(self.model, list(inputs[:-1]), inputs[-1])


def signature(model: FlowModel, method: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """``(inputs, outputs)`` of an exported method of ``model``."""
    _check_method(model, method)
    return _METHODS[method][0](model)


# ---- preparing a model for tracing --------------------------------------------------------------------------
class FrozenMatrix(InvertibleMatrix):
    """An invertible matrix fixed to the weight ``W``, inverse ``W^-1`` and ``log|det W|`` of another, as buffers
    (what an exported graph holds instead of the LU factors it cannot solve with)."""

    def __init__(self, matrix: InvertibleMatrix) -> None:
        super().__init__()
        with torch.no_grad():
            self.register_buffer("w", matrix.weight().detach().clone())
            self.register_buffer("w_inv", matrix.inverse_weight().detach().clone())
            self.register_buffer("log_det", matrix.log_abs_det().detach().clone())

    def weight(self) -> Tensor:
        return self.w

    def inverse_weight(self) -> Tensor:
        return self.w_inv

    def log_abs_det(self) -> Tensor:
        return self.log_det


def frozen_copy(model: FlowModel) -> FlowModel:
    """A copy of ``model`` to trace: eval mode, no gradients, every :class:`InvertibleMatrix` replaced by a
    :class:`FrozenMatrix` of the same values (``SingularWeightError`` for a singular dense matrix), every
    parameter and buffer in storage of its own (a level's steps keep theirs packed, ``layers/packing.py``, which the
    traced programs would store as shared storage)."""
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    holders = [(m, name) for m in frozen.modules() for name, c in m.named_children() if isinstance(c, InvertibleMatrix)]
    for holder, name in holders:
        setattr(holder, name, FrozenMatrix(getattr(holder, name)))
    for tensor in (*frozen.parameters(), *frozen.buffers()):
        tensor.data = tensor.detach().clone()
    return frozen


def _dtype(model: FlowModel) -> torch.dtype:
    return next(p for p in model.parameters() if p.is_floating_point()).dtype


def _device(model: FlowModel) -> torch.device:
    return next(p for p in model.parameters() if p.is_floating_point()).device


def _check_method(model: FlowModel, method: str) -> None:
    if not isinstance(model, FlowModel):
        raise ValueError(f"expected a glowflow model (Glow or TabularGlow), got {type(model).__name__}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if method not in available_methods(model):
        raise ValueError(f"{type(model).__name__} has no {method} to export (it scores discrete images)")


def _check_exportable(model: FlowModel, method: str) -> None:
    """The method exists, and the ActNorm layers it runs have their initial statistics: a graph cannot take them
    from its first batch as eager use does."""
    _check_method(model, method)
    if not model.is_initialized:
        raise NotInitializedError(
            f"{type(model).__name__} has not been initialised: run it forward on a batch of data or load trained "
            "weights before exporting it"
        )
    if method == "bits_per_dim" and not all(
        m.is_initialized() for m in model.dequantizer.modules() if isinstance(m, ActNorm)
    ):
        raise NotInitializedError(
            "the variational dequantization has not been initialised: run bits_per_dim on a batch of data or load "
            "trained weights before exporting bits_per_dim"
        )


def _example(spec: TensorSpec, batch: int, model: FlowModel, generator: torch.Generator) -> Tensor:
    shape = tuple(batch if s == BATCH else s for s in spec.shape)
    device = _device(model)

    def draw(fn: Callable[..., Tensor], *args) -> Tensor:
        return fn(*args, shape, generator=generator, dtype=spec.dtype).to(device)

    if spec.kind == "levels":
        return draw(torch.randint, 0, model.num_bins)
    if spec.kind == "labels":
        return draw(torch.randint, 0, model.num_classes)
    if spec.kind == "temperature":
        return torch.tensor(0.7, dtype=spec.dtype, device=device)
    if spec.kind == "uniform":
        return draw(torch.rand)
    if spec.kind == "data" and isinstance(model, Glow):
        return draw(torch.rand) - 0.5
    return draw(torch.randn)


def example_inputs(model: FlowModel, method: str, batch: int = 2, seed: int = 0) -> tuple[Tensor, ...]:
    """Valid inputs of an exported method for a batch of ``batch`` examples, drawn with ``seed``: what the export
    traces with, and what a test of an exported graph can feed it."""
    inputs, _ = signature(model, method)
    generator = torch.Generator().manual_seed(seed)
    return tuple(_example(spec, batch, model, generator) for spec in inputs)


# ---- exporting ---------------------------------------------------------------------------------------------
def export_program(model: FlowModel, method: str, dynamic_batch: bool = True) -> torch.export.ExportedProgram:
    """``torch.export`` one method of ``model`` (see the module docstring for its inputs and outputs); the batch
    dimension is dynamic (any size >= 1) unless ``dynamic_batch=False``, which fixes it at 2."""
    _check_exportable(model, method)
    return _trace(frozen_copy(model), method, dynamic_batch)


def _trace(frozen: FlowModel, method: str, dynamic_batch: bool) -> torch.export.ExportedProgram:
    inputs, _ = signature(frozen, method)
    args = example_inputs(frozen, method)
    batch = torch.export.Dim(BATCH, min=1)
    shapes = tuple({0: batch} if dynamic_batch and spec.shape[:1] == (BATCH,) else None for spec in inputs)
    with torch.no_grad():
        return torch.export.export(MethodModule(frozen, method), args, dynamic_shapes={"inputs": shapes}, strict=False)


def export_pt2(
    model: FlowModel,
    directory: str | os.PathLike,
    methods: Sequence[str] | None = None,
    dynamic_batch: bool = True,
    report: Callable[[str], None] | None = None,
) -> dict:
    """Write ``METHOD.pt2`` (``torch.export.save``; load with ``torch.export.load``) for each of ``methods`` (all
    of :func:`available_methods` by default) and ``pt2.json`` describing them. Returns that description.

    ``report``: called with a line of text as each file is begun and when it is written, with its time (a graph
    of a large model takes minutes)."""
    return _export(model, directory, methods, dynamic_batch, "pt2", _write_pt2, report)


def export_onnx(
    model: FlowModel,
    directory: str | os.PathLike,
    methods: Sequence[str] | None = None,
    dynamic_batch: bool = True,
    opset: int | None = None,
    report: Callable[[str], None] | None = None,
) -> dict:
    """Write ``METHOD.onnx`` (``torch.onnx.export(..., dynamo=True)`` of the ``torch.export`` program; ``opset``:
    the ONNX opset, the exporter's default if None) for each of ``methods`` (all of :func:`available_methods` by
    default) and ``onnx.json`` describing them. Returns that description. Needs the ``onnx`` extra. ``report``: as
    for :func:`export_pt2`.

    Each graph is simplified by :func:`_fold_graph` (constant folding and clean-up passes), not by the whole of
    onnxscript's optimizer that ``torch.onnx.export`` runs by default, whose pattern rewrites take time that grows
    faster than the graph."""
    if isinstance(model, FlowModel) and model.precision == "bf16":
        raise ValueError(
            "ONNX has no bfloat16 convolutions: set model.precision = 'fp32' before exporting to ONNX (the weights "
            "are float32 either way; only the conditioners' compute precision changes)"
        )
    if importlib.util.find_spec("onnxscript") is None or importlib.util.find_spec("onnx") is None:
        raise ImportError("ONNX export needs the onnx and onnxscript packages: pip install 'glowflow[onnx]'")

    translations = _onnx_translations()

    def write(program: torch.export.ExportedProgram, method: str, path: Path) -> dict:
        inputs, outputs = signature(model, method)
        onnx_program = torch.onnx.export(
            program,
            (),
            dynamo=True,
            input_names=[s.name for s in inputs],
            output_names=[s.name for s in outputs],
            opset_version=opset,
            custom_translation_table=translations,
            optimize=False,
            verbose=False,
        )
        _fold_graph(onnx_program.model)
        proto = onnx_program.model_proto
        atomic_write_bytes(path, lambda f: f.write(proto.SerializeToString()))
        return {"opset": next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))}

    return _export(model, directory, methods, dynamic_batch, "onnx", write, report)


def _fold_graph(model: onnx_ir.Model) -> None:
    """Simplify an exported ONNX model in place: fold the operations on constants (the matrices and convolution
    weights the frozen model computes from its parameters), lift the constants to initializers and remove
    duplicates, common subexpressions and unused nodes.

    These are the passes of onnxscript's optimizer without its pattern rewrites, whose cost grows faster than the
    graph. Measured on an AMD EPYC (Zen 3, 2 threads), against the whole optimizer: a 1x32x32 Glow (L=2, width 256)
    exported ``log_prob`` and ``sample`` in 83.3 against 130.6 s at K=4 (``log_prob.onnx``: 1,124 against 1,022
    nodes, 5.2 against 5.0 MB; ONNX Runtime 1.32, which optimizes a graph itself when it loads it, gave the same
    outputs bit for bit at 0.971x / 1.002x the time, batch 16) and in 246.5 against 1,107.7 s at K=16; every method
    of the shipped digits Glow in 354 against 994 s. A runtime that wants the rewrites can run
    ``onnxscript.optimizer.optimize`` on a file."""
    import onnx_ir as ir
    import onnx_ir.passes.common as passes
    import onnxscript.optimizer

    onnxscript.optimizer.fold_constants(model)
    ir.passes.Sequential(
        passes.RemoveUnusedNodesPass(),
        passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        passes.DeduplicateInitializersPass(),
        passes.CommonSubexpressionEliminationPass(),
        passes.RemoveUnusedNodesPass(),
    )(model)


def _onnx_translations() -> dict:
    """ONNX translations of ATen operators that replace the exporter's own where those lose precision."""
    from onnxscript import opset18 as op

    def log_sigmoid(x):
        # log sigmoid(x) = min(x, 0) - log(1 + exp(-|x|)), the stable form eager PyTorch computes. The exporter's
        # Log(Sigmoid(x)) is off by 0.8 at x = -17 and -inf below -88 (ONNX Runtime's float32 sigmoid is accurate
        # in absolute, not relative, terms); affine couplings and variational dequantization use log_sigmoid.
        zero = op.CastLike(0.0, x)
        one = op.CastLike(1.0, x)
        return op.Sub(op.Min(x, zero), op.Log(op.Add(one, op.Exp(op.Neg(op.Abs(x))))))

    return {torch.ops.aten.log_sigmoid.default: log_sigmoid}


def _write_pt2(program: torch.export.ExportedProgram, method: str, path: Path) -> dict:
    atomic_write_bytes(path, lambda f: torch.export.save(program, f))
    return {}


def _export(
    model: FlowModel,
    directory: str | os.PathLike,
    methods: Sequence[str] | None,
    dynamic_batch: bool,
    suffix: str,
    write: Callable[[torch.export.ExportedProgram, str, Path], dict],
    report: Callable[[str], None] | None,
) -> dict:
    if isinstance(methods, str) or (methods is not None and not methods):
        raise ValueError(f"methods must be a non-empty list of method names from {METHODS}")
    methods = available_methods(model) if methods is None else tuple(methods)
    for method in methods:
        _check_exportable(model, method)
    frozen = frozen_copy(model)
    directory = Path(directory)
    described = {}
    for number, method in enumerate(methods, 1):
        path = directory / f"{method}.{suffix}"
        if report is not None:
            report(f"exporting {path.name} ({number} of {len(methods)})")
        start = time.perf_counter()
        extra = write(_trace(frozen, method, dynamic_batch), method, path)
        if report is not None:
            report(f"wrote {path.name} in {time.perf_counter() - start:.1f} s")
        inputs, outputs = signature(model, method)
        described[method] = {
            "file": path.name,
            "inputs": [s.to_json() for s in inputs],
            "outputs": [s.to_json() for s in outputs],
            **extra,
        }
    description = {
        "format": FORMAT,
        "version": VERSION,
        "exporter": "onnx" if suffix == "onnx" else "torch.export",
        "glowflow_version": glowflow.__version__,
        "torch_version": torch.__version__,
        "model_class": type(model).__name__,
        "model_config": model.config,
        "dynamic_batch": dynamic_batch,
        "methods": described,
    }
    text = json.dumps(description, indent=2) + "\n"
    atomic_write_bytes(directory / f"{suffix}.json", lambda f: f.write(text.encode("utf-8")))
    return json.loads(text)  # as written: tuples made lists
