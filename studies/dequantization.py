"""Dequantization: uniform noise vs variational dequantization (Flow++, Ho et al. 2019), same architecture and budget.

Both arms are the base Glow (L=2, K=8, width 64, 1x1 conv, affine coupling); the variational arm adds Flow++'s
learned noise distribution q(u|x) (a small conditional flow, so a few more parameters). Test bits/dim of the final
models are reported two ways from the same noise draws (default 16 per test image, full test split):

- the variational bound, E_q[log p(x + u) - log q(u|x)] averaged over the draws (what training minimises);
- the importance-weighted estimate log mean_s exp(bound_s), a tighter bound on the discrete log-likelihood.

Flow++ found variational dequantization better than uniform; its advantage should show in the bound, and the
importance-weighted estimate shows how much of the gap is looseness of the bound rather than a worse model.

    python studies/dequantization.py
    python studies/dequantization.py --draws 32 --seeds 0,1,2
    python studies/dequantization.py --quick --data digits

Writes OUT/results.json, OUT/table.md, OUT/curves.png and OUT/bounds.png.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studies import common  # noqa: E402

NAME = "dequantization"
TITLE = "Dequantization: uniform vs variational (Flow++)"
DEFAULT_SEEDS = (0, 1)
KINDS = ("uniform", "variational")


def add_arguments(p: Any) -> None:
    p.add_argument("--draws", type=int, default=16,
                   help="dequantization noise draws per test image for the final scores (default 16)")  # fmt: skip


def draws(ctx: common.Context) -> int:
    return 4 if ctx.quick else max(1, getattr(ctx.args, "draws", 16))


def grid(ctx: common.Context) -> dict[str, list[common.Arm]]:
    return {kind: [ctx.arm(seed, iw_samples=draws(ctx), dequantization=kind) for seed in ctx.seeds] for kind in KINDS}


def arms(ctx: common.Context) -> list[common.Arm]:
    return [a for group in grid(ctx).values() for a in group]


def report(ctx: common.Context, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    n = str(draws(ctx))
    groups = grid(ctx)
    rows, out, series = [], [], []
    for kind, group in groups.items():
        res = [results[a.key] for a in group if a.key in results]
        if not res:
            continue
        train_eval = [r["test_bpd"] for r in res]
        bound = [r["evals"][n]["bound"] for r in res]
        iw = [r["evals"][n]["importance_weighted"] for r in res]
        gap = [b - w for b, w in zip(bound, iw, strict=True)]
        rows.append([kind, f"{res[0]['parameters']:,}", common.pm(train_eval), common.pm(bound), common.pm(iw),
                     common.pm(gap), common.compact_time(common.seconds(results, group)),
                     f"{common.seconds(results, group, 's_per_step'):.3f}"])  # fmt: skip
        out.append({"dequantization": kind, "seeds": [r["config"]["seed"] for r in res],
                    "parameters": res[0]["parameters"], "test_bpd_training_eval": train_eval, "bound": bound,
                    "importance_weighted": iw, "gap": gap,
                    "wall_s": [r["wall_s"] for r in res], "s_per_step": [r["s_per_step"] for r in res],
                    "arms": [r["arm"] for r in res]})  # fmt: skip
        series.append((kind, [r["curve"] for r in res]))
    e = ctx.base["eval_samples"]
    body = common.markdown_table(
        ["dequantization", "parameters", f"test bpd ({e} draws, in training)", f"bound ({n} draws)",
         f"importance-weighted ({n} draws)", "bound - IW", "wall / arm", "s / step"],
        rows,
    )  # fmt: skip
    diffs = {}
    if len(out) == 2:
        for what in ("bound", "importance_weighted"):
            diffs[what] = [v - u for u, v in zip(out[0][what], out[1][what], strict=True)]
        body += "\n" + common.markdown_table(
            ["variational - uniform (per seed, then mean ± std)", "bpd"],
            [[f"{what.replace('_', '-')}", common.pm(d, 4)] for what, d in diffs.items()],
        )
    common.write_table(ctx, TITLE, body, notes=[
        f"Seeds {', '.join(map(str, ctx.seeds))}; mean ± sample std over seeds. Both final scores use the same "
        f"{n} noise draws per test image, on {'all' if ctx.base['eval_size'] is None else ctx.base['eval_size']} "
        "test images.",
        "The uniform arm is the base model (shared with the permutation x coupling study's 1x1 conv / affine arm).",
    ])  # fmt: skip

    if series:
        fig = common.bpd_curves(series, f"{TITLE}: test bits/dim ({e} draws, variational bound)")
        common.save_figure(fig, ctx.out / "curves.png")
    fig = common.figure(7.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.38
    for j, (what, label) in enumerate((("bound", "variational bound"), ("importance_weighted", "importance-weighted"))):
        means = [common.mean_std(o[what])[0] for o in out]
        stds = [common.mean_std(o[what])[1] for o in out]
        xs = [i + (j - 0.5) * width for i in range(len(out))]
        ax.bar(xs, means, width, yerr=stds, capsize=4, label=f"{label} ({n} draws)", color=f"C{j}")
    every = [v for o in out for w in ("bound", "importance_weighted") for v in o[w]]
    if every:
        lo, hi = min(every), max(every)
        ax.set_ylim(lo - 0.5 * (hi - lo + 1e-3), hi + 0.5 * (hi - lo + 1e-3))
    ax.set_xticks(range(len(out)), [o["dequantization"] for o in out])
    ax.set_ylabel("test bits/dim (lower is better)")
    ax.set_title("final test bpd: bound and importance-weighted estimate")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    common.save_figure(fig, ctx.out / "bounds.png")

    print(f"\n{TITLE}, after {ctx.base['iters']} steps ({n} draws per test image):")
    for row in rows:
        print(f"  {row[0]:<12} bound {row[3]}   importance-weighted {row[4]}   ({row[6]} per arm)")
    for what, d in diffs.items():
        print(f"  variational - uniform, {what.replace('_', '-')}: {common.pm(d, 4)}")
    return {"draws": int(n), "arms": out, "variational_minus_uniform": diffs,
            "pictures": ["curves.png", "bounds.png"]}  # fmt: skip


if __name__ == "__main__":
    sys.exit(common.main(sys.modules[__name__]))
