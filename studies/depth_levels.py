"""Depth and levels: test bits/dim against K (steps of flow per level) and L (number of scales), same optimiser steps.

Two sweeps of the base model (width 64, 1x1 conv, affine coupling): K in (4, 8, 16) at L = 2, and L in (1, 2, 3) at
K = 8 (the L = 2, K = 8 arm is shared by both). Three levels need the image side divisible by 2^3 = 8; MNIST's 28 is
not, so every arm of this study - not only L = 3 - trains on MNIST zero-padded to 32x32 (TrainConfig ``pad=32``),
which keeps the arms comparable with each other. Padded images have 1024 dimensions of which 240 are always 0, so
these bits/dim are lower than (and not comparable with) the 28x28 numbers of the other studies. The 8x8 digits
need no padding. Deeper models cost more per step: the wall clock per arm is reported.

    python studies/depth_levels.py
    python studies/depth_levels.py --seeds 0,1 --jobs 2
    python studies/depth_levels.py --quick --data digits

Writes OUT/results.json, OUT/table.md, OUT/depth_levels.png.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studies import common  # noqa: E402

NAME = "depth_levels"
TITLE = "Depth and levels: test bpd against K and L"
DEFAULT_SEEDS = (0,)
KS, FIXED_L = (4, 8, 16), 2
LS, FIXED_K = (1, 2, 3), 8
QUICK_KS, QUICK_FIXED_K = (1, 2, 3), 2


def sweeps(ctx: common.Context) -> tuple[tuple[int, ...], int, tuple[int, ...], int]:
    if ctx.quick:
        return QUICK_KS, FIXED_L, LS, QUICK_FIXED_K
    return KS, FIXED_L, LS, FIXED_K


def pad_for(ctx: common.Context) -> int | None:
    """The padded side that makes the images divisible by 2^max(L), or None when they already are."""
    side = ctx.data.shape[1]
    unit = 2 ** max(LS)
    return None if side % unit == 0 else -(-side // unit) * unit


def grid(ctx: common.Context) -> dict[tuple[str, int], list[common.Arm]]:
    ks, fixed_l, ls, fixed_k = sweeps(ctx)
    pad = pad_for(ctx)
    out: dict[tuple[str, int], list[common.Arm]] = {}
    for k in ks:
        out[("K", k)] = [ctx.arm(seed, levels=fixed_l, steps=k, pad=pad) for seed in ctx.seeds]
    for n_levels in ls:
        out[("L", n_levels)] = [ctx.arm(seed, levels=n_levels, steps=fixed_k, pad=pad) for seed in ctx.seeds]
    return out


def arms(ctx: common.Context) -> list[common.Arm]:
    pad = pad_for(ctx)
    if pad:
        side = ctx.data.shape[1]
        print(f"note: every arm of this study pads the {side}x{side} images to {pad}x{pad} (L=3 needs the side "
              "divisible by 8)")  # fmt: skip
    return [a for group in grid(ctx).values() for a in group]


def report(ctx: common.Context, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ks, fixed_l, ls, fixed_k = sweeps(ctx)
    pad = pad_for(ctx)
    rows, out = [], []
    for (what, _), group in grid(ctx).items():
        res = [results[a.key] for a in group if a.key in results]
        if not res:
            continue
        c = res[0]["config"]
        values = [r["test_bpd"] for r in res]
        m, s = common.mean_std(values)
        rows.append([f"{what} sweep", c["levels"], c["steps"], f"{res[0]['parameters']:,}", common.pm(values),
                     common.compact_time(common.seconds(results, group)),
                     f"{common.seconds(results, group, 's_per_step'):.3f}"])  # fmt: skip
        out.append({"sweep": what, "levels": c["levels"], "steps": c["steps"], "parameters": res[0]["parameters"],
                    "seeds": [r["config"]["seed"] for r in res], "test_bpd": values, "mean": m, "std": s,
                    "wall_s": [r["wall_s"] for r in res], "s_per_step": [r["s_per_step"] for r in res],
                    "arms": [r["arm"] for r in res]})  # fmt: skip
    shape = ctx.data.shape
    side = f"{pad}x{pad} (zero-padded from {shape[1]}x{shape[2]})" if pad else f"{shape[1]}x{shape[2]}"
    body = common.markdown_table(
        ["sweep", "L", "K", "parameters", "test bpd (mean ± std)", "wall / arm", "s / step"], rows
    )
    common.write_table(ctx, TITLE, body, notes=[
        f"Images are {side} in every arm of this study"
        + (": the bits/dim count the padding's dimensions too, so they are not comparable with the other studies'."
           if pad else "."),
        f"K sweep at L={fixed_l}; L sweep at K={fixed_k}; seeds {', '.join(map(str, ctx.seeds))}.",
        "Same optimiser steps for every arm; deeper models take longer per step (s / step).",
    ])  # fmt: skip

    fig = common.figure(11.0, 4.5)
    for i, (what, xs_all, fixed) in enumerate((("K", ks, f"L={fixed_l}"), ("L", ls, f"K={fixed_k}"))):
        ax = fig.add_subplot(1, 2, i + 1)
        pts = [o for o in out if o["sweep"] == what]
        xs = [o["steps"] if what == "K" else o["levels"] for o in pts]
        ax.errorbar(xs, [o["mean"] for o in pts], yerr=[o["std"] for o in pts], fmt="o-", capsize=4, color=f"C{i}")
        for o, x in zip(pts, xs, strict=True):
            per_step = sum(o["s_per_step"]) / len(o["s_per_step"])
            ax.annotate(
                f"{o['parameters'] / 1e3:.0f}k, {per_step:.2f} s/step",
                (x, o["mean"]),
                textcoords="offset points",
                xytext=(6, 6),
                fontsize=8,
            )
        if what == "K":
            ax.set_xscale("log", base=2)
        ax.set_xticks(list(xs_all), [str(x) for x in xs_all])
        ax.set_xlabel("K, steps of flow per level" if what == "K" else "L, levels")
        ax.set_ylabel("test bits/dim")
        ax.set_title(f"{what} sweep at {fixed}")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{TITLE} ({side}, {ctx.base['iters']} steps each; labels: parameters, time per step)")
    fig.tight_layout()
    common.save_figure(fig, ctx.out / "depth_levels.png")

    print(f"\n{TITLE} ({side}), after {ctx.base['iters']} steps:")
    for row in rows:
        print(f"  {row[0]}: L={row[1]} K={row[2]:<3} {row[3]:>10} parameters  test bpd {row[4]}  ({row[6]} s/step)")
    return {"padded_to": pad, "arms": out, "pictures": ["depth_levels.png"]}


if __name__ == "__main__":
    sys.exit(common.main(sys.modules[__name__]))
