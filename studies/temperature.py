"""Temperature: samples of one trained Glow at T = 0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0 (the Glow paper's figure).

Sampling at temperature T draws every latent from N(0, T^2). One row per temperature, and the same latent noise in
every row (each column is one standard-normal draw, scaled by T), so a column shows one sample cooling down. The
model is the study's base arm (L=2, K=8, width 64, 1x1 conv, affine coupling): the permutation x coupling study's
1x1 conv / affine seed-0 run, reused when it is there, trained otherwise. Also reported: the model's test bits/dim,
and how the model scores its own samples at each temperature (bits/dim of the quantized samples).

    python studies/temperature.py
    python studies/temperature.py --seeds 1 --columns 16
    python studies/temperature.py --quick --data digits

Writes OUT/results.json, OUT/table.md and OUT/temperature_grid.png.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studies import common  # noqa: E402

NAME = "temperature"
TITLE = "Temperature: samples at T = 0 ... 1"
DEFAULT_SEEDS = (0,)  # the model of the first seed is shown
TEMPERATURES = (0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
SAMPLE_SEED = 2018  # the latent noise of the grid (shared by all rows)


def add_arguments(p: Any) -> None:
    p.add_argument("--columns", type=int, default=12, help="samples per temperature (default 12)")


def arms(ctx: common.Context) -> list[common.Arm]:
    return [ctx.arm(ctx.seeds[0])]


def report(ctx: common.Context, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    import torch

    from glowflow.layers.dequantization import uint8_to_levels
    from glowflow.training import draw_samples, load_model

    arm = arms(ctx)[0]
    res = results[arm.key]
    model, ckpt, path = load_model(ctx.arms_dir / arm.slug, "cpu", prefer="last")
    columns = max(1, getattr(ctx.args, "columns", 12))
    rows, own = [], []
    for t in TEMPERATURES:
        images = draw_samples(model, columns, t, seed=SAMPLE_SEED)  # same seed: same noise, scaled by t
        rows.append(images)
        with torch.no_grad():  # the model's own score of its (quantized) samples
            k = uint8_to_levels(images, model.num_bins)
            own.append(float(model.bits_per_dim(k, n_samples=ctx.base["eval_samples"]).mean()))
    labels = [f"T={t:g}" for t in TEMPERATURES]
    title = (f"Glow L={res['config']['levels']} K={res['config']['steps']} width {res['config']['hidden']}, "
             f"{res['steps']} steps, test {res['test_bpd']:.3f} bits/dim")  # fmt: skip
    common.viz.save_png(common.labelled_rows(rows, labels, title=title), ctx.out / "temperature_grid.png")

    body = common.markdown_table(
        ["model", "parameters", "steps", "test bpd", "wall"],
        [[f"{res['arm']} ({path.name})", f"{res['parameters']:,}", res["steps"], f"{res['test_bpd']:.4f}",
          common.compact_time(res["wall_s"])]],
    )  # fmt: skip
    body += "\n" + common.markdown_table(
        ["T", *labels], [["bpd of the samples under the model", *(f"{v:.3f}" for v in own)]]
    )
    common.write_table(ctx, TITLE, body, notes=[
        f"temperature_grid.png: one row per T, {columns} samples per row, the same latent noise in every row "
        f"(seed {SAMPLE_SEED}).",
        "bpd of the samples: the samples quantized to the data's grey levels and scored by the model with "
        f"{ctx.base['eval_samples']} dequantization draws; lower T gives samples the model finds more likely.",
    ])  # fmt: skip
    print(f"\n{TITLE}: model {res['arm']}, test bpd {res['test_bpd']:.4f}")
    print("  bpd of its own samples: " + ", ".join(f"T={t:g}: {v:.3f}" for t, v in zip(TEMPERATURES, own, strict=True)))
    print(f"  picture: {ctx.out / 'temperature_grid.png'}")
    return {
        "model": {"arm": res["arm"], "checkpoint": str(path), "parameters": res["parameters"], "steps": res["steps"],
                  "test_bpd": res["test_bpd"], "wall_s": res["wall_s"]},
        "temperatures": list(TEMPERATURES),
        "sample_bpd": dict(zip(labels, own, strict=True)),
        "columns": columns,
        "sample_seed": SAMPLE_SEED,
        "pictures": ["temperature_grid.png"],
    }  # fmt: skip


if __name__ == "__main__":
    sys.exit(common.main(sys.modules[__name__]))
