"""RandomState: a resumed run with dropout continues the random stream exactly."""

import pytorch_lightning as pl
import torch
from pytorch_lightning.demos.boring_classes import BoringModel

from callbacks import RandomState


class DropoutModel(BoringModel):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(32, 2))

    def train_dataloader(self):
        # like datamodules.sampling.make_loader: data and worker seeds independent of the global RNG
        data = torch.randn(64, 32, generator=torch.Generator().manual_seed(1))
        return torch.utils.data.DataLoader(data, batch_size=2, generator=torch.Generator().manual_seed(0))


def fit(tmp_path, max_epochs: int, ckpt_path=None, callbacks=()) -> DropoutModel:
    pl.seed_everything(0)
    model = DropoutModel()
    trainer = pl.Trainer(
        default_root_dir=tmp_path, max_epochs=max_epochs, limit_train_batches=4, limit_val_batches=0,
        callbacks=list(callbacks), logger=False, enable_progress_bar=False, enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, ckpt_path=ckpt_path)
    return model, trainer


def test_resume_with_dropout_matches_uninterrupted(tmp_path):
    straight, _ = fit(tmp_path / "a", max_epochs=4, callbacks=[RandomState()])
    _, first = fit(tmp_path / "b", max_epochs=2, callbacks=[RandomState()])
    ckpt = first.checkpoint_callback.best_model_path
    pl.seed_everything(123)  # a restarted process starts from a different random state
    resumed, _ = fit(tmp_path / "b", max_epochs=4, ckpt_path=ckpt, callbacks=[RandomState()])
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_without_random_state_dropout_diverges(tmp_path):
    """The control: the same resume without the callback does not reproduce the run."""
    straight, _ = fit(tmp_path / "a", max_epochs=4)
    _, first = fit(tmp_path / "b", max_epochs=2)
    pl.seed_everything(123)
    resumed, _ = fit(tmp_path / "b", max_epochs=4, ckpt_path=first.checkpoint_callback.best_model_path)
    assert not all(torch.equal(a, b) for a, b in zip(straight.parameters(), resumed.parameters()))
