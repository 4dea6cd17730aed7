"""Out-of-distribution detection with a Glow trained on MNIST: which inputs the raw likelihood gets wrong, and
which correction fixes each (Nalisnick et al. 2019, Serrà et al. 2020, Ren et al. 2019, Schirrmeister et al. 2020).

In-distribution: the second half of the MNIST test split (5,000 images); the first half is the held-out reference
for the thresholds and the typicality test. OOD sets, all made offline from a seed:

- ``digits``: scikit-learn's 8x8 digits (all 1,797), levels 0..16 -> 0..255, bilinear upsampling to 28x28;
- ``rotated``: MNIST test images rotated by 90 degrees;
- ``inverted``: MNIST test images with inverted intensities (255 - k);
- ``noise``: uniform random levels 0..255;
- ``constant``: images of one uniformly drawn level;
- ``patches``: random 28x28 crops of scikit-learn's two sample photographs (``load_sample_images``) in greyscale.

Scores (higher: more anomalous): raw bits/dim, the complexity correction with PNG, zlib and lzma lengths, the
likelihood ratio against ``--background`` (a model trained with ``glowflow train --background-for RUN
--mutation-rate 0.2``), the last-scale bits/dim, and the typicality test on batches of 10. Everything goes through
``glowflow.scoring.detect_ood``: the same numbers as ``glowflow ood`` with these sets.

    python studies/ood.py --run ../ref/mnist --background ../ref/mnist-background
    python studies/ood.py --run RUN --background RUN0 --mnist-dir ../shared/data/mnist-5k --per-set 200 --quick

Writes OUT/table.md, OUT/results.json, OUT/roc.png, OUT/histograms.png and OUT/examples.png (OUT default
studies/results/ood/).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from glowflow import viz  # noqa: E402
from glowflow.data import load_dataset  # noqa: E402
from glowflow.layers.dequantization import levels_to_uint8  # noqa: E402
from glowflow.scoring import InputSet, detect_ood  # noqa: E402
from glowflow.scoring.inputs import convert_levels, resize_images, to_grayscale  # noqa: E402
from studies import common  # noqa: E402

NAME = "ood"
DEFAULT_MNIST = common.ROOT / ".." / "shared" / "data" / "mnist"
SCORES = ["bpd", "complexity_png", "complexity_zlib", "complexity_lzma", "likelihood_ratio", "last_level",
          "typicality"]  # fmt: skip
SET_NOTES = {
    "digits": "scikit-learn's 8x8 digits, upsampled to 28x28 (bilinear)",
    "rotated": "MNIST test digits rotated by 90 degrees",
    "inverted": "MNIST test digits, intensities inverted (255 - k)",
    "noise": "uniform random levels 0..255",
    "constant": "one uniformly drawn level per image",
    "patches": "28x28 greyscale crops of scikit-learn's two sample photos",
}


def ood_sets(mnist_test: torch.Tensor, per_set: int, seed: int) -> dict[str, InputSet]:
    """The six OOD sets (uint8 (N, 1, 28, 28), 256 levels), ``per_set`` images each (the digits: all 1,797 at
    most), made from ``seed``. The MNIST-derived sets come from the reference half of the test split."""
    from sklearn.datasets import load_digits, load_sample_images

    rng = np.random.default_rng(seed)
    n = per_set
    digits = torch.from_numpy(load_digits().images.astype(np.uint8)[:, None][: min(n, 1797)])
    digits = resize_images(convert_levels(digits, 17, 256), (28, 28), 256).to(torch.uint8)
    source = mnist_test[rng.permutation(len(mnist_test))[: 2 * n]]
    rotated = torch.rot90(source[:n], 1, dims=(2, 3)).contiguous()
    inverted = 255 - source[n : 2 * n]
    noise = torch.from_numpy(rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8))
    constant = torch.from_numpy(np.repeat(rng.integers(0, 256, (n, 1, 1, 1), dtype=np.uint8), 784, 3)
                                .reshape(n, 1, 28, 28))  # fmt: skip
    photos = [to_grayscale(torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1)))[None])
              for im in load_sample_images().images]  # fmt: skip
    crops = []
    for i in range(n):
        photo = photos[i % len(photos)][0, 0]
        y, x = rng.integers(0, photo.shape[0] - 28), rng.integers(0, photo.shape[1] - 28)
        crops.append(photo[y : y + 28, x : x + 28])
    patches = torch.stack(crops)[:, None].to(torch.uint8)
    made = {"digits": digits, "rotated": rotated, "inverted": inverted, "noise": noise, "constant": constant,
            "patches": patches}  # fmt: skip
    return {name: InputSet(name, images, 256) for name, images in made.items()}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", required=True, help="the MNIST run (a run directory or checkpoint)")
    p.add_argument("--background", default=None, help="its background model (without: no likelihood ratio)")
    p.add_argument("--mnist-dir", default=str(DEFAULT_MNIST), help="the MNIST idx files (default ../shared/data/mnist)")
    p.add_argument("--per-set", type=int, default=2000, help="images per OOD set (default 2000)")
    p.add_argument("--typicality-m", type=int, default=10, help="batch size of the typicality test (default 10)")
    p.add_argument("--batch-size", type=int, default=256, help="images per scoring batch (default 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the OOD sets and the noise (default 0)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--quick", action="store_true", help="64 images per set, 200 bootstraps: the tests' code path")
    p.add_argument("--out", default=str(common.RESULTS_DIR / NAME), help="outputs (default studies/results/ood)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    per_set = 64 if args.quick else args.per_set
    out = Path(args.out)
    t0 = time.perf_counter()
    test = load_dataset("mnist", args.mnist_dir, "test")
    half = len(test) // 2
    reference = InputSet(f"mnist:test[:{half}]", test.data[:half], 256,
                         sources=[f"mnist:test[{i}]" for i in range(half)])  # fmt: skip
    inside = InputSet(f"mnist:test[{half}:]", test.data[half:], 256,
                      sources=[f"mnist:test[{i}]" for i in range(half, len(test))])  # fmt: skip
    if args.quick:
        reference, inside = reference.subset(slice(0, 4 * per_set)), inside.subset(slice(0, 4 * per_set))
    sets = ood_sets(test.data[:half], per_set, args.seed)
    scores = SCORES if args.background else [s for s in SCORES if s != "likelihood_ratio"]
    print(f"scoring {len(reference)} reference, {len(inside)} in-distribution and "
          f"{sum(len(s) for s in sets.values())} OOD images ({', '.join(sets)}) with {args.run}"
          + (f" and {args.background}" if args.background else ""))  # fmt: skip
    report = detect_ood(args.run, inside, sets, reference=reference, background=args.background, scores=scores,
                        typicality_m=args.typicality_m, bootstraps=200 if args.quick else 1000,
                        batch_size=args.batch_size, seed=args.seed, device=args.device, progress=True)  # fmt: skip
    wall = time.perf_counter() - t0
    command = "python studies/ood.py " + " ".join(shlex.quote(a) for a in argv)
    results = _results(report, sets, command, wall)
    out.mkdir(parents=True, exist_ok=True)
    common.write_json(out / "results.json", results)
    (out / "table.md").write_text(_table(report, results, command), encoding="utf-8")
    _pictures(report, sets, out)
    print((out / "table.md").read_text(encoding="utf-8"))
    print(f"wrote {out}/table.md, results.json, roc.png, histograms.png, examples.png ({wall / 60:.1f} min)")
    return 0


def _results(report: Any, sets: dict[str, InputSet], command: str, wall: float) -> dict[str, Any]:
    data = report.to_dict()
    best = {o: max(report.score_names, key=lambda n: report.metrics[n][o]["auroc"]) for o in report.out_sets}
    raw = "bpd"
    return {
        "command": command,
        "written_at": datetime.now().isoformat(timespec="seconds"),
        "environment": common.environment(),
        "wall_s": wall,
        "sets": {name: {"note": SET_NOTES[name], "examples": len(s)} for name, s in sets.items()},
        "raw_likelihood_fails_on": [o for o in report.out_sets if report.metrics[raw][o]["auroc"] < 0.5],
        "best_score": best,
        **data,
    }


def _table(report: Any, results: dict[str, Any], command: str) -> str:
    model = results["model"]
    background = results.get("background") or {}
    lines = [
        "# Out-of-distribution detection with a Glow trained on MNIST",
        "",
        f"Model: {model['model']} ({model['checkpoint']}, step {model['step']}).  ",
        f"Background model: {background.get('model', 'none')} ({background.get('checkpoint', '-')}, step "
        f"{background.get('step', '-')}).  ",
        f"In-distribution: {report.in_set} ({results['inputs'][1]['examples']} images); reference (thresholds, "
        f"typicality): {report.reference_set} ({results['inputs'][0]['examples']}).  ",
        f"Command: `{command}` ({results['wall_s'] / 60:.1f} min, {results['examples_per_s']:.0f} images/s per "
        f"model pass, batch {results['batch_size']}, {results['device']}).",
        "",
    ]
    for metric, title in (("auroc", "AUROC (OOD positive; 0.5 = chance, < 0.5 = OOD looks *more* likely)"),
                          ("fpr95", "FPR at 95% TPR (OOD accepted when 95% of MNIST is; lower is better)"),
                          ("aupr", "AUPR (OOD positive)")):  # fmt: skip
        rows = [[name, *(f"{report.metrics[name][o][metric]:.3f}" for o in report.out_sets)]
                for name in report.score_names]  # fmt: skip
        lines += [f"**{title}**", "", common.markdown_table(["score", *report.out_sets], rows)]
    rows = [[name, f"{report.thresholds[name]:.4f}", f"{100 * report.in_false_alarms[name]:.1f}%",
             *(f"{100 * report.metrics[name][o]['detected']:.1f}%" for o in report.out_sets)]
            for name in report.score_names]  # fmt: skip
    lines += [f"**Flagged at the threshold that allows {100 * report.fpr:g}% false alarms on the reference**", "",
              common.markdown_table(["score", "threshold", report.in_set, *report.out_sets], rows)]  # fmt: skip
    lines += ["Sets: " + "; ".join(f"`{n}` {v['note']} ({v['examples']})" for n, v in results["sets"].items()) + ".",
              "", "Scores: " + "; ".join(f"`{n}` {report.to_dict()['scores'][n]['note']}" for n in report.score_names)
              + f"; typicality batches of M = {report.typicality['m']}, threshold from "
              f"{results['bootstraps']} bootstrap batches of the reference.", ""]  # fmt: skip
    return "\n".join(lines)


def _pictures(report: Any, sets: dict[str, InputSet], out: Path) -> None:
    panels = []
    for name in report.per_example_scores():
        groups = [(report.in_set, _values(report, name, report.in_set))]
        groups += [(o, _values(report, name, o)) for o in report.out_sets]
        panels.append((name, groups))
    viz.save_png(viz.score_histograms(panels), out / "histograms.png")
    rocs = [(o, [(f"{n} ({report.metrics[n][o]['auroc']:.2f})", *report.curves[n][o]) for n in report.score_names])
            for o in report.out_sets]  # fmt: skip
    viz.save_png(viz.roc_curves(rocs), out / "roc.png")
    inside = report.scores.inputs[report.scores.set_index == report.scores.set_names.index(report.in_set)][:8]
    rows = [levels_to_uint8(inside, 256)] + [s.data[:8] for s in sets.values()]
    viz.save_png(common.labelled_rows(rows, ["MNIST", *sets]), out / "examples.png")


def _values(report: Any, name: str, set_name: str) -> np.ndarray:
    s = report.scores
    return report.values[name][s.set_index == s.set_names.index(set_name)]


if __name__ == "__main__":
    raise SystemExit(main())
