"""``speechxfer adapt``: any checkpoint, support from files or a corpus filter; k = 0 returns it unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import soundfile as sf
import torch
import yaml

from datamodules.episodic import EpisodicDataModule
from datamodules import LibriSpeechCorpus
from experiments.adapt import main
from lightning_modules import CTCModule, MetaCTC, load_model
from tests.conftest import QUIET, TinyDataModule, char_tokenizer, make_tiny_backbone, texts
from tests.corpus_factory import make_librispeech, tone_speech


def checkpoint(tmp_path: Path, module_class=CTCModule, **kwargs) -> Path:
    """A checkpoint written by a Trainer (optimizer state included): a CTCModule after one training step."""
    data = TinyDataModule(char_tokenizer(), n_train=4)
    module = module_class(make_tiny_backbone(0), data.tokenizer.to_dict(), dropout=0.0, **kwargs)
    trainer = pl.Trainer(**QUIET, max_steps=0 if module_class is MetaCTC else 1, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    path = tmp_path / f"{module_class.__name__}.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture
def support(tmp_path) -> Path:
    """Three clips with <stem>.txt transcripts, and a TSV listing the same clips."""
    folder = tmp_path / "support"
    folder.mkdir()
    rows = []
    for i, text in enumerate(texts(3, seed=4)):
        sf.write(folder / f"clip{i}.flac", tone_speech(text, seed=i), 16000)
        (folder / f"clip{i}.txt").write_text(text.upper() + "\n")
        rows.append(f"clip{i}.flac\t{text}")
    (folder / "list.tsv").write_text("\n".join(rows) + "\n")
    return folder


def state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.parametrize("flags", [["--shots", "0"], ["--steps", "0", "--lr", "0.1"]], ids=["k0", "steps0"])
def test_no_shots_or_no_steps_return_the_checkpoint_unchanged(tmp_path, support, flags, capsys):
    ckpt = checkpoint(tmp_path)
    out = tmp_path / "adapted.ckpt"
    assert main(["--ckpt", str(ckpt), "--support", str(support), "--out", str(out), *flags]) == 0
    assert out.read_bytes() == ckpt.read_bytes()
    assert "unchanged copy" in capsys.readouterr().out


def test_adapts_the_chosen_groups_on_files_and_writes_a_loadable_model(tmp_path, support, one_thread):
    ckpt = checkpoint(tmp_path)
    out = tmp_path / "adapted.ckpt"
    assert main(["--ckpt", str(ckpt), "--support", str(support / "list.tsv"), "--steps", "5", "--lr", "0.05",
                 "--out", str(out)]) == 0
    before, after = state(ckpt), state(out)
    assert set(before) == set(after)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("head.") for k in changed)
    saved = torch.load(out, weights_only=True)
    record = saved["speechxfer"]["adaptation"]
    assert record["steps"] == 5 and record["groups"] == ["head"] and len(record["support"]) == 3
    assert record["support_loss"][1] < record["support_loss"][0]
    assert "optimizer_states" not in saved and "optimizer_states" in torch.load(ckpt, weights_only=True)
    model = load_model(out)
    assert type(model) is CTCModule and torch.equal(model.head.proj.weight, after["head.proj.weight"])
    # the same clips through their <stem>.txt transcripts adapt identically
    out2 = tmp_path / "adapted2.ckpt"
    main(["--ckpt", str(ckpt), "--support", str(support), "--steps", "5", "--lr", "0.05", "--out", str(out2)])
    assert all(torch.equal(state(out2)[k], after[k]) for k in changed)


def test_a_plain_checkpoint_needs_a_recipe_a_meta_checkpoint_has_one(tmp_path, support):
    with pytest.raises(ValueError, match="has no adaptation recipe of its own"):
        main(["--ckpt", str(checkpoint(tmp_path)), "--support", str(support), "--out", str(tmp_path / "x.ckpt")])
    meta = checkpoint(tmp_path, MetaCTC, inner_steps=2, inner_lr=0.05, inner_groups=["top:1"])
    out = tmp_path / "meta_adapted.ckpt"
    assert main(["--ckpt", str(meta), "--support", str(support), "--out", str(out)]) == 0
    record = torch.load(out, weights_only=True)["speechxfer"]["adaptation"]
    assert (record["steps"], record["lr"], record["groups"]) == (2, 0.05, ["top:1"])
    assert type(load_model(out)) is MetaCTC


def test_support_from_a_corpus_filter(tmp_path, one_thread):
    root = make_librispeech(tmp_path / "corpus", {"train-clean-100": 12}, speakers=2)
    corpus = {"class_path": "datamodules.LibriSpeechCorpus", "init_args": {"root": str(root), "subsets": ["train-clean-100"]}}
    (tmp_path / "corpus.yaml").write_text(yaml.safe_dump(corpus))
    episodic = {"class_path": "datamodules.EpisodicDataModule",
                "init_args": {"corpora": [corpus], "meta_val": 0, "meta_test": 1, "shots": 1, "queries": 1,
                              "eval_queries": 2, "tasks_per_step": 1, "num_workers": 0,
                              "cache_dir": str(tmp_path / "cache")}}
    (tmp_path / "episodic.yaml").write_text(yaml.safe_dump(episodic))
    ckpt = checkpoint(tmp_path)
    out = tmp_path / "spk.ckpt"
    args = ["--ckpt", str(ckpt), "--shots", "3", "--steps", "2", "--lr", "0.05", "--out", str(out)]
    with pytest.raises(ValueError, match="ambiguous"):
        main([*args, "--data", str(tmp_path / "corpus.yaml"), "--task", "10"])  # prefix of speakers 100 and 101
    assert main([*args, "--data", str(tmp_path / "corpus.yaml"), "--task", "100"]) == 0
    record = torch.load(out, weights_only=True)["speechxfer"]["adaptation"]
    assert record["task"] == "100" and len(record["support"]) == 3
    assert all(i.startswith("100-") for i in record["support"])
    assert main([*args, "--data", str(tmp_path / "episodic.yaml"), "--task", "101"]) == 0
    dm = EpisodicDataModule([LibriSpeechCorpus(root, ["train-clean-100"])], eval_queries=2, meta_val=0, meta_test=1,
                            shots=1, queries=1, tasks_per_step=1, num_workers=0,
                            cache_dir=str(tmp_path / "cache"))
    plan = dm.task_episode("101", 3)  # the few-shot test's support: never its query
    assert torch.load(out, weights_only=True)["speechxfer"]["adaptation"]["support"] == list(plan.support)
