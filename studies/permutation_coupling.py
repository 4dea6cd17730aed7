"""Permutation x coupling: the Glow paper's ablation (Kingma & Dhariwal 2018, Figure 3) at CPU scale.

Three ways to mix channels between couplings - a fixed channel reversal (RealNVP), a fixed random shuffle, and the
learned invertible 1x1 convolution (LU-parametrised) - each with additive and affine coupling, several seeds each,
the same optimiser steps for every arm. Reports test bits/dim curves (mean ± std over seeds) and the final test
bits/dim, and whether the paper's order holds: 1x1 conv < shuffle < reverse, and affine <= additive.

    python studies/permutation_coupling.py                      # 6 arms x 3 seeds
    python studies/permutation_coupling.py --seeds 0,1,2,3,4 --jobs 2
    python studies/permutation_coupling.py --quick --data digits  # seconds: checks the code path

Writes OUT/results.json, OUT/table.md, OUT/curves.png (test bpd against steps) and OUT/final.png.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studies import common  # noqa: E402

NAME = "permutation_coupling"
TITLE = "Permutation x coupling (Glow paper, Figure 3)"
DEFAULT_SEEDS = (0, 1, 2)
PERMUTATIONS = (("reverse", "reverse"), ("shuffle", "shuffle"), ("lu", "1x1 conv"))
COUPLINGS = ("additive", "affine")


def grid(ctx: common.Context) -> dict[tuple[str, str], list[common.Arm]]:
    return {
        (perm, coupling): [ctx.arm(seed, permutation=perm, coupling=coupling) for seed in ctx.seeds]
        for perm, _ in PERMUTATIONS
        for coupling in COUPLINGS
    }


def arms(ctx: common.Context) -> list[common.Arm]:
    return [a for group in grid(ctx).values() for a in group]


def _compare(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean difference a - b and its standard error (Welch), from per-seed values."""
    ma, sa = common.mean_std(a)
    mb, sb = common.mean_std(b)
    se = math.sqrt(sa**2 / len(a) + sb**2 / len(b)) if len(a) > 1 and len(b) > 1 else math.nan
    return ma - mb, se


def _verdict(diff: float, se: float) -> str:
    if diff < 0 and (math.isnan(se) or diff < -2 * se):
        return "holds"
    if diff < 0:
        return "holds in the mean, within noise (< 2 standard errors)"
    if math.isnan(se) or diff > 2 * se:
        return "reversed"
    return "reversed in the mean, within noise (< 2 standard errors)"


def order_checks(final: dict[tuple[str, str], list[float]]) -> list[dict[str, Any]]:
    """The paper's claims, each as (better arm, worse arm): test bpd of the first should be lower."""
    checks = []
    pairs = []
    for coupling in COUPLINGS:
        pairs.append(((("lu", coupling), ("shuffle", coupling)), f"1x1 conv < shuffle ({coupling})"))
        pairs.append(((("shuffle", coupling), ("reverse", coupling)), f"shuffle < reverse ({coupling})"))
    for perm, label in PERMUTATIONS:
        pairs.append((((perm, "affine"), (perm, "additive")), f"affine <= additive ({label})"))
    for (better, worse), claim in pairs:
        if not final.get(better) or not final.get(worse):
            continue
        diff, se = _compare(final[better], final[worse])
        checks.append({"claim": claim, "difference": diff, "standard_error": se, "verdict": _verdict(diff, se)})
    return checks


def report(ctx: common.Context, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    groups = grid(ctx)
    labels = dict(PERMUTATIONS)
    final = {k: common.seed_values(ctx, results, group) for k, group in groups.items()}
    rows, arms_out = [], []
    for (perm, coupling), group in groups.items():
        values = final[(perm, coupling)]
        if not values:
            continue
        res = [results[a.key] for a in group if a.key in results]
        rows.append([labels[perm], coupling, common.pm(values), ", ".join(f"{v:.3f}" for v in values),
                     f"{res[0]['parameters']:,}", common.compact_time(common.seconds(results, group)),
                     f"{common.seconds(results, group, 's_per_step'):.3f}"])  # fmt: skip
        arms_out.append({"permutation": perm, "coupling": coupling, "seeds": [r["config"]["seed"] for r in res],
                         "test_bpd": values, "mean": common.mean_std(values)[0], "std": common.mean_std(values)[1],
                         "parameters": res[0]["parameters"], "wall_s": [r["wall_s"] for r in res],
                         "s_per_step": [r["s_per_step"] for r in res], "arms": [r["arm"] for r in res],
                         "curves": [r["curve"] for r in res]})  # fmt: skip
    checks = order_checks(final)
    table = common.markdown_table(
        ["permutation", "coupling", "test bpd (mean ± std)", "per seed", "parameters", "wall / arm", "s / step"],
        rows,
    )
    table += "\n" + common.markdown_table(
        ["paper's claim", "difference (bpd)", "standard error", "here"],
        [[c["claim"], f"{c['difference']:+.4f}", f"{c['standard_error']:.4f}", c["verdict"]] for c in checks],
    )
    common.write_table(ctx, TITLE, table, notes=[
        f"{len(ctx.seeds)} seeds per arm ({', '.join(map(str, ctx.seeds))}); std is the sample standard deviation "
        "over seeds; the standard error of a difference is Welch's.",
        "wall / arm is the whole train() call (training and the test evaluations) with "
        f"{ctx.jobs} arm(s) running at a time; s / step counts optimiser steps only.",
    ])  # fmt: skip

    fig = common.figure(13.0, 5.0)
    for i, coupling in enumerate(COUPLINGS):
        series = [(f"{labels[p]}", [results[a.key]["curve"] for a in groups[(p, coupling)] if a.key in results])
                  for p, _ in PERMUTATIONS]  # fmt: skip
        series = [s for s in series if s[1]]
        if series:
            common.bpd_curves(series, f"{coupling} coupling", ax=fig.add_subplot(1, 2, i + 1))
    fig.suptitle(f"{TITLE}: test bits/dim, mean ± std over {len(ctx.seeds)} seeds")
    fig.tight_layout()
    common.save_figure(fig, ctx.out / "curves.png")

    fig = common.figure(8.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.38
    for j, coupling in enumerate(COUPLINGS):
        xs, means, stds = [], [], []
        for i, (perm, _) in enumerate(PERMUTATIONS):
            if final[(perm, coupling)]:
                m, s = common.mean_std(final[(perm, coupling)])
                xs.append(i + (j - 0.5) * width)
                means.append(m)
                stds.append(s)
        ax.bar(xs, means, width, yerr=stds, capsize=4, label=coupling, color=f"C{j}")
        for i, perm in enumerate(p for p, _ in PERMUTATIONS):
            for v in final[(perm, coupling)]:
                ax.plot(i + (j - 0.5) * width, v, "k.", ms=4)
    every = [v for vs in final.values() for v in vs]
    if every:
        lo, hi = min(every), max(every)
        ax.set_ylim(lo - 0.3 * (hi - lo + 1e-3), hi + 0.3 * (hi - lo + 1e-3))
    ax.set_xticks(range(len(PERMUTATIONS)), [label for _, label in PERMUTATIONS])
    ax.set_ylabel("final test bits/dim (lower is better)")
    ax.set_title(f"final test bpd after {ctx.base['iters']} steps (dots: seeds)")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    common.save_figure(fig, ctx.out / "final.png")

    print(f"\n{TITLE} - final test bits/dim after {ctx.base['iters']} steps:")
    for row in rows:
        print(f"  {row[0]:>8} / {row[1]:<8}  {row[2]}   ({row[5]} per arm)")
    print("the paper's order here:")
    for c in checks:
        print(f"  {c['claim']:<32} {c['difference']:+.4f} ± {c['standard_error']:.4f}  {c['verdict']}")
    return {"arms": arms_out, "order_checks": checks, "pictures": ["curves.png", "final.png"]}


if __name__ == "__main__":
    sys.exit(common.main(sys.modules[__name__]))
