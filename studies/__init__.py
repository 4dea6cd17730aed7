"""Reproductions of the Glow paper's (and Flow++'s) comparisons at CPU scale: one script per study.

See ``studies/README.md``; the shared machinery (arms, budget, parallel runner, tables, plots) is
:mod:`studies.common`.
"""
