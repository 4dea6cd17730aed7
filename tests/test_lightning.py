"""glowflow.lightning: a tiny Glow and a tiny TabularGlow trained a few steps with pl.Trainer on CPU, the sampling
callback, checkpoint reloading; and the core package does not import Lightning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),  # inside pytorch_lightning 2.6
    pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`"),
]

pl = pytest.importorskip("pytorch_lightning", reason="the 'lightning' extra: pip install 'glowflow[lightning]'")

from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from glowflow import Glow, TabularGlow  # noqa: E402
from glowflow.data import load_dataset  # noqa: E402
from glowflow.lightning import GlowflowModule, SampleCallback  # noqa: E402


def _trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, **kwargs)  # fmt: skip


def test_glow_module_trains_logs_and_samples(tmp_path: Path):
    train, test = load_dataset("digits"), load_dataset("digits", split="test")
    model = Glow((1, 8, 8), levels=2, steps=1, hidden=8, num_bins=17, num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    module = GlowflowModule(model, lr=2e-3, warmup=2)
    samples = SampleCallback(tmp_path / "samples", every_n_steps=3, temperatures=(0.0, 0.7), n=12)
    loader = DataLoader(TensorDataset(train.data, train.labels), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(test.data[:64], test.labels[:64]), batch_size=64)
    trainer = _trainer(max_steps=6, limit_val_batches=1, val_check_interval=6, callbacks=[samples])
    trainer.fit(module, loader, val)
    assert model.is_initialized  # ActNorm was initialised from the first batch
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    metrics = trainer.callback_metrics
    assert 1.0 < float(metrics["train_bpd"]) < 6.0 and 1.0 < float(metrics["val_bpd"]) < 6.0
    assert [p.name for p in samples.saved] == ["step_000003.png", "step_000006.png"]
    assert (tmp_path / "samples" / "samples.png").is_file()
    # a Lightning checkpoint rebuilds the module (and its model) from the saved hyper-parameters
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = GlowflowModule.load_from_checkpoint(tmp_path / "m.ckpt", weights_only=False)
    assert isinstance(loaded.model, Glow) and loaded.model.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v)


def test_tabular_module_with_init_batch(tmp_path: Path):
    data = load_dataset("moons").data
    model = TabularGlow(2, steps=2, hidden=16)
    module = GlowflowModule(model, lr=3e-3, optimizer="adamax", init_batch=data[:1000])
    samples = SampleCallback(tmp_path, temperatures=(1.0,), n=200)
    trainer = _trainer(max_steps=4, limit_val_batches=0, callbacks=[samples])
    trainer.fit(module, DataLoader(TensorDataset(data), batch_size=128))
    assert module.metric == "nll" and "train_nll" in trainer.callback_metrics
    assert samples.saved and (tmp_path / "samples.png").is_file()  # at the end of training
    assert module.sample(5).shape == (5, 2)


def test_module_rejects_bad_arguments():
    with pytest.raises(ValueError, match="pass a glowflow model"):
        GlowflowModule()
    with pytest.raises(ValueError, match="optimizer must be"):
        GlowflowModule(TabularGlow(2, steps=1, hidden=4), optimizer="sgd")
    with pytest.raises(ValueError, match="lr_schedule must be one of constant, cosine"):
        GlowflowModule(TabularGlow(2, steps=1, hidden=4), lr_schedule="linear")


def test_cosine_schedule_anneals_over_the_trainers_steps():
    """``lr_schedule="cosine"``: the rate of each step follows ``schedule_factor`` over ``max_steps``; a run of
    unknown length is refused."""
    from glowflow.training.optim import schedule_factor

    data = load_dataset("moons").data
    module = GlowflowModule(TabularGlow(2, steps=1, hidden=8), lr=1e-2, warmup=2, lr_schedule="cosine")
    rates = []

    class Rates(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    _trainer(max_steps=6, limit_val_batches=0, callbacks=[Rates()]).fit(module, DataLoader(TensorDataset(data), 64))
    assert rates == pytest.approx([1e-2 * schedule_factor(e, 2, "cosine", 6) for e in range(6)])
    assert rates[1] == pytest.approx(1e-2) and rates[-1] < 0.1 * 1e-2
    unbounded = _trainer(max_steps=-1, max_epochs=-1, limit_val_batches=0)
    with pytest.raises(ValueError, match="needs a run of known length"):
        unbounded.fit(GlowflowModule(TabularGlow(2, steps=1, hidden=8), lr_schedule="cosine"), DataLoader(data, 64))


def test_core_package_does_not_import_lightning():
    code = "import sys, glowflow, glowflow.training, glowflow.cli; print('pytorch_lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert out.strip() == "False"
