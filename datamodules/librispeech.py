"""LibriSpeech: ``root/LibriSpeech/<subset>/<spk>/<chap>/<spk>-<chap>-<utt>.flac`` + ``<spk>-<chap>.trans.txt``.

Why not ``lhotse.recipes.prepare_librispeech``: it logs and drops transcript lines whose FLAC is
missing, never looks at FLACs that have no transcript line, reads transcripts with the platform
encoding, and only reads headers (a truncated FLAC passes). We need every such case raised or
counted (``on_bad_input``), so we build ``Recording`` (via ``Recording.from_file``) +
``SupervisionSegment`` + cut ourselves, with the recipe's id and speaker conventions.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from lhotse.cut.data import DataCut

from datamodules import errors as E
from datamodules.corpus_base import Corpus, make_cut, read_text_lines
from datamodules.manifest_cache import walk_files
from datamodules.probe import probe_recording


def chapter_dirs(subset_dir: Path, policy: E.BadInputPolicy) -> Iterator[tuple[Path, list[Path], list[Path]]]:
    """``(directory, flac files, transcript files)`` for every directory holding either, sorted.

    A directory that cannot be listed (permissions) is bad input (``unreadable_directory``): its
    utterances would otherwise vanish without a word.
    """

    def unreadable(err: OSError) -> None:
        policy.bad(err.filename, E.UNREADABLE_DIR, f"cannot list it ({err.strerror}): its utterances are not scanned")

    for dirpath, dirnames, filenames in os.walk(subset_dir, onerror=unreadable):
        dirnames.sort()
        flacs = [Path(dirpath) / n for n in sorted(filenames) if n.endswith(".flac")]
        trans = [Path(dirpath) / n for n in sorted(filenames) if n.endswith(".trans.txt")]
        if flacs or trans:
            yield Path(dirpath), flacs, trans


class LibriSpeechCorpus(Corpus):
    """One or more LibriSpeech subsets (e.g. ``["train-clean-100", "train-clean-360"]``).

    ``root`` is the folder that contains ``LibriSpeech/`` (or the ``LibriSpeech`` folder itself).
    Cut ids are the utterance ids (``1272-128104-0000``); ``speaker`` is the speaker folder,
    supervision ``custom`` is ``{"corpus": "librispeech", "subset": ..., "chapter": ...}``.
    Files other than ``SAMPLE_RATE`` are resampled and counted in ``notes["unexpected_sample_rate"]``.
    """

    corpus_name = "librispeech"
    language = "en"

    def __init__(
        self,
        root: str | Path,
        subsets: list[str],
        on_bad_input: str = "error",
        max_minutes: float | None = None,
        seed: int = 0,
    ):
        super().__init__(on_bad_input=on_bad_input, max_minutes=max_minutes, seed=seed)
        self.root = Path(root).expanduser().absolute()
        self.subsets = [subsets] if isinstance(subsets, str) else list(subsets)
        if not self.subsets:
            raise ValueError("LibriSpeechCorpus needs at least one subset")

    @property
    def base(self) -> Path:
        nested = self.root / "LibriSpeech"
        return nested if nested.is_dir() else self.root

    def config(self) -> dict:
        return {**super().config(), "root": str(self.root), "subsets": self.subsets}

    def cache_name(self) -> str:
        return "librispeech-" + "+".join(self.subsets)

    def display_name(self) -> str:
        return "LibriSpeech " + "+".join(self.subsets)

    def _check_layout(self, policy: E.BadInputPolicy) -> list[tuple[str, Path]] | None:
        if not self.root.is_dir():
            policy.bad(self.root, E.MISSING_ROOT, "LibriSpeech root directory does not exist")
            return None
        present = []
        for subset in self.subsets:
            subset_dir = self.base / subset
            if subset_dir.is_dir():
                present.append((subset, subset_dir))
            else:
                policy.bad(subset_dir, E.MISSING_SUBSET, f"subset {subset!r} not found in {self.base}")
        return present or None

    def _fingerprint_entries(self, state: list[tuple[str, Path]]) -> Iterable:
        for subset, subset_dir in state:
            yield ["subset", subset]
            yield from walk_files(subset_dir, (".flac", ".trans.txt"), self.base)

    def _scan(self, state: list[tuple[str, Path]], policy: E.BadInputPolicy) -> list[DataCut]:
        cuts, first_seen = [], {}  # utterance id -> its FLAC: ids must be unique across subsets
        for subset, subset_dir in state:
            for directory, flacs, transcripts in chapter_dirs(subset_dir, policy):
                cuts += self._scan_chapter(subset, directory, flacs, transcripts, policy, first_seen)
        return cuts

    def _scan_chapter(self, subset, directory, flacs, transcripts, policy, first_seen) -> list[DataCut]:
        texts, seen = self._read_transcripts(transcripts, policy)
        audio = {p.name[: -len(".flac")]: p for p in flacs}
        custom = {"corpus": "librispeech", "subset": subset, "chapter": directory.name}
        cuts = []
        for uid in sorted(texts.keys() | audio.keys()):
            if uid not in audio:
                where, _ = texts[uid]
                policy.bad(where, E.TRANSCRIPT_WITHOUT_AUDIO, f"{uid}.flac not found in {directory}")
            elif uid not in texts:
                if uid not in seen:  # its transcript line was bad and is already reported
                    detail = f"no line for {uid} in {directory}/*.trans.txt"
                    policy.bad(audio[uid], E.AUDIO_WITHOUT_TRANSCRIPT, detail)
            elif uid in first_seen:
                policy.bad(audio[uid], E.DUPLICATE_ID, f"utterance id {uid} is also {first_seen[uid]}")
            else:
                first_seen[uid] = audio[uid]
                rec = probe_recording(audio[uid], uid, policy, self.expected_sample_rates)
                if rec is not None:
                    cuts.append(make_cut(rec, texts[uid][1], directory.parent.name, "en", custom))
        return cuts

    @staticmethod
    def _read_transcripts(transcripts: list[Path], policy) -> tuple[dict[str, tuple[str, str]], set[str]]:
        """``{uid: (file:line, text)}`` and every uid mentioned (bad lines included)."""
        texts, seen = {}, set()
        for path in transcripts:
            try:
                lines = read_text_lines(path)
            except OSError as err:
                policy.bad(path, E.UNREADABLE_FILE, f"cannot read it ({err.strerror or err})")
                continue
            for lineno, line, problem in lines:
                where = f"{path}:{lineno}"
                parts = line.strip().split(maxsplit=1)
                seen.add(parts[0])
                if problem is not None:
                    policy.bad(where, E.NON_UTF8, problem)
                elif len(parts) != 2:
                    policy.bad(where, E.MALFORMED_ROW, f"expected '<utterance-id> <TEXT>', got {line!r}")
                elif parts[0] in texts:
                    policy.bad(where, E.DUPLICATE_ID, f"{parts[0]} already at {texts[parts[0]][0]}")
                else:
                    texts[parts[0]] = (where, parts[1].strip())
        return texts, seen
