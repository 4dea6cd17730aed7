"""Conditioner: Glow's 3-1-3 convolutional net vs the gated residual network (Flow++) at equal parameter count.

The coupling layers' conditioner is either Glow's (3x3 conv -> ReLU -> 1x1 conv -> ReLU -> zero-initialised 3x3
conv, ``conditioner="glow"``) or Flow++'s gated residual network (3x3 conv in, two gated residual blocks with
concat-ELU and layer norm, zero-initialised 3x3 conv out, ``conditioner="gated"``). The Glow arm is the base model
(width 64); the gated arm's width is chosen so that the whole models' parameter counts match as closely as
possible (computed by building both models; both counts are printed and recorded). Same optimiser steps, several
seeds; the wall clock per arm is reported too, since equal parameters is not equal compute.

    python studies/conditioner.py
    python studies/conditioner.py --seeds 0,1,2
    python studies/conditioner.py --quick --data digits

Writes OUT/results.json, OUT/table.md, OUT/curves.png.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studies import common  # noqa: E402

NAME = "conditioner"
TITLE = "Conditioner: Glow 3-1-3 conv net vs gated residual network, equal parameters"
DEFAULT_SEEDS = (0, 1)
TOLERANCE = 0.05  # parameter counts must match within this relative difference


_MATCHED: dict[str, tuple[int, int, int]] = {}


def matched_width(ctx: common.Context) -> tuple[int, int, int]:
    """(gated width, Glow parameters, gated parameters): the gated width whose model is closest in size."""
    key = common.identity({**ctx.base, "shape": list(ctx.data.shape)})
    if key not in _MATCHED:
        _MATCHED[key] = _search(ctx)
    return _MATCHED[key]


def _search(ctx: common.Context) -> tuple[int, int, int]:
    target = ctx.parameters(conditioner="glow")
    best: tuple[int, int] | None = None
    lo, hi = 1, 4 * ctx.base["hidden"]
    while lo < hi:  # parameters grow with the width: the smallest width at or above the target
        mid = (lo + hi) // 2
        if ctx.parameters(conditioner="gated", hidden=mid) < target:
            lo = mid + 1
        else:
            hi = mid
    for width in {max(1, lo - 1), lo}:
        n = ctx.parameters(conditioner="gated", hidden=width)
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (width, n)
    assert best is not None
    return best[0], target, best[1]


def grid(ctx: common.Context) -> dict[str, list[common.Arm]]:
    width, _, _ = matched_width(ctx)
    return {
        "glow": [ctx.arm(seed, conditioner="glow") for seed in ctx.seeds],
        "gated": [ctx.arm(seed, conditioner="gated", hidden=width) for seed in ctx.seeds],
    }


def arms(ctx: common.Context) -> list[common.Arm]:
    width, n_glow, n_gated = matched_width(ctx)
    rel = (n_gated - n_glow) / n_glow
    print(f"parameters: glow conditioner width {ctx.base['hidden']}: {n_glow:,}; gated conditioner width {width}: "
          f"{n_gated:,} ({rel:+.1%})")  # fmt: skip
    if abs(rel) > TOLERANCE:
        print(f"warning: the closest gated width misses the Glow model's size by more than {TOLERANCE:.0%}")
    return [a for group in grid(ctx).values() for a in group]


def report(ctx: common.Context, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    width, n_glow, n_gated = matched_width(ctx)
    rows, out, series = [], [], []
    for kind, group in grid(ctx).items():
        res = [results[a.key] for a in group if a.key in results]
        if not res:
            continue
        values = [r["test_bpd"] for r in res]
        rows.append([kind, res[0]["config"]["hidden"], f"{res[0]['parameters']:,}", common.pm(values),
                     ", ".join(f"{v:.3f}" for v in values), common.compact_time(common.seconds(results, group)),
                     f"{common.seconds(results, group, 's_per_step'):.3f}"])  # fmt: skip
        out.append({"conditioner": kind, "hidden": res[0]["config"]["hidden"], "parameters": res[0]["parameters"],
                    "seeds": [r["config"]["seed"] for r in res], "test_bpd": values,
                    "wall_s": [r["wall_s"] for r in res], "s_per_step": [r["s_per_step"] for r in res],
                    "arms": [r["arm"] for r in res]})  # fmt: skip
        series.append((f"{kind} (width {res[0]['config']['hidden']}, {res[0]['parameters'] / 1e3:.0f}k params)",
                       [r["curve"] for r in res]))  # fmt: skip
    body = common.markdown_table(
        ["conditioner", "width", "parameters", "test bpd (mean ± std)", "per seed", "wall / arm", "s / step"], rows
    )
    diff = None
    if len(out) == 2:
        diff = [g - c for c, g in zip(out[0]["test_bpd"], out[1]["test_bpd"], strict=True)]
        body += f"\ngated - glow, per seed then mean ± std: {common.pm(diff, 4)} bits/dim\n"
    common.write_table(ctx, TITLE, body, notes=[
        f"Parameter counts (whole model): glow {n_glow:,}, gated {n_gated:,} "
        f"({(n_gated - n_glow) / n_glow:+.1%}); the gated width is the one closest to the Glow model's size.",
        "The glow arm is the base model (shared with the permutation x coupling study's 1x1 conv / affine arm).",
        "Equal parameters is not equal compute: compare the s / step column.",
    ])  # fmt: skip
    if series:
        fig = common.bpd_curves(series, "conditioner: test bits/dim, mean ± std over seeds")
        common.save_figure(fig, ctx.out / "curves.png")
    print(f"\n{TITLE}, after {ctx.base['iters']} steps:")
    for row in rows:
        print(f"  {row[0]:<6} width {row[1]:>3}, {row[2]:>9} parameters: test bpd {row[3]}   ({row[6]} s/step)")
    if diff is not None:
        print(f"  gated - glow: {common.pm(diff, 4)} bits/dim")
    return {"parameters": {"glow": n_glow, "gated": n_gated, "relative_difference": (n_gated - n_glow) / n_glow},
            "gated_width": width, "arms": out, "gated_minus_glow": diff, "pictures": ["curves.png"]}  # fmt: skip


if __name__ == "__main__":
    sys.exit(common.main(sys.modules[__name__]))
