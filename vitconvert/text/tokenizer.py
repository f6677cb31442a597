"""Texts to a text tower's ids, as its source makes them: cleaned (`TokenizerConfig.clean`), encoded by the
embedded tokenizer file through its own library (formats/tokenizer_files.py), the source's begin and end ids
added, cut to the context keeping the end id last, padded to the context with the source's pad id.
"""

from __future__ import annotations

import html
import re
import string
import warnings
from collections.abc import Callable, Sequence

from ..core.errors import VitConvertError
from ..core.text_config import Clean, TokenizerConfig
from ..formats.tokenizer_files import open_backend

_PUNCTUATION = str.maketrans("", "", string.punctuation)
# Printable ASCII, tabs and newlines, no '&': what ftfy.fix_text and html.unescape leave as it is (ftfy changes only
# non-ASCII text, control characters, terminal escapes, '\r' line breaks and HTML entities). Such a text skips them:
# ftfy is most of the time a prompt set takes to tokenize.
_PLAIN = re.compile(r"[\x20-\x25\x27-\x7e\t\n]*")


def _fix_text(text: str) -> str:
    try:
        import ftfy
    except ImportError:
        raise VitConvertError("this tokenizer cleans texts with ftfy, as open_clip does: pip install "
                              "'vitconvert[text]'") from None
    return ftfy.fix_text(text)


def _basic(text: str) -> str:
    """open_clip's basic_clean: ftfy's fixes, HTML entities unescaped twice, stripped."""
    if _PLAIN.fullmatch(text):
        return text.strip()
    return html.unescape(html.unescape(_fix_text(text))).strip()


def _whitespace(text: str) -> str:
    return " ".join(text.split()).strip()


def _canonicalize(text: str) -> str:
    """big_vision's canonicalize_text, as open_clip copies it: '_' to space, punctuation removed, lower-cased."""
    return " ".join(text.replace("_", " ").translate(_PUNCTUATION).lower().split()).strip()


def _siglip(text: str) -> str:
    """transformers' SiglipTokenizer.canonicalize_text (do_lower_case): lower-cased, punctuation removed,
    whitespace runs to one space, stripped."""
    return re.sub(r"\s+", " ", text.lower().translate(_PUNCTUATION)).strip()


CLEANERS: dict[Clean, Callable[[str], str]] = {
    "none": lambda text: text,
    "lower": lambda text: _whitespace(_basic(text)).lower(),
    "whitespace": lambda text: _whitespace(_basic(text)),
    "canonicalize": lambda text: _canonicalize(_basic(text)),
    "siglip": _siglip,
    "lowercase": str.lower,
}


def clean_text(text: str, clean: Clean) -> str:
    return CLEANERS[clean](text)


class Tokenizer:
    """A text tower's tokenizer: `tokenizer(texts)` is a LongTensor (N, context_length); `encode_ids(texts)`
    the same ids as lists, without torch."""

    def __init__(self, config: TokenizerConfig, data: bytes, where: str = "tokenizer") -> None:
        self.config = config
        self.backend = open_backend(config.kind, data, where)
        if self.backend.vocab_size != config.vocab_size:
            raise VitConvertError(f"{where}: the tokenizer file has {self.backend.vocab_size} tokens, its record "
                                  f"says {config.vocab_size}")
        self._warned = False

    def encode_ids(self, texts: str | Sequence[str]) -> list[list[int]]:
        cfg = self.config
        if isinstance(texts, str):
            texts = [texts]
        head = [cfg.bos_id] if cfg.bos_id is not None else []
        tail = [cfg.eos_id] if cfg.eos_id is not None else []
        room = cfg.context_length - len(head) - len(tail)
        for text in texts:
            if not isinstance(text, str):
                raise VitConvertError(f"texts must be strings, got {type(text).__name__}")
        out, cut = [], 0
        for ids in self.backend.encode_batch([clean_text(text, cfg.clean) for text in texts]):
            if len(ids) > room:
                ids, cut = ids[:room], cut + 1
            ids = head + ids + tail
            out.append(ids + [cfg.pad_id] * (cfg.context_length - len(ids)))
        if cut and not self._warned:
            self._warned = True
            warnings.warn(f"{cut} text(s) longer than the text tower's context of {cfg.context_length} tokens were "
                          "cut to it, as the source's tokenizer cuts them (its end-of-text token kept last)",
                          UserWarning, stacklevel=2)
        return out

    def __call__(self, texts: str | Sequence[str]):  # noqa: ANN204 (a torch.LongTensor; torch imported here)
        import torch

        return torch.tensor(self.encode_ids(texts), dtype=torch.long).reshape(-1, self.config.context_length)
