"""Deprecated home of :mod:`glowflow.runs` (until glowflow 0.2): ``open_run``, ``evaluate_run``, ``sample_run`` ...
live there now; this alias keeps old imports working for one release."""

import warnings

from glowflow.runs import *  # noqa: F403
from glowflow.runs import __all__  # noqa: F401

warnings.warn("glowflow.training.tools moved to glowflow.runs", DeprecationWarning, stacklevel=2)
