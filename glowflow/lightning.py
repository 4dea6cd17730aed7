"""PyTorch Lightning integration: a ``LightningModule`` around any glowflow model, and a sampling callback.

Install with ``pip install 'glowflow[lightning]'`` (``pytorch-lightning`` 2.6); the rest of glowflow never imports
this module::

    import pytorch_lightning as pl
    from glowflow import Glow
    from glowflow.lightning import GlowflowModule, SampleCallback

    module = GlowflowModule(Glow((1, 28, 28), levels=2, steps=16, hidden=256), lr=1e-3, warmup=2000)
    trainer = pl.Trainer(max_steps=50_000, gradient_clip_val=50.0,
                         callbacks=[SampleCallback("samples", every_n_steps=1000)])
    trainer.fit(module, train_loader, val_loader)     # batches: uint8 images (B, C, H, W), or (images, labels)

Batches are what the model's ``forward`` takes: discrete images (integer levels ``0..num_bins-1``) for
:class:`~glowflow.Glow`, float vectors for :class:`~glowflow.TabularGlow`; a ``(x, y)`` pair adds labels for a
class-conditional model. Logged: ``train_bpd`` / ``val_bpd`` for Glow (bits/dim), ``train_nll`` / ``val_nll``
(nats) for TabularGlow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

try:
    import pytorch_lightning as pl
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("glowflow.lightning needs PyTorch Lightning: pip install 'glowflow[lightning]'") from e

from glowflow import viz
from glowflow.layers.dequantization import to_uint8
from glowflow.models import MODELS, FlowModel, Glow, TabularGlow, build_model
from glowflow.training.optim import LR_SCHEDULES, make_optimizer, schedule_factor


def _unpack(batch: Any) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (list, tuple)) and 1 <= len(batch) <= 2:
        return batch[0], batch[1] if len(batch) == 2 else None
    raise ValueError("expected a batch of x, (x,) or (x, y)")


class GlowflowModule(pl.LightningModule):
    """Trains a glowflow model by maximum likelihood.

    Args:
        model: a :class:`~glowflow.Glow` or :class:`~glowflow.TabularGlow` (or pass ``model_class`` and
            ``model_config``, which is how :meth:`load_from_checkpoint` rebuilds it).
        lr: learning rate after the warm-up.
        warmup: optimiser steps of linear learning-rate warm-up (0: none).
        lr_schedule: the learning rate after warm-up, ``"constant"`` or ``"cosine"`` (annealed along a half cosine
            over the trainer's ``estimated_stepping_batches``; :data:`glowflow.training.optim.LR_SCHEDULES`).
        optimizer: ``"adam"`` or ``"adamax"``.
        val_samples: dequantization noise draws averaged per validation image (Glow).
        init_batch: optional data (``x`` or ``(x, y)``) for ActNorm's data-dependent initialisation, e.g. a
            larger batch than the training batches; by default the first training batch initialises it.

    ActNorm initialises, under ``torch.no_grad``, before the first training step (its statistics are all-reduced
    when Lightning runs several processes).
    """

    def __init__(
        self,
        model: FlowModel | None = None,
        lr: float = 1e-3,
        warmup: int = 0,
        optimizer: str = "adam",
        val_samples: int = 1,
        init_batch: Any = None,
        lr_schedule: str = "constant",
        *,
        model_class: str | None = None,
        model_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if model is None:
            if model_class not in MODELS or model_config is None:
                raise ValueError(f"pass a glowflow model, or model_class ({' / '.join(MODELS)}) and model_config")
            model = build_model(model_class, model_config)
        if not isinstance(model, (Glow, TabularGlow)):
            raise ValueError(f"expected a glowflow Glow or TabularGlow, got {type(model).__name__}")
        if optimizer not in ("adam", "adamax"):
            raise ValueError(f"optimizer must be 'adam' or 'adamax', got {optimizer!r}")
        if not lr > 0 or warmup < 0 or val_samples < 1:
            raise ValueError("lr must be > 0, warmup >= 0 and val_samples >= 1")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {lr_schedule!r}")
        self.model = model
        self.init_batch = init_batch
        self.save_hyperparameters(
            {
                "lr": lr,
                "warmup": warmup,
                "lr_schedule": lr_schedule,
                "optimizer": optimizer,
                "val_samples": val_samples,
                "model_class": type(model).__name__,
                "model_config": dict(model.config),
            }
        )

    @property
    def metric(self) -> str:
        """``"bpd"`` (Glow, bits/dim) or ``"nll"`` (TabularGlow, nats)."""
        return "bpd" if isinstance(self.model, Glow) else "nll"

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The model's per-example training objective."""
        return self.model(x, y)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if not self.model.is_initialized:
            x, y = _unpack(batch if self.init_batch is None else self.init_batch)
            with torch.no_grad():
                self.model(x.to(self.device), None if y is None else y.to(self.device))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = _unpack(batch)
        loss = self.model(x, y).mean()
        self.log(f"train_{self.metric}", loss, prog_bar=True, batch_size=len(x))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = _unpack(batch)
        if not self.model.is_initialized:  # validation before any training step (sanity check)
            with torch.no_grad():
                self.model(x, y)
        if isinstance(self.model, Glow):
            score = self.model.bits_per_dim(x, y, n_samples=self.hparams.val_samples).mean()
        else:
            score = -self.model.log_prob(x, y).mean()
        self.log(f"val_{self.metric}", score, prog_bar=True, sync_dist=True, batch_size=len(x))
        return score

    def configure_optimizers(self) -> dict[str, Any]:
        opt = make_optimizer(self.hparams.optimizer, self.model.parameters(), self.hparams.lr)
        warmup, schedule = self.hparams.warmup, self.hparams.get("lr_schedule", "constant")
        iters = None
        if schedule != "constant":
            total = self.trainer.estimated_stepping_batches
            if not math.isfinite(total):
                raise ValueError(f"lr_schedule={schedule!r} needs a run of known length: set max_steps or max_epochs")
            iters = int(total)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: schedule_factor(e, warmup, schedule, iters))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, y: Any = None, generator: Any = None) -> Tensor:
        return self.model.sample(n, temperature, y, generator)


class SampleCallback(pl.Callback):
    """Saves sample pictures into ``out_dir``: ``step_XXXXXX.png`` and ``samples.png`` (the latest).

    Every ``every_n_steps`` training steps, or (``every_n_steps=None``) after each validation epoch, and at the
    end of training. Image models: one grid per temperature (a class-conditional model cycles through its classes
    along each row); tabular models: a scatter of the first two coordinates. The same latents (``seed``) are
    decoded every time, so the pictures show one set of samples improving. Written by the global-zero process.
    """

    def __init__(
        self,
        out_dir: str | Path,
        every_n_steps: int | None = None,
        temperatures: Sequence[float] = (0.0, 0.5, 0.7, 1.0),
        n: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1 or None, got {every_n_steps}")
        self.out_dir = Path(out_dir)
        self.every_n_steps = every_n_steps
        self.temperatures = list(temperatures)
        self.n = n
        self.seed = seed
        self.saved: list[Path] = []
        self._last_step = -1

    @torch.no_grad()
    def picture(self, module: GlowflowModule) -> Any:
        model = module.model
        device = next(model.parameters()).device
        n = self.n
        labels = None
        if model.num_classes is not None:
            n = math.ceil(n / model.num_classes) * model.num_classes
            labels = (torch.arange(n) % model.num_classes).to(device)
        was_training = model.training
        model.eval()
        try:
            draws = []
            for t in self.temperatures:
                g = torch.Generator(device=device).manual_seed(self.seed)
                # validate=False: a sample that overflowed shows as it is in the picture instead of ending the run
                draws.append((t, model.sample(n, t, labels, generator=g, validate=False).float()))
        finally:
            model.train(was_training)
        if isinstance(model, Glow):
            shown = [(t, to_uint8(x, model.num_bins).cpu()) for t, x in draws]
            return viz.sample_sheet(shown, ncol=model.num_classes, caption=f"step {module.global_step}")
        panels = [(f"T={t:g}", viz.points_plot(x.cpu().numpy())) for t, x in draws]
        return viz.titled_panels(panels)

    def save(self, trainer: pl.Trainer, module: GlowflowModule) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or step == self._last_step or not module.model.is_initialized:
            return
        picture = self.picture(module)
        path = viz.save_png(picture, self.out_dir / f"step_{step:06d}.png")
        viz.save_png(picture, self.out_dir / "samples.png")
        self.saved.append(path)
        self._last_step = step

    def on_train_batch_end(self, trainer: pl.Trainer, module: GlowflowModule, *args: Any) -> None:
        if self.every_n_steps is not None and trainer.global_step % self.every_n_steps == 0:
            self.save(trainer, module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: GlowflowModule) -> None:
        if self.every_n_steps is None and not trainer.sanity_checking:
            self.save(trainer, module)

    def on_train_end(self, trainer: pl.Trainer, module: GlowflowModule) -> None:
        self.save(trainer, module)
