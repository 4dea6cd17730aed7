"""Bad input to ``glowflow score / ood / encode / decode`` and the new training flags: exit code 2, one line on
stderr naming the problem, no traceback, and no file left behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glowflow.cli import main
from tests.helpers import one_thread
from tests.training.train_helpers import TINY_FLAGS


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    """Runs (digits, conditional digits, moons), latents of each, and bad files, outside the folder checked for
    leftovers."""
    with one_thread():  # module fixtures run before the autouse one-thread fixture
        return _env(tmp_path_factory.mktemp("bad_inputs"))


def _env(root: Path) -> dict[str, Path]:
    e = {"digits": root / "digits", "moons": root / "moons", "cond": root / "cond"}
    assert main(["train", "--out", str(e["digits"]), *TINY_FLAGS, "--iters", "2"]) == 0
    assert main(["train", "--out", str(e["cond"]), *TINY_FLAGS, "--iters", "2", "--conditional"]) == 0
    assert main(["train", "--data", "moons", "--out", str(e["moons"]), *TINY_FLAGS, "--iters", "2"]) == 0
    e["latents"] = root / "digits.npz"
    assert main(["encode", str(e["digits"]), "digits:test[:5]", "--out", str(e["latents"]), "--no-progress"]) == 0
    rng = np.random.default_rng(0)
    (root / "rgb").mkdir()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / "rgb" / "a.png")
    (root / "big").mkdir()
    Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(root / "big" / "a.png")
    (root / "broken").mkdir()
    (root / "broken" / "a.png").write_bytes(b"\x89PNG not really")
    np.save(root / "eight_bit.npy", np.full((3, 1, 8, 8), 200, dtype=np.uint8))
    np.save(root / "floats.npy", np.zeros((3, 1, 8, 8), dtype=np.float32))
    (root / "rows.csv").write_text("1,2\n3,4\n")
    (root / "not_latents.npz").write_bytes(b"PK not a zip")
    e["root"] = root
    return e


CASES = [
    # (id, arguments, a fragment of the error line); {digits} etc. are runs and files of ``env``, {out} the folder
    # checked for leftovers
    ("no input", "score {digits} {root}/nothing --out {out}/s.csv", "no such file or folder, and not a data set"),
    ("no split", "score {digits} digits --out {out}/s.csv", "say which split of the 'digits' data set"),
    ("rgb", "score {digits} {root}/rgb --out {out}/s.csv", "holds 3x8x8 (RGB): --grayscale converts them"),
    ("size", "score {digits} {root}/big --out {out}/s.csv",
     "the model takes 1x8x8 images; {root}/big holds 1x28x28: --resize scales them to 8x8, --pad zero-pads"),
    ("pad larger", "score {digits} {root}/big --pad --out {out}/s.csv", "which --pad cannot fit: use --resize"),
    ("resize and pad", "score {digits} {root}/big --pad --resize --out {out}/s.csv", "--resize and --pad are"),
    ("broken png", "score {digits} {root}/broken --out {out}/s.csv", "cannot read image {root}/broken/a.png"),
    ("levels", "score {digits} {root}/eight_bit.npy --out {out}/s.csv",
     "pixel levels reach 200, but arrays are read at 17 levels (0..16); give the array's levels with --levels"),
    ("float array", "score {digits} {root}/floats.npy --out {out}/s.csv", "integer levels 0..255 (uint8), got dtype"),
    ("csv to images", "score {digits} {root}/rows.csv --out {out}/s.csv", "which an image model cannot score"),
    ("not csv", "score {digits} digits:test --out {out}/s.txt", "the per-example table is a .csv file"),
    ("n-samples", "score {digits} digits:test --n-samples 0 --out {out}/s.csv",
     "argument --n-samples: expected a positive integer, got 0"),
    ("fpr", "score {digits} digits:test --reference digits:train --fpr 1.5 --out {out}/s.csv",
     "expected a number strictly between 0 and 1, got 1.5"),
    ("extremes rows", "score {moons} moons:test --extremes 3 --out {out}/s.csv", "--extremes draws images"),
    ("no run", "score {root}/norun digits:test --out {out}/s.csv", "no such run directory or checkpoint file"),
    ("label", "score {digits} digits:test --label 3 --out {out}/s.csv", "--label needs a class-conditional model"),
    ("cond unlabelled", "score {cond} {root}/eight_bit.npy --levels 256 --out {out}/s.csv",
     "is class-conditional and {root}/eight_bit.npy has no labels"),
    ("twice", "score {digits} digits:test digits:test --out {out}/s.csv", "the same input is given twice"),
    ("ood ratio", "ood {digits} --in digits:test --out {root}/eight_bit.npy --levels 256 --scores likelihood_ratio "
     "--save {out}/o", "'likelihood_ratio' (needs --background)"),
    ("ood score", "ood {digits} --in digits:test --out digits:train --scores bpd,magic --save {out}/o",
     "unknown or inapplicable score 'magic'"),
    ("ood fpr and percentile", "ood {digits} --in digits:test --out digits:train --fpr 0.1 --percentile 90",
     "argument --percentile: not allowed with argument --fpr"),
    ("ood detector", "ood {digits} --in digits:test --out digits:train[:100] --reference digits:train[100:] "
     "--detector typicality --save {out}/o", "--detector 'typicality' is not among the per-example scores"),
    ("ood same", "ood {digits} --in digits:test --out digits:test --save {out}/o", "must be different inputs"),
    ("ood background", "ood {digits} --in digits:test --out digits:train --background {moons} --save {out}/o",
     "the background model takes (2,) inputs, the model (1, 8, 8)"),
    ("ood no out", "ood {digits} --in digits:test", "the following arguments are required: --out"),
    ("encode out", "encode {digits} digits:test --out {out}/z.txt", "latents are written as an .npz archive"),
    ("encode size", "encode {digits} {root}/big --out {out}/z.npz", "--resize scales them to 8x8"),
    ("decode missing", "decode {digits} {root}/none.npz --out {out}/d", "latents file {root}/none.npz not found"),
    ("decode foreign", "decode {digits} {root}/not_latents.npz --out {out}/d", "as a glowflow latents archive"),
    ("decode model", "decode {moons} {latents} --out {out}/r.csv", "these latents come from a Glow, not a TabularGlow"),
    ("decode cond", "decode {cond} {latents} --out {out}/d", "class-conditional and needs classes"),
    ("decode jpg", "decode {digits} {latents} --out {out}/d.jpg", "images go to a folder or a .png grid"),
    ("decode rows", "decode {moons} {latents} --out {out}/rows", "rows go to a .csv or .npy file"),
    ("decode scale", "decode {digits} {latents} --scale nan --out {out}/d", "--scale must be a finite number"),
    ("mutation rate", "train --mutation-rate 1.5 --out {out}/t", "--mutation-rate: must lie in [0, 1], got '1.5'"),
    ("background missing", "train --background-for {root}/norun --out {out}/t", "no such run directory"),
    ("background rows", "train --background-for {moons} --out {out}/t", "'mutation_rate' applies to image data only"),
    ("array csv", "train --data array --data-dir {root}/rows.csv --out {out}/t", "reads a .npy or .npz file"),
]  # fmt: skip


@pytest.mark.parametrize("args, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(env, tmp_path: Path, capsys, args: str, fragment: str):
    values = {k: str(v) for k, v in env.items()} | {"out": str(tmp_path / "out")}
    argv = args.format(**values).split()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse usage errors
        code = e.code
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (code, out, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"glowflow {argv[0]}: error: "), lines[0]
    assert fragment.format(**values) in lines[0], lines[0]
    leftovers = [p for p in (tmp_path / "out").rglob("*") if p.is_file()] if (tmp_path / "out").exists() else []
    assert leftovers == [], leftovers
