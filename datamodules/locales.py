"""The headline error rate of a language: CER where words are not separated by spaces.

Japanese, Chinese (Mandarin, Cantonese), Thai, Lao, Khmer, Burmese, Tibetan and Dzongkha are written
without spaces between words, so a "word" error rate there counts whole sentences (or whatever the
transcriber spaced) and says little; CER is the metric these languages report. The run's best
checkpoint monitors ``val/<domain>/cer`` for them (``monitored_metric``, used by the CLI), and
``summary.json`` / ``speechxfer compare`` name CER as the headline metric.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datamodules.base import SpeechDataModule

SPACELESS_LANGUAGES = frozenset({"ja", "zh", "yue", "th", "lo", "km", "my", "bo", "dz"})


def base_language(locale: str) -> str:
    """``"zh-CN"`` / ``"zh_TW"`` / ``"JA"`` -> ``"zh"`` / ``"zh"`` / ``"ja"``."""
    return locale.replace("_", "-").split("-")[0].lower()


def written_without_spaces(locale: str | None) -> bool:
    """True for locales whose script does not separate words by spaces (None: unknown -> False)."""
    return locale is not None and base_language(locale) in SPACELESS_LANGUAGES


def headline_metric(locale: str | None) -> str:
    """``"cer"`` for languages written without spaces, else ``"wer"``."""
    return "cer" if written_without_spaces(locale) else "wer"


def monitored_metric(datamodule: SpeechDataModule) -> str | None:
    """The run's headline metric: ``val/<domain>/<wer|cer>`` of the target domain if validated, else the first.

    ``<wer|cer>`` follows the language of that domain's validation corpus (``val_languages``);
    None when the datamodule validates nothing.
    """
    domains = datamodule.val_domains
    if not domains:
        return None
    name = "target" if "target" in domains else domains[0]
    return f"val/{name}/{headline_metric(datamodule.val_languages.get(name))}"
