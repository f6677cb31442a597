"""`load_text_model`: the text tower of one of our two-tower weights files, ready to embed texts."""

from __future__ import annotations

import os

import torch

from ..core.errors import VitConvertError
from ..formats.safetensors_file import read_tensors
from ..formats.weights_file import TEXT_PREFIX, WeightsRecord, read_record
from .model import TextModel
from .tokenizer import Tokenizer


def load_text_model(path: str | os.PathLike, device: str | torch.device | None = None) -> TextModel:
    """The eval-mode, float32 text tower of a two-tower file (`vitconvert convert` of a CLIP or SigLIP
    checkpoint), its tokenizer and its logit scale and bias with it; `.record` is the file's record."""
    return text_model_from(read_record(path), path, device)


def text_model_from(record: WeightsRecord, path: str | os.PathLike,
                    device: str | torch.device | None = None) -> TextModel:
    """`load_text_model` for a caller that has already read and checked the file's record."""
    text = record.text
    if text is None:
        raise VitConvertError(f"{path}: an image model without a text tower (converted with --image-only, or from an "
                              "image-only source); convert the two-tower checkpoint to embed texts")
    state = {k.removeprefix(TEXT_PREFIX): v.float() for k, v in read_tensors(path).items() if k.startswith(TEXT_PREFIX)}
    tokenizer = Tokenizer(text.tokenizer, text.tokenizer_file, f"{path}: tokenizer")
    with torch.device("meta"):
        model = TextModel(text.config, tokenizer, text.logit_scale, text.logit_bias, text.probability)
    model.load_state_dict(state, strict=True, assign=True)
    model.record = record
    return model.eval() if device is None else model.to(device).eval()
