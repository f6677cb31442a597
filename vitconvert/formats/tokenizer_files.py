"""Tokenizer files, read by the libraries that define them: `tokenizers` (a JSON: CLIP's byte-level BPE,
transformers' tokenizer.json) and `sentencepiece` (a SentencePiece model: SigLIP's spiece.model). Never a BPE
of our own: CLIP's vocabulary becomes a `tokenizers` BPE model with open_clip's pre-tokenizing regex.

What a converter needs (a file's vocabulary size, CLIP's tokenizer built from OpenAI's merges) and what the
text tower's tokenizer runs (`Backend.encode`: a cleaned text to ids, no special tokens) are both here, with
neither torch nor the text tower's code.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Protocol

from ..core.errors import VitConvertError
from ..core.text_config import TokenizerKind

# OpenAI's CLIP vocabulary (its licence beside it, data/bpe_simple_vocab_16e6.LICENSE).
CLIP_MERGES_FILE = "bpe_simple_vocab_16e6.txt.gz"
CLIP_MERGES_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
# open_clip's SimpleTokenizer: merges[1:49152-256-2+1], then the byte alphabet, its '</w>' forms, the merges and
# the two special tokens make 49408 ids; <start_of_text> 49406, <end_of_text> 49407.
CLIP_MERGES = 49152 - 256 - 2
CLIP_SPECIALS = ("<start_of_text>", "<end_of_text>")
CLIP_VOCAB = 2 * 256 + CLIP_MERGES + len(CLIP_SPECIALS)
CLIP_BOS, CLIP_EOS = CLIP_VOCAB - 2, CLIP_VOCAB - 1
# open_clip's pre-tokenizing pattern (compiled there with re.IGNORECASE), the special tokens aside: those are
# the tokenizer's added tokens here.
CLIP_PATTERN = r"""(?i)'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


class Backend(Protocol):
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...


def _need(module: str) -> None:
    raise VitConvertError(f"reading a text tower's tokenizer needs the {module!r} package: pip install "
                          "'vitconvert[text]'")


@dataclass
class TokenizersBackend:
    """A `tokenizers` JSON, encoding without its special tokens (the tokenizer config adds the source's)."""

    tokenizer: object
    vocab_size: int

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]


@dataclass
class SentencePieceBackend:
    processor: object
    vocab_size: int

    def encode(self, text: str) -> list[int]:
        return self.processor.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.processor.encode(texts)


def open_backend(kind: TokenizerKind, data: bytes, where: str = "tokenizer") -> Backend:
    """The library's tokenizer for a file's bytes, or a one-line error saying why it cannot be read."""
    return _open_cached(kind, hashlib.sha256(data).hexdigest(), data, where)


@lru_cache(maxsize=8)
def _open_cached(kind: str, digest: str, data: bytes, where: str) -> Backend:
    if kind == "tokenizers":
        try:
            from tokenizers import Tokenizer
        except ImportError:
            _need("tokenizers")
        try:
            tok = Tokenizer.from_str(data.decode("utf-8"))
        except Exception as e:  # tokenizers raises its own Exception for a malformed JSON
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise VitConvertError(f"{where}: not a tokenizers JSON file ({first})") from None
        return TokenizersBackend(tok, tok.get_vocab_size(with_added_tokens=True))
    if kind == "sentencepiece":
        try:
            import sentencepiece
        except ImportError:
            _need("sentencepiece")
        processor = sentencepiece.SentencePieceProcessor()
        try:
            processor.LoadFromSerializedProto(data)
        except Exception as e:  # sentencepiece raises RuntimeError or OSError for a bad proto
            raise VitConvertError(f"{where}: not a SentencePiece model ({type(e).__name__})") from None
        return SentencePieceBackend(processor, processor.get_piece_size())
    raise VitConvertError(f"{where}: unknown tokenizer kind {kind!r}")


def read_tokenizer_file(path: object, kind: TokenizerKind) -> tuple[bytes, int]:
    """A tokenizer file's bytes and vocabulary size, checked to be readable by its library."""
    from pathlib import Path

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise VitConvertError(f"{path}: cannot read the tokenizer ({e.strerror})") from None
    return data, open_backend(kind, data, str(path)).vocab_size


def clip_merges() -> bytes:
    """OpenAI's CLIP merges file as vitconvert ships it, checked against its published sha256."""
    data = resources.files(__package__).joinpath("data", CLIP_MERGES_FILE).read_bytes()
    if hashlib.sha256(data).hexdigest() != CLIP_MERGES_SHA256:
        raise VitConvertError(f"vitconvert's {CLIP_MERGES_FILE} is damaged; reinstall vitconvert")
    return data


def _bytes_to_unicode() -> list[str]:
    """GPT-2's and CLIP's byte alphabet: printable bytes as themselves, the others moved past 255, in the
    order open_clip's `bytes_to_unicode()` lists them (which is their vocabulary's order)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def clip_tokenizer_json(merges_gz: bytes | None = None) -> bytes:
    """CLIP's tokenizer as a `tokenizers` JSON: open_clip's SimpleTokenizer vocabulary (byte alphabet, its
    '</w>' forms, the merges, <start_of_text>, <end_of_text>), its pre-tokenizing regex, then byte-level BPE
    with the '</w>' end-of-word suffix. No normaliser: the cleaning is the tokenizer config's (open_clip's)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    lines = gzip.decompress(merges_gz if merges_gz is not None else clip_merges()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:CLIP_MERGES + 1]]
    alphabet = _bytes_to_unicode()
    vocab = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + list(CLIP_SPECIALS)
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(vocab)}, merges=merges,
                               continuing_subword_prefix="", end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(CLIP_SPECIALS))
    return tok.to_str().encode("utf-8")
