"""``glowflow encode`` and ``glowflow decode``: data <-> the latents of a trained model, exactly."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from glowflow.cli.common import Formatter, run_args
from glowflow.cli.score import fit_kwargs, input_args, positive_int

ENCODE_EXAMPLES = """\
examples:
  glowflow encode runs/mnist mnist:test[:100] --out latents.npz
  glowflow encode runs/mnist my_digits/ --out latents.npz --deterministic     # bin centres instead of noise
  glowflow encode runs/mnist-cond smiling/ --mean --out smiling_mean.npz      # the mean latent of a set
"""

DECODE_EXAMPLES = """\
examples:
  glowflow decode runs/mnist latents.npz --out decoded/           # one PNG per image (in class folders if labelled)
  glowflow decode runs/mnist latents.npz --out grid.png --npy     # a grid, and the levels as grid.npy
  glowflow decode runs/mnist latents.npz --out cool.png --scale 0.7
  glowflow decode runs/table latents.npz --out rows.csv           # a tabular model: rows as .csv or .npy
"""


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "encode",
        help="data -> latents (.npz), exactly invertible by decode",
        epilog=ENCODE_EXAMPLES,
        formatter_class=Formatter,
        description="Encode every example of INPUT (as for glowflow score) to the model's latents: an .npz with one "
        "array per level (finest first), the labels and sources, and the dequantization noise, so that decode "
        "recovers every pixel level. --deterministic dequantizes at the bin centres; --mean keeps the mean latent.",
    )
    run_args(p)
    p.add_argument("input", metavar="INPUT", help="what to encode (an image folder or file, an array, NAME:SPLIT)")
    p.add_argument("--out", required=True, help="the .npz archive to write")
    p.add_argument("--deterministic", action="store_true", help="bin centres instead of dequantization noise")
    p.add_argument("--mean", action="store_true", help="keep only the mean latent of the set")
    input_args(p)
    p.set_defaults(func=_encode)

    p = sub.add_parser(
        "decode",
        help="latents (.npz) -> images or rows",
        epilog=DECODE_EXAMPLES,
        formatter_class=Formatter,
        description="Decode an archive of glowflow encode: images into a folder of PNGs (class sub-folders when the "
        "inputs had labels) or one grid PNG, rows into a .csv or .npy. Images come back in the model's levels and "
        "raw size (padding removed); --npy also saves those levels as an array. --scale multiplies every latent.",
    )
    run_args(p)
    p.add_argument("latents", metavar="LATENTS", help="an .npz written by glowflow encode")
    p.add_argument("--out", required=True, help="a folder, or a .png grid (images); a .csv or .npy file (rows)")
    p.add_argument("--npy", action="store_true", help="also save the decoded levels as .npy")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every latent by this (default 1)")
    p.add_argument("--ncol", type=positive_int, default=None, help="images per row of a grid")
    p.add_argument("--batch-size", type=positive_int, default=256, help="examples per batch (default 256)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=_decode)


def _encode(args: argparse.Namespace) -> int:
    from glowflow.scoring.codec import encode, save_latents

    out = Path(args.out)
    if out.suffix.lower() != ".npz":
        raise ValueError(f"--out {out}: latents are written as an .npz archive")
    latents = encode(args.run, args.input, deterministic=args.deterministic, mean=args.mean, seed=args.seed,
                     batch_size=args.batch_size, device=args.device, checkpoint=args.checkpoint,
                     progress=args.progress, **fit_kwargs(args))  # fmt: skip
    save_latents(latents, out)
    shapes = ", ".join("x".join(map(str, z.shape[1:])) for z in latents.zs)
    how = "mean latent" if args.mean else ("bin centres" if args.deterministic else f"noise seed {args.seed}")
    print(f"encoded {latents.meta['examples']} examples of {latents.meta['input']} ({how}): latents {shapes} "
          f"per example, finest first")  # fmt: skip
    if latents.meta.get("lost_in_float32"):
        lost = latents.meta["lost_in_float32"]
        print(f"float32 did not decode {lost} of {latents.meta['examples']} examples back to their levels (an "
              "ill-conditioned input): encoded in float64 instead, and decode runs in float64")  # fmt: skip
    print(f"wrote {out}")
    return 0


def _decode(args: argparse.Namespace) -> int:
    from glowflow.scoring.codec import decode, load_latents
    from glowflow.scoring.model import load_scorer

    latents = load_latents(args.latents)
    scorer = load_scorer(args.run, args.device, args.checkpoint)
    out = Path(args.out)
    image = scorer.is_image
    suffix = out.suffix.lower()
    if image and suffix not in ("", ".png"):
        raise ValueError(f"--out {out}: images go to a folder or a .png grid")
    if not image and suffix not in (".csv", ".npy"):
        raise ValueError(f"--out {out}: rows go to a .csv or .npy file")
    x = decode(scorer.model, latents, scale=args.scale, batch_size=args.batch_size, progress=args.progress)
    written = _write_images(x, latents, scorer.model.num_bins, out, args) if image else _write_rows(x, out)
    exact = "exact levels (archived noise)" if latents.noise is not None and args.scale == 1.0 else "quantized"
    print(f"decoded {len(x)} {'images' if image else 'rows'} ({exact if image else 'rows in the data units'}"
          f"{f', latents x {args.scale:g}' if args.scale != 1.0 else ''})")  # fmt: skip
    print("wrote " + ", ".join(map(str, written)))
    return 0


def _write_images(x: Any, latents: Any, num_bins: int, out: Path, args: argparse.Namespace) -> list[Path]:
    from glowflow import viz
    from glowflow.layers.dequantization import levels_to_uint8

    shown = levels_to_uint8(x, num_bins).numpy()
    written: list[Path] = []
    if out.suffix.lower() == ".png":
        viz.save_png(viz.image_grid(shown, ncol=args.ncol), out)
        written.append(out)
        npy = out.with_suffix(".npy")
    else:
        if out.is_file():
            raise ValueError(f"--out {out} is a file; images go to a folder or a .png grid")
        labels = latents.labels
        for i, image in enumerate(shown):
            folder = out / labels[i] if labels is not None and labels[i] else out
            viz.save_png(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0), folder / f"{i:06d}.png")
        written.append(out)
        npy = out / "levels.npy"
    if args.npy:
        from glowflow.io import atomic_write_bytes

        atomic_write_bytes(npy, lambda f: np.save(f, x.numpy()))
        written.append(npy)
    return written


def _write_rows(x: Any, out: Path) -> list[Path]:
    from glowflow.io import atomic_write_bytes, atomic_write_text

    rows = x.numpy()
    if out.suffix.lower() == ".npy":
        atomic_write_bytes(out, lambda f: np.save(f, rows))
    else:
        atomic_write_text(out, "\n".join(",".join(f"{v:.9g}" for v in row) for row in rows) + "\n")
    return [out]
