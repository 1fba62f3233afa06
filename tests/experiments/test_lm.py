"""``speechxfer lm``: LM + lexicon from text files or a datamodule's training transcripts, offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from datamodules.lexicon import read_lexicon
from datamodules.ngram import read_arpa
from datamodules.text import TextNormalizer
from experiments.cli import main
from experiments.lm import load_datamodule
from lightning_modules.decoding import BeamSearchDecoder, DecoderConfig
from tests.cli_helpers import add_librispeech_utterance
from tests.conftest import char_tokenizer
from tests.corpus_factory import WORDS, make_librispeech


def data_config(tmp_path: Path) -> Path:
    root = make_librispeech(tmp_path / "corpus", {"train-clean-100": 6, "dev-clean": 2})
    add_librispeech_utterance(root, "train-clean-100", " ".join(WORDS))
    corpus = {"class_path": "datamodules.LibriSpeechCorpus", "init_args": {"root": str(root)}}
    config = {"class_path": "datamodules.ASRDataModule", "init_args": {
        "train": {**corpus, "init_args": {**corpus["init_args"], "subsets": ["train-clean-100"]}},
        "val": {**corpus, "init_args": {**corpus["init_args"], "subsets": ["dev-clean"]}},
        "num_workers": 0, "cache_dir": str(tmp_path / "cache")}}
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_lm_from_text_files_normalises_and_reports_unspellable_words(tmp_path, capsys):
    tok = char_tokenizer()
    tok.save(tmp_path / "tokenizer.json")
    (tmp_path / "a.txt").write_text("The CAT sat!\n\nthe dog, café\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("a cat ran\n", encoding="utf-8")
    code = main(["lm", "--text", str(tmp_path / "a.txt"), "--text", str(tmp_path / "b.txt"), "--tokenizer",
                 str(tmp_path / "tokenizer.json"), "--order", "2", "--out", str(tmp_path / "lm")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "1 words cannot be spelled" in out and "café" in out
    lexicon = read_lexicon(tmp_path / "lm" / "lexicon.txt")
    assert set(lexicon) == {"the", "cat", "sat", "dog", "a", "ran"} and lexicon["cat"] == [["c", "a", "t"]]
    arpa = read_arpa(tmp_path / "lm" / "lm.arpa")
    assert arpa.order == 2 and arpa.logprob("cat", ("the",)) > arpa.logprob("ran", ("the",))
    info = json.loads((tmp_path / "lm" / "lm.json").read_text())
    assert (info["sentences"], info["words"], info["vocabulary"], info["lexicon_words"]) == (3, 9, 7, 6)
    config = DecoderConfig(lexicon=str(tmp_path / "lm" / "lexicon.txt"), lm=str(tmp_path / "lm" / "lm.arpa"))
    BeamSearchDecoder(tok, config)  # flashlight's KenLM loads it


def test_lm_from_a_checkpoint_and_a_data_config_lands_next_to_the_run(tmp_path, capsys):
    data = data_config(tmp_path)
    tokenizer = load_datamodule(data).tokenizer
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"speechxfer": {}, "hyper_parameters": {"tokenizer": tokenizer.to_dict()}}, ckpt)
    assert main(["lm", "--ckpt", str(ckpt), "--data", str(data)]) == 0, capsys.readouterr().out
    texts = [line.split(" ", 1)[1] for f in (tmp_path / "corpus").rglob("train-clean-100/**/*.trans.txt")
             for line in f.read_text().splitlines()]
    words = {w for t in texts for w in TextNormalizer()(t).split()}
    assert set(read_lexicon(tmp_path / "run" / "lm" / "lexicon.txt")) == words
    assert "speechxfer transcribe --ckpt" in capsys.readouterr().out


def test_an_experiment_config_names_its_data_file(tmp_path):
    data = data_config(tmp_path)
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(yaml.safe_dump({"model": {"class_path": "x"}, "data": data.name}))
    assert load_datamodule(experiment).val_domains == ["source"]


def test_help_shows_an_example_and_bad_input_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["lm", "--help"])
    assert exit_info.value.code == 0 and "speechxfer lm --ckpt" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["lm", "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "--text FILE and/or --data" in capsys.readouterr().err
    char_tokenizer().save(tmp_path / "tokenizer.json")
    code = main(["lm", "--text", str(tmp_path / "missing.txt"), "--tokenizer", str(tmp_path / "tokenizer.json"),
                 "--out", str(tmp_path / "lm")])
    assert code == 2 and "missing.txt: no such file" in capsys.readouterr().out


def test_repeated_data_configs_pool_their_training_transcripts(tmp_path, capsys):
    first, second = data_config(tmp_path / "a"), data_config(tmp_path / "b")
    tokenizer = load_datamodule(first).tokenizer
    (tmp_path / "tok.json").write_text(json.dumps(tokenizer.to_dict()))
    assert main(["lm", "--tokenizer", str(tmp_path / "tok.json"), "--data", str(first), "--data", str(second),
                 "--out", str(tmp_path / "lm")]) == 0, capsys.readouterr().out
    info = json.loads((tmp_path / "lm" / "lm.json").read_text())
    assert info["sentences"] == 2 * 7 and len(info["sources"]) == 2  # 6 + 1 training utterances per corpus


def test_the_shipped_demo_lm_is_rebuilt_from_training_transcripts_only(tmp_path, monkeypatch, capsys):
    """experiments/models/demo_lm (the main job's beam rows) = the command in experiments/quickstart.yaml."""
    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(repo)
    assert main(["lm", "--ckpt", "experiments/models/synth_en_bigru.ckpt", "--data", "experiments/data/demo_source.yaml",
                 "--data", "experiments/data/demo_target_labelled.yaml", "--out", str(tmp_path)]) == 0, \
        capsys.readouterr().out
    shipped = repo / "experiments" / "models" / "demo_lm"
    for name in ("lm.arpa", "lexicon.txt", "lm.json"):
        assert (tmp_path / name).read_bytes() == (shipped / name).read_bytes(), name
    assert json.loads((shipped / "lm.json").read_text())["sentences"] == 240  # 120 source + 120 target train
