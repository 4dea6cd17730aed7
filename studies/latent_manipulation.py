"""Interpolation and manipulation in a class-conditional Glow's latent space (the Glow paper's Figures 5-6 in
miniature).

Trains a class-conditional model (the base architecture with ``conditional=True``: the label conditions every
coupling and the split priors) and draws, from test digits:

- ``interpolation.png``: pairs of test digits of one class encoded (bin centres, no noise), every level's latent
  interpolated linearly, decoded with the class label (``glowflow interpolate``);
- ``manipulation_conditional.png``: latent arithmetic, class a -> class b: the difference between the mean latents
  of the two classes' training digits, added with strengths 0 ... 1.5 to test digits of class a, decoded with label
  a kept (``glowflow manipulate``): what the latents alone carry;
- ``label_swap.png``: test digits encoded with their own label, then decoded with each label 0..9: the conditional
  model's way of turning an a into a b, keeping the style (slant, thickness) in the latent;
- for contrast, the unconditional base model (the permutation x coupling study's 1x1 conv / affine seed-0 arm,
  shared): ``manipulation_unconditional.png`` and ``interpolation_unconditional.png`` (any two test digits),
  where the class lives in the latents and the same arithmetic moves a digit towards the other class.

    python studies/latent_manipulation.py
    python studies/latent_manipulation.py --pairs 1:7,3:8,4:9,0:6 --strengths 0,0.5,1,1.5,2
    python studies/latent_manipulation.py --quick --data digits

Writes OUT/results.json, OUT/table.md and the PNGs above.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studies import common  # noqa: E402

NAME = "latent_manipulation"
TITLE = "Interpolation and manipulation in latent space"
DEFAULT_SEEDS = (0,)  # the models of the first seed are used
CLASS_PAIRS = ((1, 7), (3, 8), (4, 9))
STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
ROWS = 4  # test digits per manipulation / label-swap grid
INTERPOLATION_PAIRS, FRAMES = 6, 10


def _pairs(text: str) -> tuple[tuple[int, int], ...]:
    try:
        pairs = tuple(tuple(int(c) for c in p.split(":")) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--pairs takes A:B,C:D class indices, got {text!r}") from None
    if not pairs or any(len(p) != 2 or p[0] == p[1] for p in pairs):
        raise argparse.ArgumentTypeError(f"--pairs takes A:B,C:D with A != B, got {text!r}")
    return pairs  # type: ignore[return-value]


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--strengths takes numbers separated by commas, got {text!r}") from None


def add_arguments(p: Any) -> None:
    p.add_argument("--pairs", type=_pairs, default=CLASS_PAIRS,
                   help="class pairs a:b for the latent arithmetic (default 1:7,3:8,4:9)")  # fmt: skip
    p.add_argument("--strengths", type=_floats, default=STRENGTHS,
                   help="multiples of the class vector (default 0,0.25,...,1.5)")  # fmt: skip


def model_arms(ctx: common.Context) -> tuple[common.Arm, common.Arm]:
    seed = ctx.seeds[0]
    return ctx.arm(seed, conditional=True), ctx.arm(seed)


def arms(ctx: common.Context) -> list[common.Arm]:
    return list(model_arms(ctx))


def label_swap(run: Any, data: Any, n: int, seed: int = 0) -> tuple[Any, list[str], list[int]]:
    """Rows: a test digit, then its latent decoded with every label. Returns (rows, row labels, test indices)."""
    import numpy as np
    import torch

    from glowflow.layers.dequantization import levels_to_uint8, to_continuous, to_uint8

    model = run.model
    classes = model.num_classes
    rng = np.random.default_rng(seed)
    chosen = []
    for c in rng.permutation(classes)[:n]:  # one test digit of each of n different classes
        idx = np.flatnonzero((data.test_labels == int(c)).numpy())
        if len(idx):
            chosen.append(int(rng.choice(idx)))
    rows, labels = [], []
    with torch.no_grad():
        k = data.test_x[chosen]
        y = data.test_labels[chosen]
        zs, _ = model.encode(to_continuous(k.float(), 0.5, model.num_bins), y)
        for i in range(len(chosen)):
            z_i = [z[i : i + 1].expand(classes, *z.shape[1:]).contiguous() for z in zs]
            x = model.decode(z_i, torch.arange(classes))
            rows.append(torch.cat([levels_to_uint8(k[i : i + 1], model.num_bins), to_uint8(x, model.num_bins)]))
            labels.append(f"#{chosen[i]} ({int(y[i])})")
    return rows, labels, chosen


def report(ctx: common.Context, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from glowflow.runs import interpolate_run, manipulate_run, open_run

    cond_arm, base_arm = model_arms(ctx)
    pairs = getattr(ctx.args, "pairs", CLASS_PAIRS)
    strengths = tuple(getattr(ctx.args, "strengths", STRENGTHS))
    data_dir = ctx.data.data_dir
    runs = {name: open_run(ctx.arms_dir / arm.slug, device="cpu", prefer="last")
            for name, arm in (("conditional", cond_arm), ("unconditional", base_arm))}  # fmt: skip
    pictures: list[str] = []
    summary: dict[str, Any] = {"models": {}, "manipulation": {}, "interpolation": {}}
    for name, arm in (("conditional", cond_arm), ("unconditional", base_arm)):
        r = results[arm.key]
        summary["models"][name] = {"arm": r["arm"], "parameters": r["parameters"], "steps": r["steps"],
                                   "test_bpd": r["test_bpd"], "wall_s": r["wall_s"]}  # fmt: skip

    for name, run in runs.items():
        picture, chosen = interpolate_run(run, pairs=INTERPOLATION_PAIRS, frames=FRAMES, seed=0, data_dir=data_dir)
        file = "interpolation.png" if name == "conditional" else "interpolation_unconditional.png"
        within = "within a class, " if name == "conditional" else ""
        common.viz.save_png(common.viz.titled_panels([(f"{name} model: test digit pairs ({within}{FRAMES} frames, "
                                                       "every level's latent interpolated)", picture)]),
                            ctx.out / file)  # fmt: skip
        pictures.append(file)
        summary["interpolation"][name] = {"pairs": chosen, "frames": FRAMES, "picture": file}

        panels, vectors = [], []
        for a, b in pairs:
            picture, s = manipulate_run(run, a, b, n=ROWS, strengths=strengths, seed=0, data_dir=data_dir)
            panels.append((f"{a} -> {b} (|v| = {s['vector_norm']:.1f})", picture))
            vectors.append({"from": a, "to": b, "vector_norm": s["vector_norm"], "test_images": s["test_images"]})
        file = f"manipulation_{name}.png"
        kept = ", label a kept" if name == "conditional" else ""
        sheet = common.viz.titled_panels(panels)
        caption = (f"{name} model: z + s * (mean z of class b - mean z of class a), s = "
                   f"{', '.join(f'{v:g}' for v in strengths)} left to right{kept}")  # fmt: skip
        common.viz.save_png(common.viz.titled_panels([(caption, sheet)]), ctx.out / file)
        pictures.append(file)
        summary["manipulation"][name] = {"strengths": list(strengths), "pairs": vectors, "picture": file}

    run = runs["conditional"]
    data = run.load_data(data_dir)
    rows, labels, chosen = label_swap(run, data, ROWS + 2)
    title = "conditional model: a test digit (first column), its latent decoded with labels 0..9"
    common.viz.save_png(common.labelled_rows(rows, labels, title=title), ctx.out / "label_swap.png")
    pictures.append("label_swap.png")
    summary["label_swap"] = {"test_images": chosen, "picture": "label_swap.png"}

    m = summary["models"]
    body = common.markdown_table(
        ["model", "parameters", "steps", "test bpd", "wall"],
        [[name, f"{v['parameters']:,}", v["steps"], f"{v['test_bpd']:.4f}", common.compact_time(v["wall_s"])]
         for name, v in m.items()],
    )  # fmt: skip
    body += "\n" + common.markdown_table(
        ["class vector", "norm (conditional model)", "norm (unconditional model)"],
        [[f"{p['from']} -> {p['to']}", f"{p['vector_norm']:.2f}", f"{q['vector_norm']:.2f}"]
         for p, q in zip(summary["manipulation"]["conditional"]["pairs"],
                         summary["manipulation"]["unconditional"]["pairs"], strict=True)],
    )  # fmt: skip
    common.write_table(ctx, TITLE, body, notes=[
        "The conditional model's test bpd uses the true labels (log p(x | y)); the unconditional one's is log p(x).",
        "Class vector: mean latent of class b minus that of class a over their training digits (all levels, "
        "flattened); a small norm in the conditional model means the label, not the latent, carries the class.",
        "Pictures: " + ", ".join(pictures) + ".",
    ])  # fmt: skip
    print(f"\n{TITLE}:")
    for name, v in m.items():
        print(f"  {name:<13} model: test bpd {v['test_bpd']:.4f}")
    pairs_c = summary["manipulation"]["conditional"]["pairs"]
    pairs_u = summary["manipulation"]["unconditional"]["pairs"]
    for p, q in zip(pairs_c, pairs_u, strict=True):
        print(f"  class vector {p['from']} -> {p['to']}: norm {p['vector_norm']:.2f} (conditional), "
              f"{q['vector_norm']:.2f} (unconditional)")  # fmt: skip
    print(f"  pictures in {ctx.out}: {', '.join(pictures)}")
    summary["pictures"] = pictures
    return summary


if __name__ == "__main__":
    sys.exit(common.main(sys.modules[__name__]))
