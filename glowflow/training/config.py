"""The training configuration: one dataclass of plain values, named presets, and how they are layered.

Resolution order, later wins::

    TrainConfig defaults  <  preset  <  config file (JSON or TOML) / dict  <  explicit flags / keyword arguments

The preset defaults to the one the data set table names for the data (``digits``, ``mnist`` for MNIST and
Fashion-MNIST, ``cifar10``, ``imagenet32``, ``imagenet64``, ``toy`` for the 2-D toy densities, ``tabular``; an image
``folder`` or tar ``shards`` start from the ``digits`` preset's model; ``celeba64`` is the one for 64x64 face
folders). ``preset="none"`` keeps the bare
defaults. Unknown keys, wrong types and impossible values raise ``ValueError`` naming the key. Every choice list
(couplings, permutations, conditioners, dequantizers, data sets) is read from its registry.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import shlex
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from glowflow.checks import NON_NEGATIVE, POSITIVE, SEED, TEMPERATURE, IntRange, NumberRange, device_problem
from glowflow.data import DATASETS
from glowflow.data.image_files import FITS
from glowflow.data.memory import NAME as IN_MEMORY
from glowflow.data.sources import INPUT_MODES, ON_ERROR
from glowflow.layers.conditioners import conditioner_names
from glowflow.layers.coupling import COUPLINGS, MASKS, PRECISIONS
from glowflow.layers.dequantization import DEQUANTIZERS
from glowflow.layers.memory import MEMORY_MODES
from glowflow.layers.permutations import PERMUTATIONS
from glowflow.training.optim import LR_SCHEDULES

OPTIMIZERS = ("adam", "adamax")


def data_choices() -> tuple[str, ...]:
    return (*DATASETS.names(), IN_MEMORY)


def image_conditioners() -> tuple[str, ...]:
    return conditioner_names(image=True)


def choices_of(f: dataclasses.Field) -> tuple[str, ...] | None:
    """The allowed values of a config field: a fixed tuple, or read from its registry now (so that entries
    registered after import count)."""
    choices = f.metadata.get("choices")
    return tuple(choices()) if callable(choices) else choices


def _f(default: Any, help: str, group: str, **meta: Any) -> Any:
    """A dataclass field carrying its help text and CLI group (the CLI is generated from these)."""
    kwargs: dict[str, Any] = {"metadata": {"help": help, "group": group, **meta}}
    if isinstance(default, list):
        kwargs["default_factory"] = lambda: list(default)
    else:
        kwargs["default"] = default
    return field(**kwargs)


@dataclass
class TrainConfig:
    """Everything ``glowflow train`` needs, as plain data (``dataclasses.asdict`` gives ``RUN/config.json``).

    The defaults are the ``digits`` preset: the README's ``glowflow train``.
    """

    # ---- data ---------------------------------------------------------------------------------------------
    data: str = _f("digits", "data set: " + ", ".join(DATASETS) + f" ({IN_MEMORY!r}: arrays given to glowflow.train)",
                   "data", choices=data_choices)  # fmt: skip
    data_dir: str | None = _f(
        None,
        "where the data files are (default $GLOWFLOW_DATA or ~/.cache/glowflow); the image folder for 'folder', "
        "the .tar shard, folder or glob for 'shards', the folder of the .npz / .tar files for 'imagenet32' / "
        "'imagenet64', the .npy/.npz file for 'array', the .csv/.npy file or folder for 'tabular'",
        "data",
    )
    download: bool = _f(False, "download MNIST / Fashion-MNIST / CIFAR-10 if missing (verified by checksum)", "data")
    n_bits: int | None = _f(None, "model 8-bit images at this many bits per channel (e.g. 5)", "data")
    pad: int | None = _f(None, "zero-pad images to PAD x PAD first (e.g. 32 for MNIST with 3 levels)", "data")
    conditional: bool = _f(False, "class-conditional model on the data's labels (sample with --label)", "data")
    background_for: str | None = _f(
        None,
        "train the background model of the likelihood-ratio OOD score (Ren et al. 2019) for this RUN: its data and "
        "architecture, and --mutation-rate 0.2 unless given",
        "data",
    )
    mutation_rate: float = _f(
        0.0,
        "replace each dimension of every training batch by a uniform random level with this probability (images)",
        "data",
    )
    input: str = _f("auto", "the training and test splits: memory (loaded whole; on a GPU when under 2 GiB and "
                    "--workers is 0), stream (read batch by batch from the files), or auto (memory when the "
                    "training split takes at most a quarter of this machine's memory per process)", "data",
                    choices=INPUT_MODES)  # fmt: skip
    workers: int = _f(0, "processes that read and decode batches ahead of the training step (0: read them in the "
                      "training process)", "data")  # fmt: skip
    on_error: str = _f("raise", "an unreadable image in a folder, shards or ImageNet PNGs: raise (stop with an error "
                       "naming the file) or skip (replace it by the next readable one, warn and count it)", "data",
                       choices=ON_ERROR)  # fmt: skip
    image_size: int | None = _f(None, "image folders and tar shards: every image becomes SIZE x SIZE (default: "
                                "the first image's size), fitted as --fit says", "data")  # fmt: skip
    fit: str = _f("exact", "image folders and tar shards, an image of another size than --image-size: exact (an "
                  "error naming it), center-crop (the largest centred square, resized) or resize (the whole image)",
                  "data", choices=FITS)  # fmt: skip
    # ---- run ----------------------------------------------------------------------------------------------
    out: str | None = _f(None, "run directory (default runs/<data>-<YYYYmmdd-HHMMSS>)", "run")
    preset: str | None = _f(None, "the preset these values started from (recorded; chosen with --preset)", "run")
    seed: int = _f(0, "seed of the model initialisation, the batches and the noise", "run")
    device: str = _f("auto", "cpu, cuda, cuda:N or auto (cuda when available)", "run")
    threads: int | None = _f(None, "CPU threads of PyTorch's operators (none: PyTorch's default, one per core)", "run")
    # ---- model --------------------------------------------------------------------------------------------
    levels: int = _f(2, "L, the number of scales (image Glow)", "model")
    steps: int = _f(8, "K, steps of flow per level (per model for tabular / toy data)", "model")
    hidden: int = _f(64, "width of the coupling conditioners", "model")
    coupling: str = _f("affine", "coupling layer", "model", choices=COUPLINGS.names)
    permutation: str = _f("lu", "channel mixing: LU 1x1 conv, dense 1x1 conv, shuffle or reverse", "model",
                          choices=PERMUTATIONS.names)  # fmt: skip
    conditioner: str = _f("glow", "coupling conditioner of the image Glow", "model",
                          choices=image_conditioners)  # fmt: skip
    mask: str = _f("channel", "coupling mask of the image Glow", "model", choices=MASKS)
    dequantization: str = _f("uniform", "dequantization noise of the image Glow", "model",
                             choices=DEQUANTIZERS.names)  # fmt: skip
    precision: str = _f("auto", "conditioner precision in training and scoring: fp32, bf16 autocast, or auto (bf16 "
                        "for images where the device computes it natively, else fp32); encode / decode always run "
                        "the conditioners in fp32, so reconstructions stay exact", "model",
                        choices=("auto", *PRECISIONS))  # fmt: skip
    memory: str = _f("standard", "activation memory of the image Glow's steps in training", "model",
                     choices=MEMORY_MODES)  # fmt: skip
    compile: bool = _f(False, "torch.compile the model's forward", "model")
    # ---- optimisation -------------------------------------------------------------------------------------
    iters: int = _f(800, "optimiser steps to train to (counted from the start of the run)", "optimisation")
    batch_size: int = _f(64, "examples per step, over all processes", "optimisation")
    lr: float = _f(2e-3, "learning rate after warm-up", "optimisation")
    warmup: int = _f(100, "steps of linear learning-rate warm-up (0: none)", "optimisation")
    lr_schedule: str = _f("constant", "learning rate after warm-up: constant, or cosine (annealed along a half cosine "
                          "towards 0 at --iters)", "optimisation", choices=LR_SCHEDULES)  # fmt: skip
    optimizer: str = _f("adam", "optimiser", "optimisation", choices=OPTIMIZERS)
    grad_clip: float | None = _f(50.0, "clip the gradient norm to this (none: no clipping)", "optimisation")
    init_batch_size: int = _f(512, "examples in the dedicated first batch that initialises ActNorm", "optimisation")
    # ---- evaluation and outputs ---------------------------------------------------------------------------
    eval_every: int = _f(100, "evaluate on the test split every N steps (0: only at the start and the end)", "output")
    eval_samples: int = _f(4, "dequantization noise draws averaged per test image", "output")
    eval_size: int | None = _f(None, "evaluate on a fixed subset of this many test examples (none: all)", "output")
    eval_batch_size: int = _f(512, "examples per evaluation batch", "output")
    sample_every: int = _f(200, "write sample images every N steps (0: only at the end)", "output")
    sample_n: int = _f(64, "samples per temperature in the sample images", "output")
    temperatures: list[float] = _f([0.0, 0.5, 0.7, 0.8, 1.0], "sampling temperatures of the sample images", "output")
    checkpoint_every: int = _f(200, "write checkpoints/last.pt every N steps (0: only at the end)", "output")
    log_every: int = _f(10, "write a metrics.jsonl line every N steps", "output")
    tensorboard: bool = _f(False, "also log to RUN/tensorboard (needs the tensorboard package)", "output")
    progress: bool = _f(True, "show a progress bar", "output")
    # ---- fault guard --------------------------------------------------------------------------------------
    max_faults: int = _f(5, "consecutive non-finite steps that trigger a rollback to the last checkpoint", "faults")
    max_rollbacks: int = _f(3, "rollbacks after which training stops with an error", "faults")
    rollback_lr_factor: float = _f(0.5, "learning-rate multiplier applied at each rollback", "faults")

    # ---- helpers ------------------------------------------------------------------------------------------
    @property
    def kind(self) -> str | None:
        """``"image"``, ``"tabular"`` or ``"toy"`` (from the data set table); None for in-memory data, whose
        arrays decide."""
        return DATASETS.get(self.data).kind if self.data in DATASETS else None

    @property
    def is_image(self) -> bool | None:
        """Whether the data are images (None for in-memory data: the arrays decide)."""
        return None if self.kind is None else self.kind == "image"

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what ``RUN/config.json`` holds)."""
        return dataclasses.asdict(self)

    def validate(self) -> TrainConfig:
        """Check every value; raise ``ValueError`` naming the key. Returns self."""
        for f in fields(self):
            _check_type(f, getattr(self, f.name))
            choices = choices_of(f)
            if choices is not None and getattr(self, f.name) not in choices:
                raise ValueError(f"config key {f.name!r}: unknown value {getattr(self, f.name)!r}; expected one of "
                                 f"{', '.join(choices)}")  # fmt: skip
        for name, allowed in RANGES.items():
            problem = allowed.problem(getattr(self, name))
            if problem is not None:
                raise ValueError(f"config key {name!r} {problem}, got {getattr(self, name)}")
        spec = DATASETS.get(self.data) if self.data in DATASETS else None
        if spec is not None and not spec.decodes_images and (self.image_size is not None or self.fit != "exact"):
            key = "image_size" if self.image_size is not None else "fit"
            raise ValueError(f"config key {key!r} applies to image folders and tar shards; {self.data!r} images have "
                             "one size")  # fmt: skip
        if spec is not None and spec.open is None and self.on_error != "raise":
            raise ValueError(f"config key 'on_error' applies to data read from image files batch by batch (folder, "
                             f"shards, imagenet32 / 64); {self.data!r} is loaded whole and checked")  # fmt: skip
        if not self.temperatures or any(TEMPERATURE.problem(t) for t in self.temperatures):
            raise ValueError(f"config key 'temperatures' must be a non-empty list of numbers >= 0, "
                             f"got {self.temperatures}")  # fmt: skip
        if device_problem(self.device) is not None:
            raise ValueError(f"config key 'device' {device_problem(self.device)}, got {self.device!r}")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; presets: {', '.join(PRESETS)}")
        if self.is_image is False:
            image_only = {"n_bits": None, "pad": None, "memory": "standard", "dequantization": "uniform",
                          "mutation_rate": 0.0}  # fmt: skip
            for key, neutral in image_only.items():
                if getattr(self, key) != neutral:
                    raise ValueError(f"config key {key!r} applies to image data only; {self.data!r} is "
                                     f"{'a 2-D toy density' if self.kind == 'toy' else 'tabular'}")  # fmt: skip
        return self


def _check_type(f: dataclasses.Field, value: Any) -> None:
    t = str(f.type)
    optional = "None" in t
    if value is None:
        if not optional:
            raise ValueError(f"config key {f.name!r} must not be none")
        return
    base = t.split("|")[0].strip()
    ok = {
        "str": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "list[float]": isinstance(value, list)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value),
    }[base]
    if not ok:
        raise ValueError(f"config key {f.name!r} expects {_type_words(base)}, got {value!r}")


def _type_words(base: str) -> str:
    return {
        "str": "a string",
        "int": "an integer",
        "float": "a number",
        "bool": "true or false",
        "list[float]": "a list of numbers",
    }[base]


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(TrainConfig))

_AT_LEAST_1 = ("levels", "steps", "hidden", "iters", "batch_size", "init_batch_size", "eval_samples",
               "eval_batch_size", "sample_n", "log_every", "max_faults")  # fmt: skip
_AT_LEAST_0 = ("warmup", "eval_every", "sample_every", "checkpoint_every", "max_rollbacks", "workers")
RANGES: dict[str, IntRange | NumberRange] = {
    **{name: POSITIVE for name in _AT_LEAST_1},
    **{name: NON_NEGATIVE for name in _AT_LEAST_0},
    "seed": SEED,
    "n_bits": IntRange(1, 8, optional=True),
    "pad": IntRange(1, optional=True),
    "threads": IntRange(1, optional=True),
    "eval_size": IntRange(1, optional=True),
    "image_size": IntRange(1, optional=True),
    "lr": NumberRange(0, low_open=True),
    "grad_clip": NumberRange(0, low_open=True, optional=True),
    "rollback_lr_factor": NumberRange(0, 1, low_open=True),
    "mutation_rate": NumberRange(0, 1),
}
"""The allowed values of the numeric keys, checked by :meth:`TrainConfig.validate` and by ``glowflow train``'s
argument types."""

PRESETS: dict[str, dict[str, Any]] = {
    # The README's main command: the sklearn 8x8 digits (17 grey levels) in a few minutes on a 2-core CPU. The
    # 1,500 training images are few: past ~800 steps at lr 2e-3 the test bpd rises again (over-fitting), so the
    # run stops there. One thread: convolutions on 8x8 images gain little from more, and on a CPU shared with other
    # work OpenMP's waiting threads make every step several times slower.
    "digits": dict(data="digits", levels=2, steps=8, hidden=64, iters=800, batch_size=64, lr=2e-3, warmup=100,
                   eval_every=100, sample_every=200, checkpoint_every=200, eval_samples=4, threads=1),
    # Paper-style configurations (Kingma & Dhariwal 2018, and the openai/glow scripts), for a GPU.
    "mnist": dict(data="mnist", levels=2, steps=16, hidden=256, iters=50_000, batch_size=64, lr=1e-3,
                  warmup=2000, eval_every=2500, sample_every=2500, checkpoint_every=2500, eval_samples=4,
                  sample_n=64),
    "cifar10": dict(data="cifar10", levels=3, steps=32, hidden=512, iters=200_000, batch_size=64, lr=1e-3,
                    warmup=5000, eval_every=5000, sample_every=5000, checkpoint_every=5000, eval_samples=2,
                    sample_n=64),
    # Downsampled ImageNet as in the paper (openai/glow's commands: L=3 / 4, K=48, width 512, lr 1e-3, 8 bits);
    # evaluations on a fixed 10,000 of the 50,000 validation images (the final number: glowflow eval RUN).
    "imagenet32": dict(data="imagenet32", levels=3, steps=48, hidden=512, iters=200_000, batch_size=64, lr=1e-3,
                       warmup=5000, eval_every=5000, sample_every=5000, checkpoint_every=5000, eval_samples=1,
                       eval_size=10_000, sample_n=64),
    "imagenet64": dict(data="imagenet64", levels=4, steps=48, hidden=512, iters=200_000, batch_size=32, lr=1e-3,
                       warmup=5000, eval_every=5000, sample_every=5000, checkpoint_every=5000, eval_samples=1,
                       eval_size=10_000, sample_n=36),
    # 64x64 faces (e.g. CelebA at 64x64) from an image folder, 5 bits per channel as in the paper.
    "celeba64": dict(data="folder", levels=4, steps=32, hidden=512, n_bits=5, iters=200_000, batch_size=32,
                     lr=1e-3, warmup=5000, eval_every=5000, sample_every=5000, checkpoint_every=5000,
                     eval_samples=2, eval_size=2000, sample_n=36),
    # The 1-D TabularGlow.
    "toy": dict(data="moons", steps=8, hidden=64, iters=2000, batch_size=256, lr=2e-3, warmup=100,
                eval_every=250, sample_every=500, checkpoint_every=500, eval_samples=1, sample_n=2000,
                temperatures=[0.7, 1.0]),
    "tabular": dict(data="tabular", steps=10, hidden=128, iters=10_000, batch_size=256, lr=1e-3, warmup=200,
                    eval_every=500, sample_every=1000, checkpoint_every=1000, eval_samples=1, sample_n=2000,
                    temperatures=[0.7, 1.0]),
}  # fmt: skip

PRESET_NOTES: dict[str, str] = {
    "digits": "Glow L=2 K=8 width 64, 800 steps: the sklearn 8x8 digits on a CPU in a few minutes",
    "mnist": "Glow L=2 K=16 width 256, 50k steps (MNIST / Fashion-MNIST)",
    "cifar10": "Glow L=3 K=32 width 512, 200k steps (CIFAR-10)",
    "imagenet32": "Glow L=3 K=48 width 512, 200k steps (downsampled ImageNet 32x32)",
    "imagenet64": "Glow L=4 K=48 width 512, 200k steps (downsampled ImageNet 64x64)",
    "celeba64": "Glow L=4 K=32 width 512, 5-bit, 200k steps (a folder of 64x64 faces)",
    "toy": "TabularGlow K=8 width 64, 2000 steps (the 2-D toy densities)",
    "tabular": "TabularGlow K=10 width 128, 10k steps (a .csv/.npy table)",
}


def command_line(cfg: TrainConfig) -> str | None:
    """The ``glowflow train`` command that resolves to ``cfg`` (but for ``out``, where the run was written): ``--data``
    and ``--preset`` where they differ from what they default to, then every key whose value differs from what
    those give, as its flag. None for data given as arrays in memory, which no command line can pass."""
    if cfg.data == IN_MEMORY:
        return None
    named: dict[str, Any] = {}
    preset = cfg.preset or "none"
    if preset != default_preset(cfg.data):
        named["preset"] = preset
    implied_data = PRESETS[preset]["data"] if "preset" in named and preset in PRESETS else TrainConfig.data
    if cfg.data != implied_data:
        named["data"] = cfg.data
    base = resolve_config(None, **{"data": cfg.data, **named})
    flags = [_flag(name, value) for name, value in named.items()]
    for f in fields(TrainConfig):
        value = getattr(cfg, f.name)
        if f.name not in ("data", "preset", "out") and value != getattr(base, f.name):
            flags.append(_flag(f.name, value))
    return " ".join(["glowflow train", *flags])


def _flag(name: str, value: Any) -> str:
    """``name = value`` as ``glowflow train``'s flag: ``--name VALUE``, ``--name`` / ``--no-name`` for a bool,
    ``none`` for None, comma-separated numbers for a list."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else "--no-" + flag[2:]
    if value is None:
        return f"{flag} none"
    if isinstance(value, list):
        return f"{flag} {','.join(map(str, value))}"
    return f"{flag} {shlex.quote(str(value))}"


def default_preset(data: str, kind: str | None = None) -> str:
    """The preset used when none is named: the one the data set table names for ``data``; for in-memory data,
    ``digits`` for images and ``tabular`` for rows (``kind``)."""
    if data in DATASETS:
        return DATASETS.get(data).preset
    return "digits" if kind in (None, "image") else "tabular"


def preset_values(name: str) -> dict[str, Any]:
    """The values of preset ``name`` (``"none"``: nothing), less its data set: the ``toy`` preset serves every
    toy density, ``mnist`` Fashion-MNIST too, ``celeba64`` any folder of 64x64 images."""
    if name == "none":
        return {}
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}, none")
    values = dict(PRESETS[name])
    values.pop("data")
    return values


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON (``.json``) or TOML (``.toml``) config file into a dict (keys checked by :func:`check_keys`).

    In TOML, write none as the string ``"none"`` (TOML has no null). Raises ``ValueError`` for a file that cannot
    be parsed, ``FileNotFoundError`` for a missing one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"config file {path} is not valid JSON: {e}") from None
    elif suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            raise ValueError(f"config file {path}: TOML needs Python >= 3.11; use JSON") from None
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"config file {path} is not valid TOML: {e}") from None
    else:
        raise ValueError(f"config file {path}: expected a .json or .toml file")
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold one object of key: value pairs")
    check_keys(values, f"config file {path}")
    return {k: _none(v) for k, v in values.items()}


def _none(value: Any) -> Any:
    return None if isinstance(value, str) and value.lower() in ("none", "null") else value


def check_keys(values: dict[str, Any], where: str) -> None:
    """``ValueError`` for a key that is not a config field (with the closest names as a hint)."""
    for key in values:
        if key not in FIELD_NAMES:
            close = difflib.get_close_matches(str(key).replace("-", "_"), FIELD_NAMES, n=2)
            hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
            raise ValueError(f"{where}: unknown config key {key!r}{hint}")


# What ``background_for=RUN`` takes from RUN: its data and its architecture (the likelihood ratio compares two models
# of one architecture, Ren et al. 2019); the optimisation settings come from the preset and the flags as usual.
BACKGROUND_KEYS = ("data", "data_dir", "image_size", "fit", "n_bits", "pad", "conditional", "levels", "steps",
                   "hidden", "coupling", "permutation", "conditioner", "mask", "dequantization", "precision",
                   "memory")  # fmt: skip
BACKGROUND_MUTATION_RATE = 0.2


def background_values(run: str | os.PathLike) -> dict[str, Any]:
    """The configuration layer of a background model for ``run`` (a run directory or checkpoint): the
    :data:`BACKGROUND_KEYS` of its configuration (less the data for a run on in-memory arrays) and
    ``mutation_rate`` :data:`BACKGROUND_MUTATION_RATE`. Explicit keys override them."""
    from glowflow.training.checkpoint import find_checkpoint, load_checkpoint

    path = find_checkpoint(run)
    saved = load_checkpoint(path).get("config")
    if not isinstance(saved, dict) or saved.get("data") is None:
        raise ValueError(f"--background-for {run}: {path} holds no training configuration")
    values = {k: saved[k] for k in BACKGROUND_KEYS if k in saved}
    if values.get("data") == IN_MEMORY:
        del values["data"]
        values.pop("data_dir", None)
    if saved.get("background_for"):
        raise ValueError(f"--background-for {run}: that run is itself a background model (of "
                         f"{saved['background_for']}); name the in-distribution run")  # fmt: skip
    values["mutation_rate"] = BACKGROUND_MUTATION_RATE
    return values


def resolve_config(
    config: TrainConfig | dict[str, Any] | str | os.PathLike | None = None,
    *,
    data_kind: str | None = None,
    **overrides: Any,
) -> TrainConfig:
    """Layer defaults < preset < ``config`` (a dict, or the path of a JSON/TOML file) < ``overrides``.

    A ``TrainConfig`` passed as ``config`` is taken as already resolved: only ``overrides`` apply on top.
    The preset comes from ``overrides``, else ``config``, else :func:`default_preset` of the data (``data_kind``:
    what in-memory data holds, ``"image"`` or ``"tabular"``).
    """
    check_keys(overrides, "train()")
    if isinstance(config, TrainConfig):
        values = {**config.to_dict(), **overrides}
        return TrainConfig(**values).validate()
    if config is None:
        file_values: dict[str, Any] = {}
    elif isinstance(config, dict):
        check_keys(config, "config")
        file_values = dict(config)
    elif isinstance(config, (str, os.PathLike)):
        file_values = load_config_file(config)
    else:
        raise ValueError(f"config must be a TrainConfig, a dict or a file path, got {type(config).__name__}")
    background_for = overrides.get("background_for", file_values.get("background_for"))
    run_values = background_values(background_for) if background_for else {}
    named = overrides.get("preset", file_values.get("preset"))
    data = overrides.get("data", file_values.get("data", run_values.get("data")))
    if background_for and data is None:
        raise ValueError(f"--background-for {background_for}: that run was trained on arrays in memory; pass the "
                         "same arrays again (glowflow.train(data=..., background_for=...))")  # fmt: skip
    if data is None:  # a named preset brings its own data set: ``--preset mnist`` trains on MNIST
        data = PRESETS[named]["data"] if named in PRESETS else TrainConfig.data
    preset = named or default_preset(data, data_kind)
    values = {**preset_values(preset), **run_values, **file_values, **overrides}
    values["preset"] = None if preset == "none" else preset
    values["data"] = data
    return TrainConfig(**values).validate()
