"""``glowflow score`` and ``glowflow ood``: per-example scores of new data, and out-of-distribution detection."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from glowflow.cli.common import Formatter, run_args

SCORE_EXAMPLES = """\
examples:
  glowflow score runs/mnist mnist:test --out mnist_test.csv --sort --extremes 8
  glowflow score runs/mnist new_digits/ other.npy --n-samples 4      # several inputs: one table, one histogram
  glowflow score runs/mnist photos/ --grayscale --resize              # fit other images to the model's 1x28x28
  glowflow score runs/digits-20250101-120000 digits:test samples.npy
  glowflow score runs/mnist suspects/ --reference mnist:test[:5000] --fpr 0.01   # + an is_outlier column
  glowflow score runs/table rows.csv                                  # a tabular model: NLL in nats per row
"""

OOD_EXAMPLES = """\
examples:
  glowflow ood runs/mnist --in mnist:test --out noise.npy rotated.npy
  glowflow ood runs/mnist --in mnist:test[5000:] --reference mnist:test[:5000] --out patches/ --grayscale \\
      --background runs/mnist-background --save ood_mnist
  glowflow ood runs/table --in test.csv --out anomalies.csv --fpr 0.01    # anomalous rows of a tabular model
"""


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def open_fraction(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number strictly between 0 and 1, got {text}")
    return value


def percentile(text: str) -> float:
    """An argparse type: a percentile strictly between 0 and 100."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentile between 0 and 100, got {text!r}") from None
    if not 0 < value < 100:
        raise argparse.ArgumentTypeError(f"expected a percentile strictly between 0 and 100, got {text}")
    return value


def input_args(p: argparse.ArgumentParser, batch: bool = True) -> None:
    """How INPUTs are read and fitted to the model (score, ood, encode)."""
    g = p.add_argument_group("inputs")
    g.add_argument("--resize", action="store_true", help="scale images of another size to the model's (bilinear)")
    g.add_argument("--pad", action="store_true", help="zero-pad smaller images to the model's size (centred)")
    g.add_argument("--grayscale", action="store_true", help="convert RGB images to one channel (ITU-R 601 luma)")
    g.add_argument("--levels", type=positive_int, default=None,
                   help="levels of images in .npy/.npz inputs (default: the model's raw levels)")  # fmt: skip
    g.add_argument("--label", default=None, help="class (index or name) of every example, class-conditional models")
    g.add_argument("--data-dir", default=None, help="where NAME:SPLIT data sets are (default: the run's, if the same)")
    if batch:
        g.add_argument("--batch-size", type=positive_int, default=256, help="examples per batch (default 256)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def fit_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(resize=args.resize, pad=args.pad, grayscale=args.grayscale, label=args.label, levels=args.levels,
                data_dir=args.data_dir)  # fmt: skip


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "score",
        help="per-example bits/dim (or NLL) of any data, into a CSV",
        epilog=SCORE_EXAMPLES,
        formatter_class=Formatter,
        description="Score every example of each INPUT - an image folder or file, a .npy/.npz/idx array, a .csv "
        "table, or a data set split NAME:SPLIT, optionally sliced [a:b] - under a trained model: one CSV row per "
        "example (its source, label, bits/dim with each level's share, or NLL in nats for tabular models), a JSON "
        "summary (mean, std, quantiles per input) and a histogram PNG of the inputs' score distributions.",
    )
    run_args(p)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="what to score (see the description)")
    p.add_argument(
        "--out",
        default=None,
        help="the CSV (default RUN/scores.csv, ./scores.csv for a pretrained model); the .json and PNGs go beside it",
    )
    p.add_argument("--n-samples", type=positive_int, default=1,
                   help="dequantization noise draws averaged per image (default 1; >1 adds their spread)")  # fmt: skip
    p.add_argument("--sort", action="store_true", help="least likely examples first")
    p.add_argument("--extremes", type=positive_int, default=None, metavar="N",
                   help="also a PNG of the N least and the N most likely images")  # fmt: skip
    p.add_argument("--reference", default=None, metavar="REF",
                   help="held-out in-distribution data: adds a threshold and an is_outlier column")  # fmt: skip
    p.add_argument("--fpr", type=open_fraction, default=0.05,
                   help="false-alarm rate on --reference the threshold allows (default 0.05)")  # fmt: skip
    input_args(p)
    p.set_defaults(func=_score)

    p = sub.add_parser(
        "ood",
        help="out-of-distribution detection: AUROC / AUPR / FPR95 of five scores",
        epilog=OOD_EXAMPLES,
        formatter_class=Formatter,
        description="Compare in-distribution data (--in) with each OOD set (--out) under a trained model, with the "
        "raw likelihood, the input-complexity correction (Serra et al. 2020), the likelihood ratio against a "
        "background model (Ren et al. 2019, --background), the last-scale likelihood (Schirrmeister et al. 2020) "
        "and the typicality test on batches of M (Nalisnick et al. 2019). Writes the tables (markdown, JSON), ROC "
        "curves and histograms, and per-example scores with an is_outlier column at the threshold that allows "
        "--fpr false alarms on --reference.",
    )
    run_args(p)
    p.add_argument("--in", dest="in_data", required=True, metavar="IN", help="in-distribution test data (an INPUT)")
    p.add_argument("--out", dest="out_data", required=True, nargs="+", metavar="OUT", help="OOD sets (INPUTs)")
    p.add_argument("--reference", default=None, metavar="REF",
                   help="held-out in-distribution data for thresholds and typicality (default: a fixed random "
                   "half of --in; the other half is compared)")  # fmt: skip
    p.add_argument("--background", default=None, metavar="RUN0", help="background model for the likelihood ratio")
    p.add_argument("--scores", default=None, help="comma-separated scores (default: every one that applies but the "
                   "zlib / lzma complexity variants)")  # fmt: skip
    p.add_argument("--typicality-m", type=positive_int, default=10, metavar="M", help="batch size M (default 10)")
    p.add_argument("--bootstraps", type=positive_int, default=1000, help="bootstrap batches (default 1000)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--fpr", type=open_fraction, default=None, help="false-alarm rate on --reference (default 0.05)")
    g.add_argument("--percentile", type=percentile, default=None, help="threshold percentile (= 100 (1 - fpr))")
    p.add_argument("--detector", default=None, help="the score behind is_outlier (default: the first one)")
    p.add_argument("--n-samples", type=positive_int, default=1, help="dequantization noise draws (default 1)")
    p.add_argument(
        "--save", default=None, metavar="DIR", help="output folder (default RUN/ood, ./ood for a pretrained model)"
    )
    input_args(p)
    p.set_defaults(func=_ood)


def _score(args: argparse.Namespace) -> int:
    from glowflow import viz
    from glowflow.io import atomic_write_text
    from glowflow.scoring import score
    from glowflow.scoring.model import load_scorer
    from glowflow.scoring.ood import threshold_of

    scorer = load_scorer(args.run, args.device, args.checkpoint)
    out = Path(args.out) if args.out else _output_dir(args) / "scores.csv"
    if out.suffix.lower() != ".csv":
        raise ValueError(f"--out {out}: the per-example table is a .csv file")
    if args.extremes is not None and not scorer.is_image:
        raise ValueError("--extremes draws images; this is a tabular model")
    inputs = list(args.inputs) + ([args.reference] if args.reference else [])
    s = score(scorer.model, inputs, n_samples=args.n_samples, batch_size=args.batch_size, seed=args.seed,
              progress=args.progress, **fit_kwargs(args))  # fmt: skip
    s.metadata.update(scorer.about)
    extra, summary = {}, s.summary()
    if args.reference:
        ref_name = s.set_names[-1]
        threshold = threshold_of(s.of_set(ref_name).values, args.fpr)
        extra["is_outlier"] = s.values > threshold
        summary["threshold"] = {"reference": ref_name, "fpr": args.fpr, "score": s.key, "value": threshold,
                                "outliers": {n: float(np.mean(s.of_set(n).values > threshold))
                                             for n in s.set_names}}  # fmt: skip
    pictures = {out.with_name(out.stem + "_hist.png"): viz.score_histograms(
        [(f"{s.key} per input", [(n, s.of_set(n).values) for n in s.set_names])], unit=s.unit)}  # fmt: skip
    if args.extremes:
        pictures[out.with_name(out.stem + "_extremes.png")] = _extremes(s, args.extremes)
    from glowflow.scoring.score import write_csv

    write_csv(s, out, sort=args.sort, extra=extra)
    summary_path = atomic_write_text(out.with_suffix(".json"), json.dumps(summary, indent=2) + "\n")
    for path, picture in pictures.items():
        viz.save_png(picture, path)
    _print_summary(s, summary)
    print(f"wrote {out} (one row per example{', least likely first' if args.sort else ''}), {summary_path}, "
          + ", ".join(str(p) for p in pictures))  # fmt: skip
    return 0


def _output_dir(args: argparse.Namespace) -> Path:
    """Where outputs go by default: the run directory, or the current directory for a pretrained model (a
    shipped one lives inside the installed package)."""
    from glowflow.loading import resolve_source
    from glowflow.training.checkpoint import run_dir_of

    found = resolve_source(args.run, args.checkpoint)
    return Path(".") if found.kind == "pretrained" else run_dir_of(found.path)


def _print_summary(s: Any, summary: dict[str, Any]) -> None:
    m = s.metadata
    what = "images" if s.is_image else "rows"
    draws = f", {m['n_samples']} noise draw{'s' if m['n_samples'] > 1 else ''}" if s.is_image else ""
    rate = f"{m['examples_per_s']:.0f} {what}/s" if m.get("examples_per_s") else "-"
    step = f" (step {m['step']})" if m.get("step") is not None else ""
    print(f"scored {len(s)} {what} in {m['seconds']:.1f} s ({rate}, batch {m['batch_size']}{draws}, {m['device']}) "
          f"with {m.get('checkpoint', 'the model')}{step}")  # fmt: skip
    width = max(len(n) for n in s.set_names)
    for name, e in summary["sets"].items():
        line = (f"  {name:<{width}}  {e['examples']:>6} {what}  {s.key} mean {e['mean']:.4f}  std {e['std']:.4f}  "
                f"median {e['q50']:.4f}  5%-95% {e['q05']:.3f}..{e['q95']:.3f}")  # fmt: skip
        if "mean_bpd_per_level" in e:
            levels = ", ".join(f"{v:.3f}" for v in e["mean_bpd_per_level"])
            line += f"  (levels {levels}; dequantization {e['mean_bpd_dequantization']:.3f})"
        print(line)
    if "threshold" in summary:
        t = summary["threshold"]
        rates = ", ".join(f"{n} {100 * v:.1f}%" for n, v in t["outliers"].items())
        print(f"  threshold {t['value']:.4f} ({s.key} above which {100 * t['fpr']:g}% of {t['reference']} lies): "
              f"outliers {rates}")  # fmt: skip


def _extremes(s: Any, n: int) -> np.ndarray:
    from glowflow import viz
    from glowflow.layers.dequantization import levels_to_uint8

    order = np.argsort(-s.values, kind="stable")
    n = min(n, len(s))
    panels = []
    for title, idx in (("least likely", order[:n]), ("most likely", order[::-1][:n])):
        images = levels_to_uint8(s.inputs[idx.copy()], s.num_bins)
        values = ", ".join(f"{v:.2f}" for v in s.values[idx][:4])
        panels.append((f"{title}: {s.key} {values}{', ...' if n > 4 else ''}",
                       viz.image_grid(images, ncol=min(n, 8))))  # fmt: skip
    return viz.titled_panels(panels)


def _ood(args: argparse.Namespace) -> int:
    from glowflow import viz
    from glowflow.io import atomic_write_text
    from glowflow.scoring.ood import detect_ood
    from glowflow.scoring.score import write_csv

    fpr = args.fpr if args.fpr is not None else (1 - args.percentile / 100 if args.percentile is not None else 0.05)
    names = [n.strip() for n in args.scores.split(",") if n.strip()] if args.scores else None
    report = detect_ood(args.run, args.in_data, args.out_data, reference=args.reference,
                        background=args.background, scores=names,
                        detector=args.detector,
                        typicality_m=args.typicality_m, bootstraps=args.bootstraps, fpr=fpr,
                        n_samples=args.n_samples, batch_size=args.batch_size, seed=args.seed, device=args.device,
                        progress=args.progress, **{k: v for k, v in fit_kwargs(args).items()
                                                   if k != "label"})  # fmt: skip
    detector = report.detector
    outlier = report.is_outlier()
    folder = Path(args.save) if args.save else _output_dir(args) / "ood"
    extra = {name: report.values[name] for name in report.per_example_scores()}
    extra["is_outlier"] = outlier
    data = report.to_dict()
    panels = [
        (
            name,
            [(report.in_set, _values_of(report, name, report.in_set))]
            + [(o, _values_of(report, name, o)) for o in report.out_sets],
        )
        for name in report.per_example_scores()
    ]
    rocs = [(out, [(f"{n} ({report.metrics[n][out]['auroc']:.3f})", *report.curves[n][out])
                   for n in report.score_names]) for out in report.out_sets]  # fmt: skip
    hist, roc = viz.score_histograms(panels, unit=report.scores.unit), viz.roc_curves(rocs)
    write_csv(report.scores, folder / "ood_scores.csv", extra=extra)
    atomic_write_text(folder / "ood.json", json.dumps(data, indent=2) + "\n")
    atomic_write_text(folder / "ood.md", report.markdown())
    viz.save_png(hist, folder / "histograms.png")
    viz.save_png(roc, folder / "roc.png")
    _print_table(report, detector)
    print(f"wrote {folder}/: ood.md, ood.json, ood_scores.csv (is_outlier by {detector}), roc.png, histograms.png")
    return 0


def _values_of(report: Any, name: str, set_name: str) -> np.ndarray:
    s = report.scores
    return report.values[name][s.set_index == s.set_names.index(set_name)]


def _print_table(report: Any, detector: str) -> None:
    rows = report.table("auroc")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"AUROC, in-distribution {report.in_set} against each OOD set (1 = perfect, 0.5 = chance, < 0.5 = the "
          "OOD set looks more in-distribution than the data):")  # fmt: skip
    for r in rows:
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        print("  " + "  ".join(cells))
    thr = report.thresholds[detector]
    detected = ", ".join(f"{o} {100 * report.metrics[detector][o]['detected']:.1f}%" for o in report.out_sets)
    print(f"is_outlier: {detector} > {thr:.4f} (the {100 * (1 - report.fpr):g}th percentile of "
          f"{report.reference_set}); flagged: {report.in_set} {100 * report.in_false_alarms[detector]:.1f}%, "
          f"{detected}")  # fmt: skip
