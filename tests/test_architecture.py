"""The shape of the package: no import cycles, layers that import only downwards, and every registry entry usable
by name (the tests iterate the registries, so a new entry is tested without editing this file)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from glowflow.data import DATASETS
from glowflow.layers import CONDITIONERS, COUPLINGS, DEQUANTIZERS, PERMUTATIONS
from glowflow.models import MODELS, Glow, TabularGlow
from glowflow.models.base import make_step
from glowflow.training.config import PRESETS, TrainConfig
from tests.helpers import check_flow, randomize_

PACKAGE = Path(__file__).resolve().parents[1] / "glowflow"

# what each part may import besides itself and the leaf modules
LEAVES = {"glowflow.errors", "glowflow.registry", "glowflow.io", "glowflow.preprocessing", "glowflow.progress",
          "glowflow.version", "glowflow.checks", "glowflow.wording"}  # fmt: skip
ALLOWED = {
    "glowflow.layers": set(),
    "glowflow.models": {"glowflow.layers"},
    "glowflow.data": set(),
    "glowflow.viz": set(),
    "glowflow.training": {"glowflow.layers", "glowflow.models", "glowflow.data", "glowflow.viz"},
}
DEPRECATED_ALIASES = {"glowflow.training.tools"}  # old homes that re-export a moved module for one release


def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _imports() -> dict[str, set[str]]:
    """Module -> the glowflow modules it imports anywhere it runs (top level or inside functions)."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rsplit(".", 1)[0] if "." in name else ""
        return name or None

    def executed(tree: ast.AST):  # every node but those under ``if TYPE_CHECKING:`` (imports for annotations only)
        for node in ast.iter_child_nodes(tree):
            if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
                continue
            yield node
            yield from executed(node)

    edges: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in executed(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                target = resolve(name) if name.startswith("glowflow") else None
                if target and target != module and target != "glowflow":
                    edges[module].add(target)
    return edges


def _part(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def test_no_import_cycles():
    edges = _imports()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        path.append(u)
        for v in sorted(edges[u]):
            if u.startswith(v + "."):  # a module importing its own package's __init__
                continue
            if state.get(v) == 1:
                return path[path.index(v) :] + [v]
            if not state.get(v) and (cycle := visit(v)):
                return cycle
        state[u] = 2
        path.pop()
        return None

    for module in sorted(edges):
        if not state.get(module):
            cycle = visit(module)
            assert cycle is None, " -> ".join(cycle)


def test_parts_import_only_downwards():
    bad = []
    for module, targets in _imports().items():
        part = _part(module)
        if part not in ALLOWED or module in DEPRECATED_ALIASES:
            continue
        for t in targets:
            if _part(t) != part and t not in LEAVES and _part(t) not in ALLOWED[part]:
                bad.append(f"{module} -> {t}")
    assert not bad, bad


def test_nothing_imports_the_command_line():
    users = [m for m, targets in _imports().items() if any(t.startswith("glowflow.cli") for t in targets)]
    assert all(m.startswith("glowflow.cli") or m == "glowflow.__main__" for m in users), users


@pytest.mark.parametrize("coupling", COUPLINGS.names())
@pytest.mark.parametrize("permutation", PERMUTATIONS.names())
def test_every_coupling_and_permutation_makes_an_exact_step(coupling: str, permutation: str):
    torch.manual_seed(0)
    image = make_step(4, 8, coupling=coupling, permutation=permutation, conditioner="glow").double()
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    image(x)  # ActNorm's data init
    check_flow(randomize_(image, 0.1), x, rt_tol=1e-10, ld_tol=1e-9)
    vector = make_step(4, 8, coupling=coupling, permutation=permutation, conditioner="mlp", image=False).double()
    v = torch.randn(3, 4, dtype=torch.float64)
    vector(v)
    check_flow(randomize_(vector, 0.1), v, rt_tol=1e-10, ld_tol=1e-9)


@pytest.mark.parametrize("name", CONDITIONERS.names())
def test_every_conditioner_starts_at_zero(name: str):
    kind = CONDITIONERS.get(name)
    net = kind.build(2, 6, 8, 0, 0)
    x = torch.randn(3, 2, 4, 4) if kind.image else torch.randn(3, 2)
    h = net(x, None)
    assert h.shape == ((3, 6, 4, 4) if kind.image else (3, 6)) and h.abs().max() == 0  # zero-initialised last layer


@pytest.mark.parametrize("name", DEQUANTIZERS.names())
def test_every_dequantizer_keeps_each_level_in_its_bin(name: str):
    deq = DEQUANTIZERS.get(name)(1, 16)
    k = torch.randint(0, 16, (4, 1, 4, 4))
    x, logdet = deq(k)
    assert x.shape == k.shape and logdet.shape == (4,) and torch.isfinite(logdet).all()
    assert torch.equal(deq.inverse(x)[0], k)  # quantisation recovers every level
    assert Glow((1, 4, 4), levels=1, steps=1, hidden=4, num_bins=16, dequantization=name).dequantizer.num_bins == 16


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_data_set_entry_is_complete(name: str):
    spec = DATASETS.get(name)
    assert spec.kind in ("image", "tabular", "toy") and spec.description and callable(spec.load)
    assert spec.preset in PRESETS
    cfg = TrainConfig(data=name).validate()
    assert cfg.is_image == (spec.kind == "image")
    if spec.download is not None:
        assert spec.download.files and spec.download.mirrors
        assert all(len(md5) == 32 for md5 in spec.download.files.values())


def test_model_registry_rebuilds_every_model_from_its_config():
    for name, model in (("Glow", Glow((1, 4, 4), levels=1, steps=1, hidden=4)), ("TabularGlow", TabularGlow(3))):
        assert MODELS.get(name) is type(model)
        clone = MODELS.get(name)(**model.config)
        assert clone.config == model.config


def test_a_new_coupling_is_one_class_and_one_registry_entry(monkeypatch: pytest.MonkeyPatch):
    """The worked example of docs/design.md: after the class and its entry, every part takes the name."""
    from glowflow.layers.base import zero_logdet
    from glowflow.layers.coupling import Coupling

    monkeypatch.setattr(COUPLINGS, "_entries", dict(COUPLINGS._entries))
    monkeypatch.setattr(COUPLINGS, "_help", dict(COUPLINGS._help))

    @COUPLINGS.register("shift", help="y_b = x_b + t(x_a)")
    class ShiftCoupling(Coupling):
        params_per_channel = 1

        def _transform(self, x_t, coeffs):
            return x_t + coeffs[0], zero_logdet(x_t)

        def _untransform(self, y_t, coeffs):
            return y_t - coeffs[0], zero_logdet(y_t)

    model = Glow((1, 8, 8), levels=2, steps=2, hidden=8, coupling="shift").double()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64) - 0.5
    model.encode(x)
    randomize_(model, 0.05)
    zs, _ = model.encode(x)
    assert (model.decode(zs) - x).abs().max() < 1e-12
    assert TrainConfig(coupling="shift").validate().coupling == "shift"
