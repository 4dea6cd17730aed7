"""Out-of-distribution (OOD) and anomaly detection with a trained model: :func:`detect_ood`, what ``glowflow ood``
runs.

Every score is oriented so that **higher means more anomalous** (for images, in bits per dimension):

- ``bpd`` (``nll`` in nats for rows): the raw negative log-likelihood, the baseline. Its known failure: simple
  inputs (constant images, smooth patches) get *higher* likelihoods than the training data (Nalisnick et al. 2019).
- ``complexity_png`` / ``complexity_zlib`` / ``complexity_lzma``: the input-complexity correction of Serrà et al.
  (2020), ``S(x) = bpd(x) - L(x)``, ``L`` the length of the model's discrete input compressed by a general-purpose
  compressor, in bits per dimension: a PNG file at compression level 9 (Pillow; its ~70 bytes of headers included),
  or the raw bytes by zlib at level 9 or by a raw LZMA2 stream (preset 9 extreme, 64 KiB dictionary).
- ``likelihood_ratio``: ``bpd(x) - bpd_0(x)`` = ``-(log p(x) - log p_0(x)) / (D ln 2)``, the likelihood ratio of
  Ren et al. (2019) against a background model ``p_0`` trained on inputs with a fraction of their dimensions replaced
  by uniform noise (``glowflow train --background-for RUN --mutation-rate 0.2``).
- ``last_level``: the last scale's share of the negative log-likelihood (bits/dim of the whole image,
  :meth:`glowflow.Glow.level_log_probs`), the score of Schirrmeister et al. (2020).
- ``typicality``: the typicality test of Nalisnick et al. (2019) on batches of ``M`` examples,
  ``|mean bpd of the batch - H|`` with ``H`` the mean bpd of the reference data; its threshold is the ``1 - fpr``
  quantile of the statistic over bootstrap batches drawn from the reference.

Metrics of each score for in-distribution (``in``) against each OOD set: AUROC (OOD as the positive class), AUPR
(average precision, OOD positive) and FPR at 95 % TPR (the fraction of OOD examples accepted when 95 % of the
in-distribution examples are: in-distribution as the positive class, as in Liang et al. 2018). Thresholds: the
``1 - fpr`` quantile of each score on held-out in-distribution ``reference`` data; an example above it
``is_outlier`` (the alibi-detect convention).
"""

from __future__ import annotations

import io
import lzma
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from glowflow.scoring.inputs import InputSet
from glowflow.scoring.model import load_scorer
from glowflow.scoring.score import Scores, as_input_sets, score

TPR_LEVEL = 0.95


# ---- compressed length -----------------------------------------------------------------------------------------
def _png_bytes(image: np.ndarray) -> int:
    from PIL import Image

    c = image.shape[0]
    picture = Image.fromarray(image[0] if c == 1 else image.transpose(1, 2, 0))
    buf = io.BytesIO()
    picture.save(buf, format="PNG", compress_level=9)
    return buf.tell()


# A raw LZMA2 stream (no container header) with a 64 KiB dictionary: images are small, and preset 9's 64 MiB
# dictionary made every call ~170x slower (77 ms against 0.45 ms for a 28x28 image) for no shorter output.
_LZMA2 = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": 1 << 16}]

COMPRESSORS: dict[str, Callable[[np.ndarray], int]] = {
    "png": _png_bytes,
    "zlib": lambda image: len(zlib.compress(image.tobytes(), 9)),
    "lzma": lambda image: len(lzma.compress(image.tobytes(), format=lzma.FORMAT_RAW, filters=_LZMA2)),
}


def compressed_bits_per_dim(images: Tensor, compressor: str = "png") -> np.ndarray:
    """``L(x)``: bits of each discrete image ``(N, C, H, W)`` (uint8 levels; PNG needs C = 1 or 3) compressed by
    ``compressor`` (``png``, ``zlib`` or ``lzma``), divided by its ``C H W`` dimensions; shape (N,)."""
    if compressor not in COMPRESSORS:
        raise ValueError(f"unknown compressor {compressor!r}; expected one of {', '.join(COMPRESSORS)}")
    if images.dtype != torch.uint8:
        raise ValueError(f"compressed lengths take 8-bit levels, got {images.dtype} images")
    a = images.cpu().numpy()
    size = COMPRESSORS[compressor]
    dims = a[0].size
    return np.array([8.0 * size(np.ascontiguousarray(im)) / dims for im in a])


# ---- metrics -------------------------------------------------------------------------------------------------
def _finite(values: np.ndarray) -> np.ndarray:
    """Non-finite scores (a model that overflowed on an input) as the most anomalous value."""
    v = np.asarray(values, dtype=np.float64)
    big = np.finfo(np.float64).max / 4
    return np.where(np.isfinite(v), v, big)


def roc_metrics(in_scores: np.ndarray, out_scores: np.ndarray) -> dict[str, float]:
    """AUROC, AUPR (OOD positive) and FPR at 95 % TPR (in-distribution positive) of anomaly scores (higher: more
    anomalous) of in-distribution and OOD examples."""
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    s = np.concatenate([_finite(in_scores), _finite(out_scores)])
    is_out = np.concatenate([np.zeros(len(in_scores)), np.ones(len(out_scores))])
    fpr, tpr, _ = roc_curve(1 - is_out, -s)  # in-distribution positive, accepted below the threshold
    return {
        "auroc": float(roc_auc_score(is_out, s)),
        "aupr": min(1.0, float(average_precision_score(is_out, s))),  # its sum can round to 1 + 2e-16
        "fpr95": float(fpr[np.searchsorted(tpr, TPR_LEVEL, side="left")]),
    }


def roc_points(in_scores: np.ndarray, out_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve with OOD as the positive class: (false positive rate, true positive rate)."""
    from sklearn.metrics import roc_curve

    s = np.concatenate([_finite(in_scores), _finite(out_scores)])
    is_out = np.concatenate([np.zeros(len(in_scores)), np.ones(len(out_scores))])
    fpr, tpr, _ = roc_curve(is_out, s)
    return fpr, tpr


def threshold_of(reference: np.ndarray, fpr: float) -> float:
    """The ``1 - fpr`` quantile of the reference scores: above it, an example is an outlier."""
    return float(np.quantile(_finite(reference), 1.0 - fpr))


# ---- typicality ----------------------------------------------------------------------------------------------
def typicality_statistic(values: np.ndarray, m: int, entropy: float, rng: np.random.Generator) -> np.ndarray:
    """``|mean of each batch - entropy|`` over the ``len(values) // m`` batches of a random partition of ``values``
    into batches of ``m`` (the remainder is left out)."""
    n = len(values) // m
    if n == 0:
        raise ValueError(f"the typicality test needs at least M = {m} examples per set, got {len(values)}")
    batches = _finite(values)[rng.permutation(len(values))[: n * m]].reshape(n, m)
    return np.abs(batches.mean(1) - entropy)


def bootstrap_threshold(reference: np.ndarray, m: int, entropy: float, fpr: float, draws: int, seed: int) -> float:
    """The ``1 - fpr`` quantile of the typicality statistic over ``draws`` batches of ``m`` drawn with replacement
    from the reference scores."""
    rng = np.random.default_rng(seed)
    batches = _finite(reference)[rng.integers(0, len(reference), (draws, m))]
    return float(np.quantile(np.abs(batches.mean(1) - entropy), 1.0 - fpr))


# ---- the report ----------------------------------------------------------------------------------------------
SCORE_NOTES = {
    "bpd": "raw negative log-likelihood, bits/dim (the baseline)",
    "nll": "raw negative log-likelihood, nats (the baseline)",
    "complexity_png": "bpd - PNG length in bits/dim (Serra et al. 2020)",
    "complexity_zlib": "bpd - zlib length in bits/dim (Serra et al. 2020)",
    "complexity_lzma": "bpd - lzma length in bits/dim (Serra et al. 2020)",
    "likelihood_ratio": "bpd - bpd of the background model (Ren et al. 2019)",
    "last_level": "the last scale's bits/dim (Schirrmeister et al. 2020)",
    "typicality": "|batch mean bpd - reference mean|, batches of M (Nalisnick et al. 2019)",
}


@dataclass(eq=False)
class OODReport:
    """What :func:`detect_ood` found.

    ``metrics[score][ood_set]`` = ``{"auroc", "aupr", "fpr95", "detected"}`` (``detected``: the fraction of the OOD
    set above the threshold); ``thresholds[score]``; ``in_false_alarms[score]``: the fraction of the in-distribution
    set above it. ``values[score]``: per-example scores of every example of ``scores`` (typicality: per batch, in
    ``typicality``). ``scores``: the main model's :class:`Scores` of reference, in and OOD sets.
    """

    score_names: list[str]
    in_set: str
    reference_set: str
    out_sets: list[str]
    fpr: float
    metrics: dict[str, dict[str, dict[str, float]]]
    thresholds: dict[str, float]
    in_false_alarms: dict[str, float]
    values: dict[str, np.ndarray]
    scores: Scores
    detector: str = ""
    typicality: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def per_example_scores(self) -> list[str]:
        return [s for s in self.score_names if s != "typicality"]

    def is_outlier(self, name: str | None = None) -> np.ndarray:
        """Per example of :attr:`scores`: above the threshold of the per-example score ``name`` (default: the
        :attr:`detector`)."""
        name = name or self.detector
        if name not in self.values:
            raise ValueError(f"no per-example score {name!r}; scores: {', '.join(self.per_example_scores())}")
        return _finite(self.values[name]) > self.thresholds[name]

    def table(self, metric: str = "auroc") -> list[list[str]]:
        """Rows ``score, value per OOD set`` of ``metric`` (``auroc``, ``aupr``, ``fpr95``, ``detected``), header
        first."""
        rows = [["score", *self.out_sets]]
        for name in self.score_names:
            rows.append([name, *(f"{self.metrics[name][s][metric]:.3f}" for s in self.out_sets)])
        return rows

    def markdown(self) -> str:
        """The AUROC, AUPR and FPR95 tables in markdown."""
        parts = []
        for metric, title in (("auroc", "AUROC"), ("aupr", "AUPR (OOD positive)"), ("fpr95", "FPR at 95% TPR")):
            rows = self.table(metric)
            lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
            lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
            parts.append(f"{title} (in-distribution: {self.in_set}; higher AUROC / AUPR and lower FPR95 are "
                         f"better)\n\n" + "\n".join(lines))  # fmt: skip
        return "\n\n".join(parts) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON): settings, per score its note, threshold, false alarms and metrics per OOD set."""
        return {
            "in": self.in_set,
            "reference": self.reference_set,
            "out": self.out_sets,
            "fpr": self.fpr,
            "scores": {
                name: {
                    "note": SCORE_NOTES.get(name, ""),
                    "threshold": self.thresholds[name],
                    "in_false_alarms": self.in_false_alarms[name],
                    "metrics": self.metrics[name],
                }
                for name in self.score_names
            },
            "typicality": self.typicality,
            "detector": self.detector,
            **self.metadata,
        }


def available_scores(is_image: bool, levels: int, background: bool) -> list[str]:
    """The scores that apply: every image score for an image Glow (``last_level`` with two levels or more,
    ``likelihood_ratio`` with a background model), ``nll`` and ``typicality`` (and the ratio) for rows."""
    names = ["bpd", "complexity_png", "complexity_zlib", "complexity_lzma"] if is_image else ["nll"]
    if background:
        names.append("likelihood_ratio")
    if is_image and levels > 1:
        names.append("last_level")
    return [*names, "typicality"]


def default_scores(is_image: bool, levels: int, background: bool) -> list[str]:
    """What :func:`detect_ood` computes unless told: every available score but the zlib / lzma variants."""
    return [s for s in available_scores(is_image, levels, background) if s not in ("complexity_zlib",
                                                                                 "complexity_lzma")]  # fmt: skip


def detect_ood(
    model_or_run: Any,
    in_data: Any,
    out_data: Sequence[Any] | dict[str, Any],
    *,
    reference: Any = None,
    background: Any = None,
    scores: Sequence[str] | None = None,
    detector: str | None = None,
    typicality_m: int = 10,
    bootstraps: int = 1000,
    fpr: float = 0.05,
    n_samples: int = 1,
    batch_size: int = 256,
    seed: int = 0,
    device: str | None = None,
    resize: bool = False,
    pad: bool = False,
    grayscale: bool = False,
    levels: int | None = None,
    data_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> OODReport:
    """Score in-distribution data ``in_data`` and each OOD set of ``out_data`` (INPUT specs, arrays or
    :class:`InputSet`\\ s, as for :func:`~glowflow.scoring.score`; a dict names them) with the OOD ``scores`` (default
    :func:`default_scores`; see the module docstring) and compare them.

    ``reference``: held-out in-distribution data for the thresholds and the typicality test (default: a fixed random
    half of ``in_data``, the other half being the in-distribution set compared; not the training data, which a
    model scores better than new data of the same kind); ``background``: the background model of the
    likelihood ratio (a run, checkpoint or model); ``fpr``: the false-alarm rate the thresholds allow on the
    reference; ``detector``: the per-example score of :meth:`OODReport.is_outlier` (default: the first). The other
    arguments are :func:`~glowflow.scoring.score`'s.
    """
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must lie strictly between 0 and 1, got {fpr}")
    if typicality_m < 1 or bootstraps < 1:
        raise ValueError(f"typicality M and the bootstrap draws must be >= 1, got {typicality_m} and {bootstraps}")
    if not out_data:
        raise ValueError("no OOD data given")
    scorer = load_scorer(model_or_run, device)
    model = scorer.model
    n_levels = len(model.latent_shapes)
    bg = None if background is None else load_scorer(background, device)
    if bg is not None and (bg.model.is_image != model.is_image or bg.model.data_shape != model.data_shape):
        raise ValueError(f"the background model takes {bg.model.data_shape} inputs, the model {model.data_shape}")
    names = list(scores) if scores else default_scores(model.is_image, n_levels, bg is not None)
    allowed = available_scores(model.is_image, n_levels, bg is not None)
    for name in names:
        if name not in allowed:
            why = " (needs --background)" if name == "likelihood_ratio" else ""
            raise ValueError(f"unknown or inapplicable score {name!r}{why}; for this model: {', '.join(allowed)}")
    per_example = [n for n in names if n != "typicality"]
    if detector is None and not per_example:
        raise ValueError("the typicality test decides per batch; add a per-example score for is_outlier")
    detector = detector or per_example[0]
    if detector not in per_example:
        raise ValueError(f"--detector {detector!r} is not among the per-example scores computed: "
                         f"{', '.join(per_example)}")  # fmt: skip
    in_set = as_input_sets(in_data, None, scorer, levels, data_dir)[0]
    if reference is None:
        ref_set, in_set = split_in_half(in_set, seed)
    else:
        ref_set = as_input_sets(reference, None, scorer, levels, data_dir)[0]
    if isinstance(out_data, dict):  # named OOD sets
        out_sets = [replace(as_input_sets(v, None, scorer, levels, data_dir)[0], name=str(k))
                    for k, v in out_data.items()]  # fmt: skip
    else:
        out_sets = as_input_sets(list(out_data), None, scorer, levels, data_dir)
    sets = [ref_set, in_set, *out_sets]
    if len({s.name for s in sets}) != len(sets):
        raise ValueError("the reference, in-distribution and OOD sets must be different inputs")
    common = dict(n_samples=n_samples, batch_size=batch_size, seed=seed, resize=resize, pad=pad,
                  grayscale=grayscale, progress=progress)  # fmt: skip
    main = score(model, sets, **common)
    values = _per_example(main, names, bg, sets, common)
    roles = {"reference": ref_set.name, "in": in_set.name}
    metadata = {"model": scorer.about, "background": None if bg is None else bg.about, "typicality_m": typicality_m,
                "bootstraps": bootstraps, **_settings(main)}  # fmt: skip
    return _report(main, values, names, detector, roles, [s.name for s in out_sets], fpr, typicality_m, bootstraps,
                   seed, metadata)  # fmt: skip


def _settings(main: Scores) -> dict[str, Any]:
    keep = ("device", "batch_size", "n_samples", "seed", "fit", "seconds", "examples_per_s", "inputs")
    return {k: main.metadata[k] for k in keep if k in main.metadata}


def split_in_half(inputs: InputSet, seed: int) -> tuple[InputSet, InputSet]:
    """A fixed random half of ``inputs`` as the reference (named ``NAME [reference half]``) and the rest."""
    if len(inputs) < 4:
        raise ValueError(f"{inputs.name} holds {len(inputs)} examples: too few to split into a reference and a test "
                         "half; give --reference")  # fmt: skip
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(inputs)))
    half = len(inputs) // 2
    ref = replace(inputs.subset(perm[:half].sort().values), name=f"{inputs.name} [reference half]")
    return ref, inputs.subset(perm[half:].sort().values)


def _per_example(
    main: Scores, names: list[str], bg: Any, sets: list[InputSet], common: dict[str, Any]
) -> dict[str, np.ndarray]:
    values: dict[str, np.ndarray] = {}
    for name in names:
        if name in ("bpd", "nll"):
            values[name] = main.values
        elif name.startswith("complexity_"):
            values[name] = main.bpd - compressed_bits_per_dim(main.inputs, name.split("_", 1)[1])
        elif name == "likelihood_ratio":
            values[name] = main.bpd - score(bg.model, sets, **common).bpd
        elif name == "last_level":
            values[name] = main.level_bpd[:, -1]
    return values


def _report(
    main: Scores,
    values: dict[str, np.ndarray],
    names: list[str],
    detector: str,
    roles: dict[str, str],
    out_names: list[str],
    fpr: float,
    m: int,
    bootstraps: int,
    seed: int,
    metadata: dict[str, Any],
) -> OODReport:
    index = {name: main.set_index == main.set_names.index(name) for name in main.set_names}
    ref, inn = index[roles["reference"]], index[roles["in"]]
    metrics: dict[str, dict[str, dict[str, float]]] = {}
    thresholds, false_alarms, curves = {}, {}, {}
    typicality: dict[str, Any] = {}
    for name in names:
        metrics[name], curves[name] = {}, {}
        if name == "typicality":
            base = main.values
            entropy = float(np.mean(base[ref]))
            thr = bootstrap_threshold(base[ref], m, entropy, fpr, bootstraps, seed)
            rng = np.random.default_rng(seed)
            stat_in = typicality_statistic(base[inn], m, entropy, rng)
            typicality = {"m": m, "entropy": entropy, "threshold": thr, "in_batches": len(stat_in)}
            for out in out_names:
                stat_out = typicality_statistic(base[index[out]], m, entropy, rng)
                metrics[name][out] = {**roc_metrics(stat_in, stat_out), "detected": float(np.mean(stat_out > thr))}
                curves[name][out] = roc_points(stat_in, stat_out)
                typicality.setdefault("out_batches", {})[out] = len(stat_out)
            thresholds[name], false_alarms[name] = thr, float(np.mean(stat_in > thr))
            continue
        v = values[name]
        thr = threshold_of(v[ref], fpr)
        thresholds[name], false_alarms[name] = thr, float(np.mean(_finite(v[inn]) > thr))
        for out in out_names:
            vo = v[index[out]]
            metrics[name][out] = {**roc_metrics(v[inn], vo), "detected": float(np.mean(_finite(vo) > thr))}
            curves[name][out] = roc_points(v[inn], vo)
    return OODReport(names, roles["in"], roles["reference"], out_names, fpr, metrics, thresholds, false_alarms,
                     values, main, detector, typicality, curves, metadata)  # fmt: skip
