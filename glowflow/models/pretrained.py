"""Pretrained-model directories: how a trained model is shared, on disk or on the Hugging Face Hub.

A pretrained-model directory (or Hub repository) holds three files::

    config.json        {"format": "glowflow-pretrained", "version": 1, "glowflow_version": "0.1.0",
                        "model_class": "Glow" | "TabularGlow",
                        "model_config": the constructor arguments, model.config,
                        "data": the data's units as the caller gave them (name, num_bins, n_bits, pad,
                                class_names, the mean/std of a tabular standardisation, ...) or null,
                        "training": the training configuration or null,
                        "metrics": measured figures such as {"test_bpd": 1.05} or null}
    model.safetensors  the model's state_dict: parameters and buffers, ActNorm's ``initialized`` flags among
                       them. safetensors is a JSON header and raw tensor bytes: loading it runs no code.
    README.md          a model card: Hugging Face YAML front matter, then the model, data, measured figures,
                       training command, files and how to load it.

and may hold more that loading ignores (``glowflow export`` adds ``check.json`` + ``check.safetensors``, a fixed
subset of test inputs and their score, and ONNX / ``torch.export`` graphs), which the card lists.

Loading rebuilds ``MODELS.get(model_class)(**model_config)`` (JSON has no tuples: its lists become tuples)
and loads the weights with every name, shape and dtype checked, so save -> load gives bitwise-identical
parameters, buffers and log-densities. Anything else (a missing or unreadable file, another format, a missing,
unknown or wrong field, a truncated or foreign safetensors file) is one :class:`~glowflow.errors.CheckpointError`
naming the file.

Sources (:func:`resolve_pretrained`): a local directory; a shipped model ``glowflow/<name>`` (the directories of
``glowflow/weights/`` in the installed package: :func:`shipped_models`), read offline; a Hugging Face Hub id.
Only ``safetensors`` is needed for local directories and shipped models; Hub ids and :func:`push_to_hub` need
``huggingface_hub`` (the ``hub`` extra), imported when first used.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import safetensors
import safetensors.torch
import torch
from torch import Tensor

from glowflow.errors import CheckpointError
from glowflow.io import atomic_write_bytes
from glowflow.models.registry import MODELS
from glowflow.version import __version__

if TYPE_CHECKING:
    from glowflow.models.base import FlowModel

FORMAT = "glowflow-pretrained"
VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
REQUIRED_FIELDS = ("format", "version", "model_class", "model_config")
OPTIONAL_FIELDS = ("glowflow_version", "data", "training", "metrics")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
SHIPPED_PREFIX = "glowflow/"  # the namespace of the shipped models: never looked up on the Hub
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"  # glowflow/weights/<name>/, package data


@dataclass(frozen=True)
class ModelCard:
    """What the model card README.md says beyond config.json.

    ``command``: the command line that trained the model; ``description``: a paragraph of free text;
    ``title``: the heading (default: the class and the data's name); ``license``: the weights' license id for
    the front matter (omitted if None); ``repo_id``: the Hub id (or shipped name) used in the card's loading
    example (default: the directory's name; :func:`push_to_hub` sets it); ``files``: ``(name, what it holds)`` of
    the files beside the three of every directory, listed under them.
    """

    command: str | None = None
    description: str | None = None
    title: str | None = None
    license: str | None = None
    repo_id: str | None = None
    files: tuple[tuple[str, str], ...] = ()


# ---- saving ------------------------------------------------------------------------------------------------
def save_pretrained(
    model: FlowModel,
    directory: str | os.PathLike,
    *,
    data: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    card: ModelCard | None = None,
) -> Path:
    """Write ``model`` as a pretrained-model directory (see the module docstring) and return its path.

    ``data``, ``training`` and ``metrics`` go into config.json as given (tensors and numpy arrays become lists)
    and into the card. Each file is written atomically, config.json last: an interrupted save over an earlier
    one leaves the earlier config.json, which loading checks against the weights beside it.
    """
    class_name = type(model).__name__
    if class_name not in MODELS or MODELS.get(class_name) is not type(model):
        raise ValueError(f"expected a glowflow model ({', '.join(MODELS)}), got {class_name}")
    for name, section in (("data", data), ("training", training), ("metrics", metrics)):
        if section is not None and not isinstance(section, dict):
            raise ValueError(f"{name} must be a dict or None, got {type(section).__name__}")
    config = {
        "format": FORMAT,
        "version": VERSION,
        "glowflow_version": __version__,
        "model_class": class_name,
        "model_config": _to_json(model.config, "model.config"),
        "data": _to_json(data, "data"),
        "training": _to_json(training, "training"),
        "metrics": _to_json(metrics, "metrics"),
    }
    config_text = json.dumps(config, indent=2, allow_nan=False) + "\n"
    tensors = {name: t.detach().cpu().contiguous() for name, t in _unique_state(model).items()}
    weights = safetensors.torch.save(tensors, metadata={"format": "pt", "glowflow": FORMAT})
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory} is a file, not a directory to save a pretrained model in")
    card_text = render_card(config, _parameter_count(model), card or ModelCard(), directory.name)
    atomic_write_bytes(directory / WEIGHTS_FILE, lambda f: f.write(weights))
    atomic_write_bytes(directory / CARD_FILE, lambda f: f.write(card_text.encode("utf-8")))
    atomic_write_bytes(directory / CONFIG_FILE, lambda f: f.write(config_text.encode("utf-8")))
    return directory


def _to_json(value: Any, where: str) -> Any:
    """``value`` as JSON types: tensors and numpy arrays become (nested) lists, tuples lists, paths strings."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{where} is {value}: config.json holds finite numbers only")
        return value
    if isinstance(value, (Tensor, np.ndarray, np.generic)):
        return _to_json(value.tolist(), where)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise ValueError(f"{where} has a key that is not a string: config.json keys are strings")
        return {k: _to_json(v, f"{where}.{k}") for k, v in value.items()}
    raise ValueError(f"{where} is a {type(value).__name__}, which config.json cannot hold")


def _unique_state(model: FlowModel) -> dict[str, Tensor]:
    """The state_dict with every tensor once, under its first name. A module reachable by two attribute names
    (Glow's ``levels`` is also its ``bijection``) appears twice in ``state_dict``; safetensors stores it once."""
    seen: set[int] = set()
    unique = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            unique[name] = tensor
    return unique


def _parameter_count(model: FlowModel) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- the model card ----------------------------------------------------------------------------------------
def render_card(config: dict[str, Any], parameters: int, card: ModelCard, default_source: str) -> str:
    """The README.md of a pretrained-model directory with this config.json content."""
    class_name = config["model_class"]
    data = config.get("data") or {}
    metrics = config.get("metrics") or {}
    title = card.title or (f"{class_name} on {data['name']}" if data.get("name") else class_name)
    source = card.repo_id or default_source
    front = ["---", "library_name: glowflow"]
    if card.license:
        front.append(f"license: {json.dumps(card.license)}")
    front += ["tags:", "- glowflow", "- normalizing-flow", "- glow", "---"]
    arguments = ", ".join(f"{k}={_python_literal(v)}" for k, v in config["model_config"].items())
    rows = [
        ("Model", f"`{class_name}({arguments})`"),
        ("Parameters", f"{parameters:,}"),
        ("Data", _describe_mapping(data) if data else "not recorded"),
    ]
    rows += [(_metric_label(k), _format_number(v)) for k, v in metrics.items()] or [("Measured", "not recorded")]
    lines = [*front, "", f"# {title}", ""]
    if card.description:
        lines += [card.description, ""]
    lines += [f"A {class_name} normalizing flow trained with glowflow.", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in rows]
    lines += ["", "## Training", ""]
    if card.command:
        lines += ["```", card.command, "```"]
    elif config.get("training"):
        lines += ["The training configuration is in `config.json` (`training`)."]
    else:
        lines += ["Not recorded."]
    lines += [
        "",
        "## Files",
        "",
        "- `config.json`: the model's class and constructor arguments, the data's units, the training "
        "configuration and the measured figures.",
        "- `model.safetensors`: the weights and buffers (safetensors: raw tensors; loading runs no code).",
        "- `README.md`: this card.",
        *[f"- `{name}`: {what}" for name, what in card.files],
        "",
        "## Loading",
        "",
        "```python",
        "import glowflow",
        f"from glowflow import {class_name}",
        "",
        f"model = glowflow.load({json.dumps(source)})  # or:",
        f"model = {class_name}.from_pretrained({json.dumps(source)})  # a local directory or a Hugging Face Hub id",
        *_usage(class_name, config["model_config"]),
        "```",
        "",
    ]
    return "\n".join(lines)


def _usage(class_name: str, arguments: dict[str, Any]) -> list[str]:
    label = ", y=labels" if arguments.get("num_classes") is not None else ""
    if class_name == "Glow":
        score = f"bpd = model.bits_per_dim(k{label})  # k: (B, C, H, W) integer levels in [0, num_bins)"
    else:
        score = f"log_p = model.log_prob(x{label})  # x: (B, dim)"
    return [score, f"samples = model.sample(16, temperature=0.7{', y=0' if label else ''})"]


def _python_literal(value: Any) -> str:
    return repr(tuple(value)) if isinstance(value, list) else repr(value)


def _describe_mapping(mapping: dict[str, Any]) -> str:
    parts = []
    for key, value in mapping.items():
        if isinstance(value, list) and len(value) > 10:
            parts.append(f"{key}: {len(value)} values (in config.json)")
        else:
            parts.append(f"{key}: {value}")
    return "; ".join(parts)


METRIC_LABELS = {
    "test_bpd": "Test bits/dim",
    "test_nll": "Test NLL (nats)",
    "evaluated_on": "Evaluated on",
    "step": "Steps trained",
    "wall_time_s": "Training wall time (s)",
    "check_bpd": "Bits/dim of the check subset (check.json)",
    "check_nll": "NLL of the check subset (nats, check.json)",
}


def _metric_label(key: str) -> str:
    return METRIC_LABELS.get(key, key)


def _format_number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# ---- loading -----------------------------------------------------------------------------------------------
def is_pretrained_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory with a config.json (what :func:`load_pretrained_dir` reads)."""
    return (Path(path) / CONFIG_FILE).is_file()


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The validated config.json of a pretrained-model directory (``model_config`` lists made tuples)."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not path.is_file():
        if not directory.exists():
            raise CheckpointError(f"{directory}: no such pretrained-model directory")
        what = "a file, not a directory" if directory.is_file() else f"no {CONFIG_FILE} in it"
        raise CheckpointError(f"{directory}: not a glowflow pretrained-model directory ({what})")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not a text file (not UTF-8), so not a glowflow config.json") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found a JSON {type(config).__name__}")
    if config.get("format") != FORMAT:
        found = f"format {config['format']!r}" if "format" in config else "no format field"
        raise CheckpointError(f"{path}: not a glowflow pretrained model ({found}; expected format {FORMAT!r})")
    version = config.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= VERSION:
        raise CheckpointError(
            f"{path}: format version {version!r} is not one this glowflow reads (1..{VERSION}); a newer version "
            "needs a newer glowflow"
        )
    missing = [k for k in REQUIRED_FIELDS if k not in config]
    if missing:
        raise CheckpointError(f"{path}: missing field(s) {', '.join(missing)}")
    unknown = sorted(set(config) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise CheckpointError(f"{path}: unknown field(s) {', '.join(unknown)}")
    if config["model_class"] not in MODELS:
        raise CheckpointError(
            f"{path}: unknown model_class {config['model_class']!r}; expected one of {', '.join(MODELS)}"
        )
    for key in ("model_config", "data", "training", "metrics"):
        if not isinstance(config.get(key), dict) and (key == "model_config" or config.get(key) is not None):
            raise CheckpointError(f"{path}: field {key} must be a JSON object, got {config[key]!r}")
    config["model_config"] = _check_arguments(path, MODELS.get(config["model_class"]), config["model_config"])
    return config


def _check_arguments(path: Path, cls: type[FlowModel], arguments: dict[str, Any]) -> dict[str, Any]:
    """Every constructor argument of ``cls`` present and no other; lists made tuples."""
    parameters = inspect.signature(cls).parameters
    unknown = sorted(set(arguments) - set(parameters))
    if unknown:
        raise CheckpointError(f"{path}: model_config has argument(s) {cls.__name__} does not take: {unknown}")
    missing = [name for name in parameters if name not in arguments]
    if missing:
        raise CheckpointError(f"{path}: model_config lacks {cls.__name__} argument(s) {missing}")
    return {k: _to_tuples(v) for k, v in arguments.items()}


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value


def read_weights(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a safetensors file (on the CPU), with a ``CheckpointError`` for a missing, truncated or
    corrupt one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    try:
        return safetensors.torch.load_file(path, device="cpu")
    except safetensors.SafetensorError as e:
        raise CheckpointError(f"{path}: truncated or not a safetensors file ({_first_line(e)})") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e})") from None


def load_pretrained_dir(
    directory: str | os.PathLike, device: str | torch.device = "cpu", model_class: type[FlowModel] | None = None
) -> tuple[FlowModel, dict[str, Any]]:
    """Rebuild the model of a pretrained-model directory. Returns ``(model, config)``: the model in eval mode on
    ``device``, with the weights' float dtype; ``config`` the validated config.json (its data, training and
    metrics sections). ``model_class``: require this class (or a subclass)."""
    directory = Path(directory)
    config = read_config(directory)
    config_path = directory / CONFIG_FILE
    cls = MODELS.get(config["model_class"])
    if model_class is not None and not issubclass(cls, model_class):
        raise CheckpointError(f"{config_path}: holds a {cls.__name__}, not a {model_class.__name__}")
    try:
        model = cls(**config["model_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{config_path}: model_config does not build a {cls.__name__}: {e}") from None
    weights_path = directory / WEIGHTS_FILE
    _load_weights(model, read_weights(weights_path), weights_path)
    return model.to(device).eval(), config


def _load_weights(model: FlowModel, saved: dict[str, Tensor], path: Path) -> None:
    expected = _unique_state(model)
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: not the weights of the {type(model).__name__} that {CONFIG_FILE} describes: "
            f"{_some(missing)} missing, {_some(unexpected)} unexpected"
        )
    for name, tensor in expected.items():
        found = saved[name]
        if found.shape != tensor.shape:
            raise CheckpointError(
                f"{path}: {name} has shape {tuple(found.shape)}, the model expects {tuple(tensor.shape)}"
            )
        if found.is_floating_point() != tensor.is_floating_point() or (
            not found.is_floating_point() and found.dtype != tensor.dtype
        ):
            raise CheckpointError(f"{path}: {name} is {found.dtype}, the model expects {tensor.dtype}")
    float_dtypes = {t.dtype for t in saved.values() if t.is_floating_point()}
    if len(float_dtypes) == 1:
        model.to(float_dtypes.pop())  # keep the saved precision (float64 weights stay float64), bit for bit
    # state_dict names every alias of a shared tensor; the file holds each once, under its first name.
    canonical = {id(t): name for name, t in reversed(list(model.state_dict(keep_vars=True).items()))}
    state = {name: saved[canonical[id(t)]] for name, t in model.state_dict(keep_vars=True).items()}
    model.load_state_dict(state)


def _some(names: list[str]) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:3])
    return f"{len(names)} ({shown}{', ...' if len(names) > 3 else ''})"


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


# ---- sources: local directories and Hub ids ---------------------------------------------------------------
def shipped_models() -> tuple[str, ...]:
    """The names of the models shipped in the package (load them as ``glowflow/<name>``), sorted."""
    if not WEIGHTS_DIR.is_dir():
        return ()
    return tuple(sorted(p.name for p in WEIGHTS_DIR.iterdir() if (p / CONFIG_FILE).is_file()))


def shipped_path(name: str) -> Path:
    """The directory of the shipped model ``name`` (``"digits"`` or ``"glowflow/digits"``)."""
    short = name.removeprefix(SHIPPED_PREFIX)
    if short not in shipped_models():
        names = ", ".join(SHIPPED_PREFIX + n for n in shipped_models()) or "none"
        raise CheckpointError(f"no shipped model {SHIPPED_PREFIX + short!r}; the shipped models are {names}")
    return WEIGHTS_DIR / short


def is_hub_id(source: str) -> bool:
    """Whether ``source`` has the form of a Hugging Face Hub model id, ``owner/name``."""
    return _HUB_ID.fullmatch(source) is not None and ".." not in source


def resolve_pretrained(
    source: str | os.PathLike,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> Path:
    """The local directory of ``source``: the directory itself if it exists; else for ``glowflow/<name>`` the
    shipped model's directory (:func:`shipped_path`); else (for an ``owner/name`` id whose ``owner`` is not a local
    directory either, so that a mistyped ``runs/name`` stays a local path) the Hugging Face Hub snapshot of its
    config.json and model.safetensors, downloaded or from the cache. ``CheckpointError`` when none gives one."""
    path = Path(source)
    if not path.exists() and isinstance(source, str) and source.startswith(SHIPPED_PREFIX):
        return shipped_path(source)
    if path.exists() or not isinstance(source, str) or not is_hub_id(source) or path.parent.is_dir():
        return path
    hub = _import_hub(f"{source!r} is not a local directory; as a Hugging Face Hub id it")
    try:
        config = hub.hf_hub_download(
            source, CONFIG_FILE, revision=revision, token=token, local_files_only=local_files_only
        )
        hub.hf_hub_download(source, WEIGHTS_FILE, revision=revision, token=token, local_files_only=local_files_only)
    except Exception as e:  # every failure of the download (offline, not found, denied) is one clear line
        raise CheckpointError(
            f"{source!r} is not a local directory, and fetching it from the Hugging Face Hub failed: "
            f"{type(e).__name__}: {_first_line(e)}"
        ) from None
    return Path(config).parent


def from_pretrained(
    source: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    model_class: type[FlowModel] | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> FlowModel:
    """Load a pretrained model from a local directory, a shipped model name (``glowflow/digits``) or a Hugging Face
    Hub id (``owner/name``; needs the ``hub`` extra). ``model_class`` requires that class; ``revision``, ``token``
    and ``local_files_only`` go to the Hub download. The model is in eval mode on ``device``."""
    directory = resolve_pretrained(source, revision=revision, token=token, local_files_only=local_files_only)
    return load_pretrained_dir(directory, device, model_class)[0]


def push_to_hub(
    model: FlowModel,
    repo_id: str,
    *,
    data: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    card: ModelCard | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    commit_message: str = "Upload glowflow model",
) -> str:
    """Save ``model`` as a pretrained-model directory (see :func:`save_pretrained`) and upload it to the Hugging
    Face Hub model repository ``repo_id``, creating it if needed. Returns the commit's URL. Needs the ``hub``
    extra and a Hub token (``token``, or a login)."""
    hub = _import_hub("pushing to the Hugging Face Hub")
    with tempfile.TemporaryDirectory(prefix="glowflow-push-") as folder:
        card = replace(card or ModelCard(), repo_id=repo_id)
        save_pretrained(model, folder, data=data, training=training, metrics=metrics, card=card)
        api = hub.HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)
    return str(commit.commit_url)


def _import_hub(what: str):
    try:
        import huggingface_hub
    except ImportError:
        raise ImportError(f"{what} needs huggingface_hub: pip install 'glowflow[hub]'") from None
    return huggingface_hub
