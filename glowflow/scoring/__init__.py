"""Using a trained model on new data: per-example scores, out-of-distribution detection, encode / decode."""

from glowflow.scoring.inputs import InputSet, read_input
from glowflow.scoring.score import Scores, score

__all__ = ["InputSet", "Scores", "read_input", "score"]
