"""EpisodicDataModule: tasks, disjoint splits, episodes (support/query disjoint, one task), DDP shares, resume."""

from __future__ import annotations

import logging

import pytest

from datamodules import CommonVoiceCorpus, LibriSpeechCorpus
from datamodules.batch import check_batch
from datamodules.episodic import EpisodicDataModule
from datamodules.tasks import Utterance, eval_episode, split_tasks, take
from tests.corpus_factory import make_commonvoice, make_librispeech

SPEAKERS, PER_SPEAKER = 6, 6


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("episodic")
    # train-clean-100: 6 speakers x 6 utterances; dev-clean: 2 speakers with one utterance each
    make_librispeech(root, {"train-clean-100": SPEAKERS * PER_SPEAKER, "dev-clean": 2}, speakers=SPEAKERS)
    return root


def datamodule(corpus, small: bool = False, **kwargs) -> EpisodicDataModule:
    corpora = [LibriSpeechCorpus(corpus, ["train-clean-100"])]
    if small:
        corpora.append(LibriSpeechCorpus(corpus, ["dev-clean"]))
    settings = dict(meta_val=1, meta_test=1, shots=2, queries=2, tasks_per_step=2, steps_per_epoch=4,
                    eval_shots=2, eval_queries=3, num_workers=0, seed=0,
                    cache_dir=str(corpus / "cache"))
    return EpisodicDataModule(corpora, **{**settings, **kwargs})


def task_of_ids(dm: EpisodicDataModule) -> dict[str, str]:
    tasks, _ = dm.tasks()
    return {u.id: name for name, utts in tasks.items() for u in utts}


def train_batches(dm: EpisodicDataModule, rank: int = 0, world_size: int = 1) -> list[list[dict]]:
    dm.setup("fit")
    return list(dm.train_dataloader(rank, world_size))


def test_episode_support_and_query_are_disjoint_and_from_one_task(corpus):
    dm = datamodule(corpus)
    owner = task_of_ids(dm)
    _, split = dm.tasks()
    batches = train_batches(dm)
    assert len(batches) == 4 and all(len(b) == 2 for b in batches)
    for batch in batches:
        assert len({e["task"] for e in batch}) == 2  # distinct tasks per meta-batch
        for episode in batch:
            support, query = episode["support"], episode["query"]
            check_batch(support, labels=True)
            check_batch(query, labels=True)
            assert len(support["ids"]) == 2 and len(query["ids"]) == 2 and episode["shots"] == 2
            assert not set(support["ids"]) & set(query["ids"])
            assert {owner[i] for i in support["ids"] + query["ids"]} == {episode["task"]}
            assert episode["task"] in split.train


def test_task_splits_are_disjoint_and_deterministic(corpus):
    first, second, other = (datamodule(corpus, meta_val=2, meta_test=2, seed=s).tasks()[1] for s in (0, 0, 1))
    assert first == second
    assert not set(first.train) & set(first.val) and not set(first.train) & set(first.test)
    assert not set(first.val) & set(first.test)
    assert sorted(first.train + first.val + first.test) == sorted(datamodule(corpus).tasks()[0])
    assert len(first.val) == len(first.test) == 2 and other != first  # another seed draws other tasks


def test_named_tasks_by_prefix_and_unknown_names(corpus):
    tasks = sorted(datamodule(corpus).tasks()[0])
    split = datamodule(corpus, meta_test=[tasks[0]], meta_val=[tasks[1][:3]]).tasks()[1]
    assert split.test == [tasks[0]] and split.val == [tasks[1]]
    with pytest.raises(ValueError, match="'nobody' matches no task"):
        datamodule(corpus, meta_test=["nobody"]).tasks()


def test_small_tasks_are_a_counted_logged_skip(corpus, caplog):
    with caplog.at_level(logging.WARNING, logger="datamodules.episodic"):
        dm = datamodule(corpus, small=True)
        tasks, split = dm.tasks()
    small = [n for n, u in tasks.items() if len(u) == 1]
    assert len(small) == 2 and not set(small) & set(split.train + split.val + split.test)
    assert dm.task_skips == {"meta_train_too_few_utterances": 2}
    assert "too small" in caplog.text and all(name in caplog.text for name in small)


def test_utterances_without_the_task_key_are_counted(tmp_path):
    make_commonvoice(tmp_path / "cv", "en", {"train": 9}, accents=("United States English", "England English", ""))
    dm = EpisodicDataModule(CommonVoiceCorpus(tmp_path / "cv", "en", "train"), task_key="accent", meta_val=0,
                            meta_test=1, shots=1, queries=1, tasks_per_step=1, num_workers=0,
                            cache_dir=str(tmp_path / "cache"))
    tasks, split = dm.tasks()
    assert sorted(tasks) == ["England English", "United States English"]
    assert dm.task_skips == {"utterances_without_task_key": 3}


def test_ranks_share_the_meta_batch_of_one_process(corpus):
    whole = train_batches(datamodule(corpus, tasks_per_step=4))
    ranks = [train_batches(datamodule(corpus, tasks_per_step=4), r, 2) for r in (0, 1)]
    for step, batch in enumerate(whole):
        shares = [ranks[0][step], ranks[1][step]]
        assert [e["query"]["ids"] for e in batch] == [e["query"]["ids"] for e in
                                                        (shares[0][0], shares[1][0], shares[0][1], shares[1][1])]
    with pytest.raises(ValueError, match="multiple of the 2 ranks"):
        train_batches(datamodule(corpus, tasks_per_step=3), 0, 2)


def test_resume_mid_meta_epoch_replays_the_rest_exactly(corpus):
    dm = datamodule(corpus)
    epoch1 = [[e["support"]["ids"] for e in b] for b in train_batches(dm)]
    loader = dm.train_dataloader(0, 1)
    loader.sampler.set_epoch(1)
    epoch2 = [[e["support"]["ids"] for e in b] for b in loader]
    assert epoch2 != epoch1  # a new meta-epoch draws new episodes
    resumed = datamodule(corpus)
    resumed.setup("fit")
    resumed.load_state_dict({"train_sampler": {"epoch": 1, "batches": 3, "world_size": 1, "seed": 0}})
    assert [[e["support"]["ids"] for e in b] for b in resumed.train_dataloader(0, 1)] == epoch2[3:]
    at_end = datamodule(corpus)
    at_end.setup("fit")
    at_end.load_state_dict({"train_sampler": {"epoch": 0, "batches": 4, "world_size": 1, "seed": 0}})
    assert at_end.train_dataloader(0, 1).sampler.epoch == 1  # a finished epoch resumes at the next one


def test_fewshot_test_has_one_query_and_nested_supports(corpus):
    dm = datamodule(corpus, meta_test=2, eval_queries=2, test_shots=[0, 1, 3])
    dm.setup("test")
    assert dm.test_domains == ["fewshot/k0", "fewshot/k1", "fewshot/k3"]
    loaders = [list(loader) for loader in dm.test_dataloader(0, 1)]
    for task_episodes in zip(*loaders):
        assert len({tuple(e["query"]["ids"]) for e in task_episodes}) == 1
        k0, k1, k3 = task_episodes
        assert k0["support"] is None and k0["shots"] == 0
        assert k1["support"]["ids"] == k3["support"]["ids"][:1] and len(k3["support"]["ids"]) == 3
        assert not set(k3["support"]["ids"]) & set(k3["query"]["ids"])
        assert k3["adapt"] == {"steps": None, "lr": None, "groups": None}


def test_eval_tasks_go_round_robin_over_ranks(corpus):
    dm = datamodule(corpus, meta_test=3)
    dm.setup("test")
    names = [[e["task"] for e in dm.test_dataloader(r, 2)[0]] for r in (0, 1)]
    assert sorted(names[0] + names[1]) == dm.tasks()[1].test and not set(names[0]) & set(names[1])
    with pytest.raises(ValueError, match="every rank needs at least"):
        datamodule(corpus, meta_val=1).val_dataloader(0, 2)


def test_pooled_mode_trains_on_the_meta_train_tasks(corpus):
    dm = datamodule(corpus, train_mode="pooled", max_duration=5.0)
    dm.setup("fit")
    owner, split = task_of_ids(dm), dm.tasks()[1]
    ids = [i for batch in dm.train_dataloader(0, 1) for i in batch["ids"]]
    assert sorted(ids) == sorted(u for u, t in owner.items() if t in split.train)
    assert dm.train_batches_per_epoch(0, 1) >= 1


def test_episodes_in_seconds():
    utts = [Utterance(f"u{i}", 1.5) for i in range(6)]
    support, rest = take(utts, 2.0, "seconds")
    assert [u.id for u in support] == ["u0", "u1"] and len(rest) == 4
    plan = eval_episode("t", utts, 2.0, 3.0, "seconds", seed=0)
    assert len(plan.query) == 2 and len(plan.support) == 2 and not set(plan.query) & set(plan.support)


def test_split_refuses_too_few_eval_tasks():
    tasks = {f"t{i}": [Utterance(f"t{i}-{j}", 1.0) for j in range(3)] for i in range(3)}
    with pytest.raises(ValueError, match=r"meta_val=1 tasks asked for, but only 0 task\(s\) left"):
        split_tasks(tasks, 1, 1, 0, {"t0": True, "t1": False, "t2": False})


def test_task_keys_read_the_supervision():
    from lhotse import Recording

    from datamodules.corpus_base import make_cut
    from datamodules.tasks import task_of

    rec = Recording.from_dict({"id": "u1", "sources": [{"type": "file", "channels": [0], "source": "u1.flac"}],
                               "sampling_rate": 16000, "num_samples": 16000, "duration": 1.0, "channel_ids": [0]})
    cut = make_cut(rec, "hello", "client7", "ca", {"corpus": "commonvoice", "accents": "Central", "variant": "valencia"})
    keys = ("speaker", "locale", "language", "accent", "domain", "corpus", "variant", "gender")
    assert [task_of(cut, key) for key in keys] == ["client7", "ca", "ca", "Central", "commonvoice", "commonvoice",
                                                   "valencia", None]


def test_load_time_skips_in_episodes_are_counted_and_empty_queries_dropped(corpus):
    from datamodules.dataset import LOAD_SKIPS, LoadSkips
    from datamodules.episodic import EpisodeLoader
    from datamodules.errors import BadInputError

    def part(ids, reason=None):
        batch = {"ids": list(ids)}
        if reason:
            batch[LOAD_SKIPS] = LoadSkips()
            batch[LOAD_SKIPS].add(BadInputError("utterance 'x'", reason, "cannot decode"))
        return batch

    episodes = [{"support": part([], "audio_unreadable"), "query": part(["q1"]), "task": "a", "shots": 2},
                {"support": part(["s1", "s2"]), "query": part([], "audio_unreadable"), "task": "b", "shots": 2},
                {"support": part(["s1"], "audio_unreadable"), "query": part(["q1", "q2"]), "task": "c", "shots": 2}]
    loader = EpisodeLoader([episodes], batch_size=None)
    (kept,) = list(loader)
    assert [e["task"] for e in kept] == ["a", "c"] and [e["shots"] for e in kept] == [0, 1]
    assert kept[0]["support"] is None and all(LOAD_SKIPS not in e["query"] for e in kept)
    assert loader.load_skips.counts == {"audio_unreadable": 3} and loader.load_skips.empty_batches == 1


def test_episode_loaders_are_named_in_the_bad_input_report(corpus):
    dm = datamodule(corpus, test_shots=[0, 1])
    dm.setup()
    dm.train_dataloader(0, 1), dm.val_dataloader(0, 1), dm.test_dataloader(0, 1)
    assert {"train", "val/target", "test/fewshot/k0", "test/fewshot/k1"} <= set(dm.load_skips)
