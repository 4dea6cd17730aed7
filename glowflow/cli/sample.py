"""``glowflow sample``, ``interpolate`` and ``manipulate``: pictures drawn from a trained model."""

from __future__ import annotations

import argparse
from typing import Any

from glowflow.checks import NON_NEGATIVE, POSITIVE, TEMPERATURE, IntRange
from glowflow.cli.common import (
    PRETRAINED_OUT,
    Formatter,
    default_out,
    floats,
    open_run_of,
    png_file,
    ranged,
    run_args,
    write_npy,
    write_png,
)

SAMPLE_EXAMPLES = """\
examples:
  glowflow sample runs/digits-20250101-120000
  glowflow sample runs/mnist --n 100 --temperature 0.8 --out mnist.png --npy
  glowflow sample runs/mnist-cond --label 7
  glowflow sample runs/fashion-cond --label Sneaker --temperature 0.5
  glowflow sample glowflow/digits --n 40 --out digits.png        # a shipped model
"""

INTERPOLATE_EXAMPLES = """\
examples:
  glowflow interpolate runs/digits-20250101-120000            # 4 random pairs of test images
  glowflow interpolate runs/mnist --index 3 17 --frames 12
"""

MANIPULATE_EXAMPLES = """\
examples:
  glowflow manipulate runs/digits-20250101-120000 --from 1 --to 7
  glowflow manipulate runs/fashion --from Sneaker --to "Ankle boot" --strengths 0,0.5,1,1.5
"""


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("sample", help="a PNG grid of samples (and .npy)", epilog=SAMPLE_EXAMPLES,
                       formatter_class=Formatter, description="Draw samples at a temperature into a PNG grid (a "
                       "scatter plot for tabular / toy models); --npy also saves the samples as an array.")  # fmt: skip
    run_args(p)
    p.add_argument("--n", type=ranged(POSITIVE), default=64, help="number of samples, >= 1 (default 64)")
    p.add_argument("--temperature", type=ranged(TEMPERATURE), default=0.7,
                   help="latent standard deviation, >= 0 (default 0.7)")  # fmt: skip
    p.add_argument("--label", default=None, help="class index or name (class-conditional models)")
    p.add_argument("--out", type=png_file, default=None,
                   help=f"PNG file (default RUN/sample_T<temperature>.png; {PRETRAINED_OUT})")  # fmt: skip
    p.add_argument("--npy", action="store_true", help="also save the samples beside it as .npy")
    p.add_argument("--ncol", type=ranged(POSITIVE), default=None,
                   help="images per row, >= 1 (default: one class per column, else square-ish)")  # fmt: skip
    p.set_defaults(func=_sample)

    p = sub.add_parser("interpolate", help="latent interpolation between data images", epilog=INTERPOLATE_EXAMPLES,
                       formatter_class=Formatter, description="Encode two data images, interpolate their latents "
                       "linearly and decode: one PNG row per pair, the two images at its ends.")  # fmt: skip
    run_args(p, data=True)
    p.add_argument("--index", type=ranged(NON_NEGATIVE), nargs=2, metavar=("A", "B"),
                   help="the two images, indices >= 0 (default: random pairs)")  # fmt: skip
    p.add_argument("--pairs", type=ranged(POSITIVE), default=4, help="random pairs, one row each, >= 1 (default 4)")
    p.add_argument("--frames", type=ranged(IntRange(2)), default=8,
                   help="images per row, ends included, >= 2 (default 8)")  # fmt: skip
    p.add_argument("--split", choices=("test", "train"), default="test", help="where the images come from")
    p.add_argument("--out", type=png_file, default=None,
                   help=f"PNG file (default RUN/interpolate.png; {PRETRAINED_OUT})")  # fmt: skip
    p.set_defaults(func=_interpolate)

    p = sub.add_parser("manipulate", help="latent arithmetic with a class vector", epilog=MANIPULATE_EXAMPLES,
                       formatter_class=Formatter, description="Class vector = mean latent of class --to minus mean "
                       "latent of class --from over the training set; it is added with several strengths to test "
                       "images of class --from (rows: images, columns: strengths). Needs labelled data.")  # fmt: skip
    run_args(p, data=True)
    p.add_argument("--from", dest="source", required=True, help="source class (index or name)")
    p.add_argument("--to", dest="target", required=True, help="target class (index or name)")
    p.add_argument("--n", type=ranged(POSITIVE), default=4, help="test images of the source class, >= 1 (default 4)")
    p.add_argument("--strengths", type=floats, default=[0.0, 0.25, 0.5, 0.75, 1.0, 1.25],
                   help="multiples of the class vector (default 0,0.25,0.5,0.75,1,1.25)")  # fmt: skip
    p.add_argument("--max-per-class", type=ranged(POSITIVE), default=2000,
                   help="training images per class mean, >= 1 (default 2000)")  # fmt: skip
    p.add_argument("--out", type=png_file, default=None,
                   help=f"PNG file (default RUN/manipulate_<from>_to_<to>.png; {PRETRAINED_OUT})")  # fmt: skip
    p.set_defaults(func=_manipulate)


def _sample(args: argparse.Namespace) -> int:
    from glowflow.runs import discrete_levels, sample_picture_of, sample_run

    run = open_run_of(args)
    samples = sample_run(run, args.n, args.temperature, args.label, args.seed)
    label = "" if args.label is None else f"_label{args.label}"
    out = args.out or default_out(run, f"sample_T{args.temperature:g}{label}.png")
    caption = f"T={args.temperature:g}" + ("" if args.label is None else f", label {args.label}")
    write_png(sample_picture_of(run, samples, caption, args.ncol), out)
    print(f"wrote {out}")
    if args.npy:
        npy = out.with_suffix(".npy")
        array = discrete_levels(samples, run.num_bins) if run.is_image else samples
        write_npy(array.numpy(), npy)
        what = f"discrete levels 0..{run.num_bins - 1}" if run.is_image else "values in the data's units"
        print(f"wrote {npy} ({tuple(array.shape)}, {what})")
    return 0


def _interpolate(args: argparse.Namespace) -> int:
    from glowflow.runs import interpolate_run

    run = open_run_of(args)
    picture, pairs = interpolate_run(run, tuple(args.index) if args.index else None, args.pairs, args.frames,
                                     args.split, args.seed, args.data_dir)  # fmt: skip
    out = args.out or default_out(run, "interpolate.png")
    write_png(picture, out)
    print(f"wrote {out}: {args.split} images " + ", ".join(f"{a} -> {b}" for a, b in pairs))
    return 0


def _manipulate(args: argparse.Namespace) -> int:
    from glowflow.runs import manipulate_run

    run = open_run_of(args)
    picture, s = manipulate_run(run, args.source, args.target, args.n, tuple(args.strengths), args.max_per_class,
                                args.seed, args.data_dir)  # fmt: skip
    out = args.out or default_out(run, f"manipulate_{args.source}_to_{args.target}.png")
    write_png(picture, out)
    strengths = ", ".join(f"{v:g}" for v in s["strengths"])
    print(f"wrote {out}: class {s['from']} + s * (mean latent of {s['to']} - mean latent of {s['from']}), "
          f"s = {strengths} (columns); test images {s['test_images']} (rows)")  # fmt: skip
    return 0
