"""``python -m glowflow`` runs the ``glowflow`` command (so ``torchrun -m glowflow train ...`` works)."""

from glowflow.cli import main

raise SystemExit(main())
