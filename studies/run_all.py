"""Run all six studies: every arm of every study in one parallel queue (shared arms trained once, longest first),
then each study's tables and pictures.

    python studies/run_all.py                      # the full set: about 3.5 hours on a 2-core CPU (--jobs 2)
    python studies/run_all.py --only temperature,latent_manipulation
    python studies/run_all.py --quick --data digits --out-root /tmp/studies   # seconds: checks every code path

Order of the reports: permutation_coupling, temperature, dequantization, conditioner, depth_levels,
latent_manipulation (the base model of the first is reused by the next three and the last). Interrupted runs
resume: run the same command again. Outputs go to OUT_ROOT/<study>/ and the arms to OUT_ROOT/arms/.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studies import (  # noqa: E402
    common,
    conditioner,
    depth_levels,
    dequantization,
    latent_manipulation,
    permutation_coupling,
    temperature,
)

STUDIES = (permutation_coupling, temperature, dequantization, conditioner, depth_levels, latent_manipulation)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python studies/run_all.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    common.add_common_arguments(p, None)
    p.add_argument("--seeds", type=common.parse_seeds, default=None,
                   help="seeds for every study (default: each study's own)")  # fmt: skip
    p.add_argument("--out-root", default=str(common.RESULTS_DIR), help="default studies/results")
    p.add_argument("--only", default=None, help="comma-separated study names (default: all six)")
    p.add_argument("--estimate", action="store_true", help="print the plan and the time estimate, run nothing")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    names = [s.NAME for s in STUDIES]
    chosen = STUDIES
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        unknown = [w for w in wanted if w not in names]
        if unknown:
            print(f"--only: unknown study {', '.join(unknown)}; studies: {', '.join(names)}")
            return 2
        chosen = tuple(s for s in STUDIES if s.NAME in wanted)
    root = Path(args.out_root)
    data = common.resolve_data(args.data, args.data_dir)
    print(f"data: {data.note}")
    shared = [a for a in argv if a not in ("--estimate",)]
    shared = _strip(shared, ("--only", "--out-root"))
    contexts = []
    for study in chosen:
        study_argv = _strip(shared, ("--seeds",) if args.seeds is None else ())
        sargs = common.build_parser(study).parse_args(study_argv)
        ctx = common.make_context(study, sargs, study_argv, data=data, out=root / study.NAME, arms_dir=root / "arms")
        ctx.command = f"python studies/run_all.py {' '.join(argv)}".strip()
        contexts.append((study, ctx))
    plan, per_study = [], {}
    for study, ctx in contexts:
        per_study[study.NAME] = study.arms(ctx)
        plan += per_study[study.NAME]
        print(f"{study.NAME}: {len(per_study[study.NAME])} arms")
    estimate = common.estimate_seconds(plan, root / "arms", args.jobs)
    print(f"estimated time for the arms still to run: {estimate / 3600:.1f} h with --jobs {args.jobs} "
          "(calibrated on a quiet 2-core machine; see studies/README.md)")  # fmt: skip
    if args.estimate:
        return 0
    t0 = time.perf_counter()
    ctx0 = contexts[0][1]
    try:
        results = common.run_arms(plan, root / "arms", args.jobs, ctx0.threads)
    except common.Interrupted as e:
        print(e)
        return 130
    status = 0
    for study, ctx in contexts:
        missing = [a.slug for a in per_study[study.NAME] if a.key not in results]
        if missing:
            print(f"{study.NAME}: not reported, {len(missing)} arm(s) failed ({', '.join(missing)})")
            status = 1
            continue
        common.finish(ctx, study, results, time.perf_counter() - t0)
    print(f"\nall done in {(time.perf_counter() - t0) / 60:.1f} min; tables and pictures in {root}/<study>/")
    for study, ctx in contexts:
        if (ctx.out / "results.json").is_file():
            print(f"  {study.NAME}: {ctx.out / 'table.md'}")
    return status


def _strip(argv: Sequence[str], options: Sequence[str]) -> list[str]:
    """``argv`` without the given options and their values (``--opt value`` or ``--opt=value``)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in options:
            skip = "=" not in a
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    sys.exit(main())
