"""Raw images -> the discrete levels an image Glow models: the one documented preprocessing object.

A Glow trained with ``--n-bits`` or ``--pad`` models transformed images, and its likelihoods are likelihoods of the
transformed images. :class:`ImagePreprocessing` holds those transforms; a model keeps its own
(``Glow.preprocessing``, saved in ``model.config``), so scoring raw images (``glowflow.score``, ``glowflow score``)
applies exactly what training applied::

    raw uint8 (B, C, H, W), levels 0..raw_bins-1
      -> keep the n_bits most significant bits  (k >> (8 - n_bits); raw_bins must be 256)   [n_bits]
      -> zero-pad to pad x pad, centred (an odd remainder goes to the bottom / right)       [pad]
      = levels 0..num_bins-1 of shape model_shape, what ``Glow.bits_per_dim`` scores

Bits per dimension of a preprocessed image count the model's dimensions (padding included) at ``num_bins`` levels:
the number ``glowflow eval`` reports for the run's own test split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


def pad_images(x: Tensor, size: int) -> Tensor:
    """Zero-pad images ``(B, C, H, W)`` to ``(B, C, size, size)``, centred (an odd remainder goes to the bottom /
    right), keeping the dtype: e.g. MNIST 28x28 -> 32x32 with 2 pixels of level 0 on every side. ValueError if
    ``H`` or ``W`` exceeds ``size`` or ``x`` is not 4-D."""
    if x.dim() != 4:
        raise ValueError(f"pad_images expects (B, C, H, W), got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h > size or w > size:
        raise ValueError(f"cannot pad {h}x{w} images to {size}x{size}: they are larger")
    top, left = (size - h) // 2, (size - w) // 2
    out = x.new_zeros((*x.shape[:2], size, size))
    out[:, :, top : top + h, left : left + w] = x
    return out


def reduce_bits(k: Tensor, n_bits: int, source_bits: int = 8) -> Tensor:
    """Keep the ``n_bits`` most significant bits of ``source_bits``-bit integer data: ``k >> (source - n)``."""
    if not 1 <= n_bits <= source_bits:
        raise ValueError(f"n_bits must be between 1 and {source_bits}, got {n_bits}")
    return torch.div(k.to(torch.long), 2 ** (source_bits - n_bits), rounding_mode="floor")


@dataclass(frozen=True)
class ImagePreprocessing:
    """Raw images of ``raw_shape`` with ``raw_bins`` levels -> the model's discrete input (see the module docstring).

    Args:
        raw_shape: (C, H, W) of the raw images.
        raw_bins: levels per channel of the raw images (256 for 8-bit images, 17 for scikit-learn's 8x8 digits).
        n_bits: keep this many most significant bits (8-bit raw images only), or None.
        pad: zero-pad to ``pad x pad``, or None.
    """

    raw_shape: tuple[int, int, int]
    raw_bins: int = 256
    n_bits: int | None = None
    pad: int | None = None

    def __post_init__(self) -> None:
        shape = tuple(self.raw_shape)
        if len(shape) != 3 or any(int(s) != s or s < 1 for s in shape):
            raise ValueError(f"raw_shape must be (C, H, W) with positive integers, got {self.raw_shape}")
        object.__setattr__(self, "raw_shape", tuple(int(s) for s in shape))
        if int(self.raw_bins) != self.raw_bins or not 2 <= self.raw_bins <= 2**16:
            raise ValueError(f"raw_bins must be an integer between 2 and 65536, got {self.raw_bins}")
        if self.n_bits is not None:
            if self.raw_bins != 256:
                raise ValueError(f"n_bits reduces 8-bit images (256 levels); these have {self.raw_bins} levels")
            if int(self.n_bits) != self.n_bits or not 1 <= self.n_bits <= 8:
                raise ValueError(f"n_bits must be an integer in 1..8, got {self.n_bits}")
        if self.pad is not None:
            _, h, w = self.raw_shape
            if int(self.pad) != self.pad or self.pad < max(h, w):
                raise ValueError(f"pad must be an image size >= the raw {h}x{w}, got {self.pad}")

    @property
    def num_bins(self) -> int:
        """Levels per channel of the model's input."""
        return 2**self.n_bits if self.n_bits is not None else self.raw_bins

    @property
    def model_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the model's input."""
        c, h, w = self.raw_shape
        return (c, self.pad, self.pad) if self.pad is not None else (c, h, w)

    @property
    def is_identity(self) -> bool:
        return self.n_bits is None and self.pad is None

    def describe(self) -> str:
        parts = [f"{'x'.join(map(str, self.raw_shape))} images with {self.raw_bins} levels per channel"]
        if self.n_bits is not None:
            parts.append(f"reduced to {self.n_bits} bits")
        if self.pad is not None:
            parts.append(f"zero-padded to {self.pad}x{self.pad}")
        return ", ".join(parts)

    def to_config(self) -> dict[str, Any]:
        """Plain data (JSON): ``ImagePreprocessing(**p.to_config()) == p``."""
        return {"raw_shape": list(self.raw_shape), "raw_bins": self.raw_bins, "n_bits": self.n_bits, "pad": self.pad}

    @classmethod
    def from_config(cls, value: ImagePreprocessing | dict[str, Any]) -> ImagePreprocessing:
        if isinstance(value, ImagePreprocessing):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"preprocessing must be an ImagePreprocessing or a dict, got {type(value).__name__}")
        unknown = set(value) - {"raw_shape", "raw_bins", "n_bits", "pad"}
        if unknown or "raw_shape" not in value:
            raise ValueError(f"preprocessing needs raw_shape (and optionally raw_bins, n_bits, pad), got {value}")
        return cls(tuple(value["raw_shape"]), value.get("raw_bins", 256), value.get("n_bits"), value.get("pad"))

    def check(self, raw: Tensor) -> None:
        """``ValueError`` naming the expected shape and levels if ``raw`` is not a batch of raw images."""
        expected = "x".join(map(str, self.raw_shape))
        if not isinstance(raw, Tensor):
            raise ValueError(f"expected a torch.Tensor of raw images, got {type(raw).__name__}")
        if raw.dim() != 4 or tuple(raw.shape[1:]) != self.raw_shape:
            got = "x".join(map(str, raw.shape[1:])) if raw.dim() == 4 else f"shape {tuple(raw.shape)}"
            raise ValueError(f"the model takes {expected} images (C x H x W), got {got}")
        if raw.dtype == torch.bool or raw.is_complex():
            raise ValueError(f"expected integer pixel levels, got a {raw.dtype} tensor")
        if raw.numel() == 0:
            raise ValueError("empty batch")
        if raw.is_floating_point():
            if not bool(torch.isfinite(raw).all()):
                raise ValueError("images contain NaN or inf")
            if not bool((raw == torch.floor(raw)).all()):
                raise ValueError(f"images must hold integer levels 0..{self.raw_bins - 1}; got fractional values")
        lo, hi = raw.min().item(), raw.max().item()
        if lo < 0 or hi > self.raw_bins - 1:
            raise ValueError(f"pixel values must lie in [0, {self.raw_bins - 1}] ({self.raw_bins} levels); got "
                             f"min {lo:g}, max {hi:g}")  # fmt: skip

    def __call__(self, raw: Tensor) -> Tensor:
        """Raw images (B, *raw_shape), integer levels 0..raw_bins-1 -> model input (B, *model_shape), levels
        0..num_bins-1 (uint8 when they fit, else int32)."""
        self.check(raw)
        k = raw.to(torch.long)
        if self.n_bits is not None:
            k = reduce_bits(k, self.n_bits)
        if self.pad is not None:
            k = pad_images(k, self.pad)
        return k.to(torch.uint8) if self.num_bins <= 256 else k.to(torch.int32)
