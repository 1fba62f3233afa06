"""Common Voice release folder: ``root/<locale>/clips/*.mp3`` + ``root/<locale>/<split>.tsv``.

Why not ``lhotse.recipes.prepare_commonvoice``: it runs a ``ProcessPoolExecutor`` (breaks when
called from a non-importable ``__main__`` and multiplies memory under DDP), prepares every split
of a locale at once, and lets bad rows and unreadable clips fail deep inside the pool or pass
unchecked. We keep its one good idea, ``csv.QUOTE_NONE`` (sentences contain unbalanced quotes),
and build ``Recording`` + ``SupervisionSegment`` + cut per row ourselves.

Columns are taken from the header (releases differ: newer ones add ``sentence_id`` /
``sentence_domain``); ``path`` and ``sentence`` are required. A row with more or fewer fields
than the header (e.g. a stray tab inside the sentence) is malformed: which field the tab belongs
to cannot be known.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from pathlib import Path

from lhotse.cut.data import DataCut

from datamodules import errors as E
from datamodules.corpus_base import Corpus, make_cut, utf8_problem
from datamodules.manifest_cache import stat_entry
from datamodules.probe import probe_recording

REQUIRED_COLUMNS = ("path", "sentence")
# copied into supervision.custom when non-empty (meta-learning tasks can be keyed by any of them, datamodules/tasks.py)
METADATA_COLUMNS = ("gender", "age", "accents", "variant", "sentence_domain")


def tsv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """``(line number, fields)`` of every non-blank line, header included; no quote processing."""
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        for fields in reader:
            if any(field.strip() for field in fields):
                yield reader.line_num, fields


class CommonVoiceCorpus(Corpus):
    """One split (``train``/``dev``/``test``/``validated``/...) of one Common Voice locale.

    Cut ids are clip stems; ``speaker`` is ``client_id``; supervision ``custom`` is
    ``{"corpus": "commonvoice", "subset": split, "locale": ..., + gender/age/accents/variant/sentence_domain
    if given}``.
    MP3s at 48 or 32 kHz are resampled lazily to 16 kHz; other rates too, counted as a note.
    """

    corpus_name = "commonvoice"
    expected_sample_rates = (48000, 32000)

    def __init__(
        self,
        root: str | Path,
        locale: str,
        split: str,
        on_bad_input: str = "error",
        max_minutes: float | None = None,
        seed: int = 0,
    ):
        super().__init__(on_bad_input=on_bad_input, max_minutes=max_minutes, seed=seed)
        self.root, self.locale, self.split = Path(root).expanduser().absolute(), locale, split

    @property
    def language(self) -> str:
        return self.locale

    def config(self) -> dict:
        return {**super().config(), "root": str(self.root), "locale": self.locale, "split": self.split}

    def cache_name(self) -> str:
        return f"commonvoice-{self.locale}-{self.split}"

    def display_name(self) -> str:
        return f"CommonVoice {self.locale}/{self.split}"

    def _check_layout(self, policy: E.BadInputPolicy) -> tuple[Path, Path] | None:
        locale_dir = self.root / self.locale
        tsv, clips = locale_dir / f"{self.split}.tsv", locale_dir / "clips"
        if not self.root.is_dir():
            policy.bad(self.root, E.MISSING_ROOT, "Common Voice root directory does not exist")
        elif not locale_dir.is_dir():
            policy.bad(locale_dir, E.MISSING_LOCALE, f"locale {self.locale!r} not found in {self.root}")
        elif not tsv.is_file():
            policy.bad(tsv, E.MISSING_TSV, f"split {self.split!r} has no TSV file")
        elif not clips.is_dir():
            policy.bad(clips, E.MISSING_LOCALE, "the locale has no clips/ directory")
        else:
            return tsv, clips
        return None

    def _fingerprint_entries(self, state: tuple[Path, Path]) -> Iterable:
        """The TSV, and the clips it names: a clips/ folder holds every split (10^6 files), so only
        the referenced ones are stat'ed."""
        tsv, clips = state
        yield stat_entry(tsv, self.root)
        rows = tsv_rows(tsv)  # streamed: a validated.tsv has millions of rows
        try:
            header = next(rows, (0, []))[1]
        except OSError as err:  # the scan reports it; fixing it changes the key
            yield "unreadable", str(tsv), err.errno
            return
        if "path" in header:
            col = header.index("path")
            yield from (stat_entry(clips / f[col], self.root) for _, f in rows if len(f) > col)

    def _scan(self, state: tuple[Path, Path], policy: E.BadInputPolicy) -> list[DataCut]:
        tsv, clips = state
        rows = tsv_rows(tsv)
        try:
            header = next(rows, None)
        except OSError as err:
            policy.bad(tsv, E.UNREADABLE_FILE, f"cannot read it ({err.strerror or err})")
            return []
        if header is None:
            policy.bad(tsv, E.EMPTY_TSV, "file is empty (no header line)")
            return []
        columns = header[1]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            policy.bad(f"{tsv}:{header[0]}", E.BAD_TSV_HEADER, f"header lacks column(s) {missing}: {columns}")
            return []
        cuts, seen, ids, n_rows = [], {}, {}, 0
        for lineno, fields in rows:
            n_rows += 1
            cut = self._row_to_cut(f"{tsv}:{lineno}", columns, fields, clips, seen, ids, policy)
            if cut is not None:
                cuts.append(cut)
        if n_rows == 0:
            policy.bad(tsv, E.EMPTY_TSV, "header only, no rows")
        return cuts

    def _row_to_cut(self, where, columns, fields, clips, seen, ids, policy) -> DataCut | None:
        line = "\t".join(fields)
        problem = utf8_problem(line)
        if problem is not None:
            return policy.bad(where, E.NON_UTF8, problem)
        if len(fields) != len(columns):
            detail = f"{len(fields)} tab-separated fields, header has {len(columns)}: {line!r}"
            return policy.bad(where, E.MALFORMED_ROW, detail)
        row = dict(zip(columns, fields))
        name, text = row["path"].strip(), row["sentence"].strip()
        if name in seen:
            return policy.bad(where, E.DUPLICATE_ID, f"clip {name} already listed at {seen[name]}")
        seen[name] = where
        uid = Path(name).stem  # the cut id: x.mp3 and x.wav would be one utterance twice
        if uid in ids:
            return policy.bad(where, E.DUPLICATE_ID, f"clip {name} has the utterance id {uid!r} of the clip at {ids[uid]}")
        ids[uid] = where
        if not text:
            return policy.bad(where, E.EMPTY_TEXT, f"clip {name} has an empty sentence")
        audio = clips / name
        if not audio.is_file():
            return policy.bad(where, E.TRANSCRIPT_WITHOUT_AUDIO, f"{audio} not found")
        rec = probe_recording(audio, uid, policy, self.expected_sample_rates)
        if rec is None:
            return None
        custom = {"corpus": "commonvoice", "subset": self.split, "locale": self.locale}
        custom.update({k: row[k] for k in METADATA_COLUMNS if row.get(k)})
        return make_cut(rec, text, row.get("client_id", ""), self.locale, custom)
