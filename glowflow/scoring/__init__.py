"""Using a trained model on new data: per-example scores (:func:`score`, also ``glowflow.score``),
out-of-distribution detection (:func:`detect_ood`) and exact encode / decode (:func:`encode`, :func:`decode`).

    scores = glowflow.score("runs/mnist", ["mnist:test", "my_digits/"])
    scores.bpd, scores.level_bpd, scores.summary()
    report = glowflow.scoring.detect_ood("runs/mnist", "mnist:test", ["noise.npy"], background="runs/mnist-bg")
    latents = glowflow.scoring.encode("runs/mnist", "mnist:test[:10]")
    images = glowflow.scoring.decode("runs/mnist", latents)          # the same pixel levels
"""

from glowflow.scoring.codec import Latents, decode, encode, load_latents, save_latents
from glowflow.scoring.inputs import InputSet, read_input
from glowflow.scoring.ood import OODReport, detect_ood
from glowflow.scoring.score import Scores, score

__all__ = [
    "InputSet",
    "Latents",
    "OODReport",
    "Scores",
    "decode",
    "detect_ood",
    "encode",
    "load_latents",
    "read_input",
    "save_latents",
    "score",
]
