"""Deployment export: torch.export programs and ONNX graphs compute what eager PyTorch computes.

Tolerances. A ``torch.export`` program runs the same ATen kernels as eager PyTorch (measured: bitwise equal),
so it is compared at 1e-6. ONNX Runtime runs its own float32 kernels (other convolution algorithms and
summation orders): it is compared elementwise at ``|onnx - eager| <= 1e-5 + 1e-5 |eager|`` (measured: at most
1.5e-5 on log-densities of magnitude 40, 1.2e-6 on latents).
"""

import importlib.util
import json

import pytest
import torch

from glowflow import Glow, NotInitializedError, TabularGlow
from glowflow.export import (
    METHODS,
    FrozenMatrix,
    MethodModule,
    _fold_graph,
    _onnx_translations,
    available_methods,
    example_inputs,
    export_onnx,
    export_program,
    export_pt2,
    frozen_copy,
    signature,
)
from glowflow.layers.conv1x1 import InvertibleMatrix
from glowflow.layers.dequantization import quantize, to_continuous
from tests.helpers import randomize_

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")  # inside torch.onnx 2.13
EXPORT_TOL = {"rtol": 1e-6, "atol": 1e-6}
ONNX_TOL = {"rtol": 1e-5, "atol": 1e-5}
needs_onnxruntime = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnxscript") is None,
    reason="onnxruntime and onnxscript are not installed (the onnx extra)",
)


def initialised(model, method_inputs):
    with torch.no_grad():
        if isinstance(model, Glow):
            model.bits_per_dim(*method_inputs)
        else:
            model.log_prob(*method_inputs)
    return randomize_(model, 0.05)


@pytest.fixture(scope="module")
def glow():
    """Class-conditional, dense 1x1 convolutions, variational dequantization, 17 levels: every export path."""
    model = Glow(
        (1, 4, 4), levels=2, steps=1, hidden=4, num_classes=3, permutation="conv", dequantization="variational",
        num_bins=17,
    )  # fmt: skip
    return initialised(model, (torch.randint(0, 17, (8, 1, 4, 4)), torch.arange(8) % 3))


@pytest.fixture(scope="module")
def glow_programs(glow):
    """The exported programs, as callable modules."""
    return {method: export_program(glow, method).module() for method in available_methods(glow)}


def eager(model, method, inputs):
    with torch.no_grad():
        out = MethodModule(model, method)(*inputs)
    return out if isinstance(out, tuple) else (out,)


def as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("batch", [1, 3])
def test_programs_match_eager_at_any_batch_size(glow, glow_programs, method, batch):
    inputs = example_inputs(glow, method, batch=batch, seed=batch)
    expected = eager(glow, method, inputs)
    got = as_tuple(glow_programs[method](*inputs))
    _, outputs = signature(glow, method)
    assert len(got) == len(expected) == len(outputs)
    for g, e, spec in zip(got, expected, outputs, strict=True):
        assert g.shape == e.shape and g.shape[0] == batch, spec.name
        torch.testing.assert_close(g, e, **EXPORT_TOL)


def test_exported_methods_are_the_models_methods(glow, glow_programs):
    k = torch.randint(0, 17, (3, 1, 4, 4))
    y = torch.tensor([2, 0, 1])
    torch.manual_seed(5)
    bpd = glow.bits_per_dim(k, y)  # draws eps ~ N(0, I) with randn_like(k)
    torch.manual_seed(5)
    eps = torch.randn(3, 1, 4, 4)
    torch.testing.assert_close(glow_programs["bits_per_dim"](k, eps, y), bpd, **EXPORT_TOL)

    generator = torch.Generator().manual_seed(3)
    samples = glow.sample(3, temperature=0.6, y=y, generator=generator)
    generator.manual_seed(3)
    noise = [torch.randn((3, *shape), generator=generator) for shape in glow.latent_shapes]
    torch.testing.assert_close(glow_programs["sample"](*noise, torch.tensor(0.6), y), samples, **EXPORT_TOL)

    x = glow.sample(3, y=y)
    zs, logdet = glow.encode(x, y)
    outputs = glow_programs["encode"](x, y)
    for got, want in zip(outputs, [*zs, logdet], strict=True):
        torch.testing.assert_close(got, want, **EXPORT_TOL)
    torch.testing.assert_close(glow_programs["decode"](*zs, y), x, **EXPORT_TOL)
    torch.testing.assert_close(glow_programs["log_prob"](x, y), glow.log_prob(x, y), **EXPORT_TOL)


def test_uniform_dequantization_noise_input():
    model = Glow((1, 4, 4), levels=1, steps=1, hidden=4)
    k = torch.randint(0, 256, (4, 1, 4, 4))
    initialised(model, (k,))
    program = export_program(model, "bits_per_dim", dynamic_batch=False)
    torch.manual_seed(2)
    bpd = model.bits_per_dim(k[:2])  # draws u = rand_like(k)
    torch.manual_seed(2)
    torch.testing.assert_close(program.module()(k[:2], torch.rand(2, 1, 4, 4)), bpd, **EXPORT_TOL)


@pytest.mark.parametrize("num_bins", [17, 256, 65536])
def test_bin_tops_looked_up_while_exporting_equal_nextafter(monkeypatch, num_bins):
    k = torch.arange(num_bins, dtype=torch.float32)
    expected = [to_continuous(k, u, num_bins) for u in (0.0, 0.5, 1.0 - 2**-24, 1.0)]
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    for u, want in zip((0.0, 0.5, 1.0 - 2**-24, 1.0), expected, strict=True):
        got = to_continuous(k, u, num_bins)
        assert torch.equal(got, want), u
        assert torch.equal(quantize(got, num_bins), k.long())


def test_frozen_copy_holds_the_eager_matrices_and_leaves_the_model_alone(glow):
    frozen = frozen_copy(glow)
    frozen_matrices = [m for m in frozen.modules() if isinstance(m, FrozenMatrix)]
    matrices = [m for m in glow.modules() if isinstance(m, InvertibleMatrix)]
    assert len(frozen_matrices) == len(matrices) > 0
    assert not any(isinstance(m, FrozenMatrix) for m in glow.modules())
    with torch.no_grad():
        for f, m in zip(frozen_matrices, matrices, strict=True):
            assert torch.equal(f.weight(), m.weight()) and torch.equal(f.inverse_weight(), m.inverse_weight())
            assert torch.equal(f.log_abs_det(), m.log_abs_det())
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    x = torch.rand(2, 1, 4, 4) - 0.5
    y = torch.tensor([0, 1])
    with torch.no_grad():
        assert torch.equal(frozen.log_prob(x, y), glow.log_prob(x, y))


def test_eager_checks_still_fire_after_export(glow, glow_programs):
    frozen = frozen_copy(glow)
    for model in (glow, frozen):
        bad = torch.zeros(2, 1, 4, 4)
        bad[0, 0, 0, 0] = float("nan")
        with pytest.raises(ValueError, match="NaN"):
            model.log_prob(bad, torch.tensor([0, 1]))
        with pytest.raises(ValueError, match=r"\[0, 3\)"):
            model.log_prob(torch.zeros(2, 1, 4, 4), torch.tensor([0, 3]))
        with pytest.raises(ValueError, match=r"\[0, 16\]"):
            model.bits_per_dim(torch.full((2, 1, 4, 4), 17), torch.tensor([0, 1]))
        zs = [torch.zeros(2, *shape) for shape in glow.latent_shapes]
        zs[1][1, 0, 0, 0] = float("inf")
        with pytest.raises(ValueError, match="latent 1 contains NaN or inf"):
            model.decode(zs, torch.tensor([0, 1]))


def test_what_cannot_be_exported_is_refused_clearly():
    fresh = Glow((1, 4, 4), levels=1, steps=1, hidden=4)
    with pytest.raises(NotInitializedError, match="before exporting"):
        export_program(fresh, "log_prob")
    variational = Glow((1, 4, 4), levels=1, steps=1, hidden=4, dequantization="variational")
    variational.log_prob(torch.rand(4, 1, 4, 4) - 0.5)  # the bijection is initialised, the dequantizer is not
    with pytest.raises(NotInitializedError, match="variational dequantization"):
        export_program(variational, "bits_per_dim")
    tabular = TabularGlow(3, steps=1, hidden=4)
    assert available_methods(tabular) == ("log_prob", "encode", "decode", "sample")
    with pytest.raises(ValueError, match="TabularGlow has no bits_per_dim"):
        export_program(tabular, "bits_per_dim")
    with pytest.raises(ValueError, match="unknown method 'score'"):
        export_program(tabular, "score")
    with pytest.raises(ValueError, match="expected a glowflow model"):
        export_program(torch.nn.Linear(2, 2), "log_prob")
    with pytest.raises(ValueError, match="non-empty list"):
        export_pt2(tabular, "unused", methods="log_prob")


def test_onnx_refusals(tmp_path, monkeypatch):
    model = Glow((1, 4, 4), levels=1, steps=1, hidden=4, precision="bf16")
    with pytest.raises(ValueError, match="model.precision = 'fp32'"):
        export_onnx(model, tmp_path)
    model.precision = "fp32"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"pip install 'glowflow\[onnx\]'"):
        export_onnx(model, tmp_path)


@pytest.mark.filterwarnings("ignore:No complete tensor found in the group")  # torch.export.load, CPU weights
def test_pt2_files_round_trip(tmp_path):
    model = TabularGlow(3, steps=1, hidden=4, num_classes=2)
    initialised(model, (torch.randn(6, 3), torch.arange(6) % 2))
    description = export_pt2(model, tmp_path, methods=["log_prob", "decode"])
    assert json.loads((tmp_path / "pt2.json").read_text()) == json.loads(json.dumps(description))
    assert description["exporter"] == "torch.export" and description["model_class"] == "TabularGlow"
    assert description["methods"]["log_prob"]["inputs"] == [
        {"name": "x", "shape": ["batch", 3], "dtype": "float32", "description": "continuous data"},
        {"name": "y", "shape": ["batch"], "dtype": "int64", "description": "class labels in [0, 2)"},
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decode.pt2", "log_prob.pt2", "pt2.json"]
    for method in ("log_prob", "decode"):
        program = torch.export.load(tmp_path / f"{method}.pt2")
        inputs = example_inputs(model, method, batch=5, seed=1)
        torch.testing.assert_close(program.module()(*inputs), eager(model, method, inputs)[0], **EXPORT_TOL)


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory, glow):
    directory = tmp_path_factory.mktemp("onnx")
    return directory, export_onnx(glow, directory)


@needs_onnxruntime
@pytest.mark.parametrize("method", METHODS)
def test_onnx_graphs_match_eager(glow, onnx_export, method):
    import onnxruntime

    directory, description = onnx_export
    session = onnxruntime.InferenceSession(str(directory / f"{method}.onnx"), providers=["CPUExecutionProvider"])
    described = description["methods"][method]
    assert [i.name for i in session.get_inputs()] == [s["name"] for s in described["inputs"]]
    assert [o.name for o in session.get_outputs()] == [s["name"] for s in described["outputs"]]
    inputs = example_inputs(glow, method, batch=5, seed=7)  # exported with a batch of 2: the batch is dynamic
    feeds = {spec["name"]: t.numpy() for spec, t in zip(described["inputs"], inputs, strict=True)}
    got = session.run(None, feeds)
    for g, e in zip(got, eager(glow, method, inputs), strict=True):
        torch.testing.assert_close(torch.from_numpy(g), e, **ONNX_TOL)


@needs_onnxruntime
def test_onnx_description(onnx_export, glow):
    directory, description = onnx_export
    assert json.loads((directory / "onnx.json").read_text()) == json.loads(json.dumps(description))
    assert description["exporter"] == "onnx" and description["model_config"]["in_shape"] == [1, 4, 4]
    assert set(description["methods"]) == set(METHODS)
    sample = description["methods"]["sample"]
    assert [s["name"] for s in sample["inputs"]] == ["noise_0", "noise_1", "temperature", "y"]
    assert sample["inputs"][2]["shape"] == [] and sample["outputs"][0]["shape"] == ["batch", 1, 4, 4]
    assert sample["opset"] >= 18


@needs_onnxruntime
def test_onnx_tabular_with_lu_matrices(tmp_path):
    import onnxruntime

    model = TabularGlow(4, steps=2, hidden=8)
    initialised(model, (torch.randn(8, 4),))
    export_onnx(model, tmp_path, methods=["log_prob", "sample"])
    for method in ("log_prob", "sample"):
        session = onnxruntime.InferenceSession(str(tmp_path / f"{method}.onnx"), providers=["CPUExecutionProvider"])
        inputs = example_inputs(model, method, batch=3, seed=2)
        got = session.run(None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs, strict=True)})
        torch.testing.assert_close(torch.from_numpy(got[0]), eager(model, method, inputs)[0], **ONNX_TOL)


@needs_onnxruntime
def test_fold_graph_computes_the_constant_part_once():
    import onnxruntime

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("w", torch.randn(3, 4))

        def forward(self, x):
            return x @ (self.w.t().flip(0) * 2.0 + 1.0)

    module, x = Scaled().eval(), torch.randn(5, 4)
    program = torch.onnx.export(module, (x,), dynamo=True, optimize=False, verbose=False)
    assert len(program.model.graph) > 1
    _fold_graph(program.model)
    assert [node.op_type for node in program.model.graph] == ["MatMul"]
    proto = program.model_proto
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    torch.testing.assert_close(got, module(x), rtol=1e-6, atol=1e-6)


@needs_onnxruntime
def test_onnx_log_sigmoid_keeps_its_precision(tmp_path):
    # The exporter's own log_sigmoid, Log(Sigmoid(x)), is off by 0.8 at x = -17 and -inf below -88 in ONNX
    # Runtime; couplings and variational dequantization depend on it.
    import onnxruntime

    class LogSigmoid(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.logsigmoid(x)

    x = torch.tensor([-100.0, -88.0, -30.0, -17.0, -5.0, -1e-3, 0.0, 1e-3, 5.0, 17.0, 30.0, 100.0])
    program = torch.onnx.export(
        LogSigmoid().eval(), (x,), dynamo=True, verbose=False, custom_translation_table=_onnx_translations()
    )
    session = onnxruntime.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    torch.testing.assert_close(got, torch.nn.functional.logsigmoid(x), rtol=1e-6, atol=1e-7)
