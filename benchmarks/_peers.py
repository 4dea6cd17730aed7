"""The original PyTorch Glow ports, built to glowflow's architecture from checkouts outside the project.

``bench.py --peers DIR`` benchmarks them beside glowflow and normflows; ``DIR`` holds unmodified checkouts of

* ``glow-pytorch``  - https://github.com/rosinality/glow-pytorch  (``model.Glow``)
* ``Glow-PyTorch``  - https://github.com/y0ast/Glow-PyTorch        (``model.Glow``, ``modules``, ``utils``)

e.g. ``git clone https://github.com/rosinality/glow-pytorch DIR/glow-pytorch``. Nothing of theirs is copied into
glowflow: this module imports their files from ``DIR`` and calls their own training objective, density and
sampling code. Both name their modules ``model``, so each is loaded under its own name.

What is matched: L levels of squeeze -> K x [ActNorm -> LU 1x1 conv -> affine coupling with Glow's conditioner
(3x3 conv -> ReLU -> 1x1 conv -> ReLU -> zero-initialised 3x3 conv with Glow's learned gain), scale
``sigmoid(h + 2)``] -> split with a learned conditional prior (a zero 3x3 conv of the kept half), a learned prior
for the top latent; width and batch as in the config; plain ``torch.optim.Adam``. What differs is listed in
:data:`PEER_MISMATCHES`.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import types
from pathlib import Path

import torch
from torch import Tensor

PEERS = {
    "rosinality": ("glow-pytorch", "https://github.com/rosinality/glow-pytorch"),
    "y0ast": ("Glow-PyTorch", "https://github.com/y0ast/Glow-PyTorch"),
}

PEER_MISMATCHES = (
    "rosinality: the conditioner's hidden convolutions have a bias instead of ActNorm (its Glow has no ActNorm "
    "inside the coupling network), its zero conv pads with ones, and the top prior is a zero conv of zeros; the "
    "coupling width, fixed at 512 in its code, is set to the config's width through AffineCoupling's default",
    "y0ast: the conditioner has ActNorm after both hidden convolutions (as glowflow and normflows); shift and scale "
    "are read from interleaved (0::2 / 1::2) channels; the top latent is standard normal (learn_top=False: its "
    "learned top prior, a zero 3x3 conv over the top, would add 5 % parameters on S); its training script uses "
    "Adamax, the bench uses plain Adam for every peer",
)


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def peer_dir(root: Path, peer: str) -> Path:
    path = Path(root) / PEERS[peer][0]
    if not (path / "model.py").is_file():
        raise FileNotFoundError(f"{peer}: no checkout at {path} (git clone {PEERS[peer][1]} {path})")
    return path


def peer_commit(root: Path, peer: str) -> str | None:
    """The checked-out commit of a peer (None when it is not a git checkout)."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=peer_dir(root, peer), capture_output=True, text=True
        )
    except (OSError, FileNotFoundError):
        return None
    return out.stdout.strip() or None


class PeerGlow(torch.nn.Module):
    """A peer's Glow with the three calls the bench needs, each through the peer's own code:

    * ``log_prob(x)``: log-density (nats) of continuous ``x`` in [-0.5, 0.5) (B,);
    * ``objective(k)``: per-example bits/dim of 8-bit images ``k``, dequantized ``x = (k + u) / 256 - 0.5``;
    * ``sample(n, temperature)``: ``n`` images with every latent's standard deviation scaled by ``temperature``.
    """

    def __init__(self, peer: str, net: torch.nn.Module, in_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.peer = peer
        self.net = net
        self.in_shape = in_shape
        self._z_shapes: list[tuple[int, ...]] | None = None

    @property
    def num_dims(self) -> int:
        return math.prod(self.in_shape)

    def log_prob(self, x: Tensor) -> Tensor:
        if self.peer == "rosinality":
            log_p, logdet, zs = self.net(x)
            self._z_shapes = [tuple(z.shape[1:]) for z in zs]
            return log_p + logdet
        # y0ast's forward adds its own dequantization noise of one bin to x (in place) and returns bits/dim
        # including -D log 256; undo both terms to get log p(x)
        _, bpd, _ = self.net(x=x.clone())
        return -bpd * (self.num_dims * math.log(2.0)) + self.num_dims * math.log(256)

    def objective(self, k: Tensor) -> Tensor:
        d = self.num_dims
        if self.peer == "rosinality":
            x = (k.float() + torch.rand(k.shape, device=k.device)) / 256 - 0.5
            return (-self.log_prob(x) + d * math.log(256)) / (d * math.log(2.0))
        _, bpd, _ = self.net(x=k.float() / 256 - 0.5)  # its uniform_binning_correction adds u / 256
        return bpd

    def sample(self, n: int, temperature: float) -> Tensor:
        device = next(self.net.parameters()).device
        if self.peer == "rosinality":
            if self._z_shapes is None:
                with torch.no_grad():
                    self.log_prob(torch.zeros(1, *self.in_shape, device=device))
            zs = [temperature * torch.randn(n, *s, device=device) for s in self._z_shapes]
            return self.net.reverse(zs)
        # y0ast's own sampler hard-codes a batch of 32; its prior and decoder take any batch
        from modules import gaussian_sample  # the peer's module, on sys.path after build_peer_glow

        mean, logs = self.net.prior(torch.empty(n, device=device))
        z = gaussian_sample(mean, logs, temperature)
        return self.net.flow(z, temperature=temperature, reverse=True)


def build_peer_glow(root: Path, peer: str, in_shape: tuple[int, int, int], levels: int, steps: int, hidden: int):
    """The peer's Glow for images ``in_shape`` = (C, H, W), wrapped in :class:`PeerGlow`."""
    path = peer_dir(root, peer)
    c, h, w = in_shape
    if peer == "rosinality":
        mod = sys.modules.get("_peer_rosinality_model") or _load("_peer_rosinality_model", path / "model.py")
        # its Flow builds AffineCoupling(in_channel, affine=affine): the width comes from the default
        mod.AffineCoupling.__init__.__defaults__ = (hidden, True)
        net = mod.Glow(c, steps, levels, affine=True, conv_lu=True)
    elif peer == "y0ast":
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
        mod = sys.modules.get("_peer_y0ast_model") or _load("_peer_y0ast_model", path / "model.py")
        net = mod.Glow(
            image_shape=(h, w, c), hidden_channels=hidden, K=steps, L=levels, actnorm_scale=1.0,
            flow_permutation="invconv", flow_coupling="affine", LU_decomposed=True, y_classes=10, learn_top=False,
            y_condition=False,
        )  # fmt: skip
    else:
        raise ValueError(f"unknown peer {peer!r}; expected one of {tuple(PEERS)}")
    return PeerGlow(peer, net, in_shape)
