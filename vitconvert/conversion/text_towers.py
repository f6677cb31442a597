"""What every two-tower source shares: the tokenizer it records (OpenAI's CLIP BPE, or the tokenizer files
beside a checkpoint), the text tower's record, and `--image-only`.

A tokenizer file's special ids are read from the file and its configs, as the source's tokenizer adds them:
a `tokenizers` JSON's own post-processor says which ids go before and after a text (compared with and
without them), transformers' tokenizer_config.json / special_tokens_map.json name the padding token.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from ..core.errors import VitConvertError
from ..core.text_config import Clean, Probability, TextConfig, TokenizerConfig
from ..formats.tokenizer_files import CLIP_BOS, CLIP_EOS, CLIP_VOCAB, clip_tokenizer_json, open_backend
from ..formats.weights_file import TextTower, float32_exp
from .source import Option

IMAGE_ONLY = Option("image_only", "--image-only", "keep the image tower alone, as before two towers were read")
TOKENIZER = Option("tokenizer", "--tokenizer", "the tokenizer file (tokenizer.json, spiece.model) where it is not "
                                               "beside the checkpoint")
TEXT_LEFT_OUT = "the text tower and the logit scale and bias (--image-only)"
SENTENCEPIECE_FILES = ("spiece.model", "tokenizer.model")


def clip_tokenizer(context_length: int, clean: Clean = "lower") -> tuple[TokenizerConfig, bytes]:
    """OpenAI's CLIP tokenizer as open_clip's SimpleTokenizer runs it: <start_of_text> text <end_of_text>,
    zeros after, the vocabulary shipped with vitconvert."""
    data = clip_tokenizer_json()
    return TokenizerConfig(kind="tokenizers", context_length=context_length, vocab_size=CLIP_VOCAB, pad_id=0,
                           bos_id=CLIP_BOS, eos_id=CLIP_EOS, clean=clean), data


def _json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VitConvertError(f"{path}: cannot read it as JSON ({e})") from None
    return value if isinstance(value, dict) else {}


def _token(value: object) -> str | None:
    """A special token as transformers' configs write it: a string, or an AddedToken's dict."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else None


def find_tokenizer(folder: Path, given: str | None, where: str) -> Path:
    """The tokenizer file: `given`, else tokenizer.json or a SentencePiece model in `folder`."""
    if given is not None:
        path = Path(given)
        if not path.is_file():
            raise VitConvertError(f"{given}: no such tokenizer file")
        return path
    for name in ("tokenizer.json", *SENTENCEPIECE_FILES):
        if (folder / name).is_file():
            return folder / name
    raise VitConvertError(f"{where}: no tokenizer beside it (tokenizer.json, {', '.join(SENTENCEPIECE_FILES)}): give "
                          "it with --tokenizer FILE (tokenizer=...), or convert with --image-only")


def file_tokenizer(path: Path, context_length: int, clean: Clean, where: str,
                   pad_default: str | None = None) -> tuple[TokenizerConfig, bytes]:
    """The tokenizer of a file and the configs beside it: the ids it adds around a text, its padding id
    (tokenizer_config.json's or special_tokens_map.json's pad_token, else `pad_default`'s id)."""
    data = path.read_bytes()
    kind = "sentencepiece" if path.suffix == ".model" else "tokenizers"
    backend = open_backend(kind, data, str(path))
    configs = {**_json(path.parent / "special_tokens_map.json"), **_json(path.parent / "tokenizer_config.json")}

    def token_id(token: str | None) -> int | None:
        if token is None:
            return None
        if kind == "sentencepiece":
            i = backend.processor.piece_to_id(token)
            return None if i == backend.processor.unk_id() and token != "<unk>" else i
        return backend.tokenizer.token_to_id(token)

    if kind == "tokenizers":
        # The file's own post-processor adds the source's special ids: those before and after a plain text.
        bare = backend.tokenizer.encode("a", add_special_tokens=False).ids
        full = backend.tokenizer.encode("a", add_special_tokens=True).ids
        start = next((i for i in range(len(full) - len(bare) + 1) if full[i:i + len(bare)] == bare), None)
        if start is None or len(full) - len(bare) - start > 1 or start > 1:
            raise VitConvertError(f"{path}: its post-processor adds more than one id before or after a text")
        bos = full[0] if start == 1 else None
        eos = full[-1] if len(full) - len(bare) - start == 1 else None
    else:  # SiglipTokenizer's and T5's: the end-of-sequence id after each text, none before
        bos, eos = None, (backend.processor.eos_id() if backend.processor.eos_id() >= 0 else None)
    pad = token_id(_token(configs.get("pad_token")) or pad_default)
    if pad is None and kind == "sentencepiece":
        pad = eos  # SiglipTokenizer's default pad_token is its end-of-sequence token, </s>
    if pad is None:
        raise VitConvertError(f"{where}: the tokenizer names no padding token (tokenizer_config.json's pad_token)")
    return TokenizerConfig(kind=kind, context_length=context_length, vocab_size=backend.vocab_size, pad_id=pad,
                           bos_id=bos, eos_id=eos, clean=clean), data


def text_tower(config: TextConfig, tokenizer: tuple[TokenizerConfig, bytes], t: float, bias: float | None,
               where: str) -> TextTower:
    """The record's text tower: t is the stored log scale (logit_scale = exp(t), in float32), bias the stored
    bias or None (CLIP: softmax over the classes; with a bias, SigLIP's sigmoid)."""
    tok, data = tokenizer
    if tok.vocab_size > config.vocab_size:
        raise VitConvertError(f"{where}: the tokenizer has {tok.vocab_size} tokens but the text tower embeds "
                              f"{config.vocab_size}: not this model's tokenizer")
    probability: Probability = "softmax" if bias is None else "sigmoid"
    try:
        return TextTower(config=config, tokenizer=tok, tokenizer_file=data, logit_scale=float32_exp(t),
                         logit_bias=0.0 if bias is None else float(bias), probability=probability)
    except VitConvertError as e:
        raise VitConvertError(f"{where}: {e}") from None
