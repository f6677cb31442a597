"""The zero-shot head: each class's text embedding, averaged over the templates, as a Linear layer over
the normalised image embedding, with the model's logit scale and bias folded in.

For unit image embeddings `img`, `img @ weight.T + bias` are the source's logits
(`normalize(img) @ normalize(txt).T * logit_scale + logit_bias`, with `txt` the class embeddings). Both
sources average the same way: each prompt's embedding normalised, their mean over the templates,
normalised again (OpenCLIP's `build_zero_shot_classifier`, big_vision's `_average_embeddings` in its
discriminative_classifier evaluator); OpenCLIP divides by max(norm, 1e-12), big_vision by norm + 1e-8,
which differ by under 1e-7 relative for any embedding a text tower gives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from ..core.errors import VitConvertError
from ..formats.weights_file import Probability
from .prompts import canonicalized, prompts

# Prompts per forward of the text tower: large enough that the matrix products are efficient, small
# enough that a big tower's activations stay well under a gigabyte.
TEXT_BATCH = 256


class TextModel(Protocol):
    """What the head needs of a text tower (`vitconvert.load_text_model`'s model is one)."""

    logit_scale: float  # the factor on cosine similarities, exp(t)
    logit_bias: float  # 0 where the model has none

    def encode(self, texts: Sequence[str]) -> torch.Tensor:  # (len(texts), D), un-normalised
        ...


@dataclass(frozen=True)
class ZeroShotHead:
    weight: torch.Tensor  # (classes, D) float32: the unit class embeddings times the logit scale
    bias: torch.Tensor  # (classes,) float32: the logit bias
    classes: tuple[str, ...]
    templates: tuple[str, ...]
    probability: Probability  # how the logits become probabilities, as the model was trained


def probabilities_of(text_model: TextModel) -> Probability:
    """Sigmoid for a model trained with a per-pair bias (SigLIP's sigmoid loss), else softmax (CLIP, LiT);
    a model that says which (`probability`, as load_text_model's does) is taken at its word."""
    said = getattr(text_model, "probability", None)
    if said is not None:
        if said not in ("softmax", "sigmoid"):
            raise VitConvertError(f"text model: probability must be 'softmax' or 'sigmoid', got {said!r}")
        return said
    return "sigmoid" if float(text_model.logit_bias) != 0 else "softmax"


def _pooled_length(text_model: TextModel, ids: torch.Tensor) -> torch.Tensor | None:
    """For a causally masked tower that pools one token by the ids (CLIP's end-of-text), each row's length up
    to and including that token: what comes after it cannot change its output, so the padding after it
    need not run. None for any other tower (SigLIP's sees every position, padding included)."""
    cfg = getattr(text_model, "config", None)
    if not (getattr(cfg, "causal", False) and getattr(cfg, "pool", None) in ("argmax", "eos")):
        return None
    at = ids.argmax(dim=-1) if cfg.pool == "argmax" else (ids == cfg.eos_id).int().argmax(dim=-1)
    return at + 1


def _embedded(text_model: TextModel, texts: list[str], batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(rows of `texts`, their un-normalised embeddings), `batch_size` texts at a time. A tower that can
    (`_pooled_length`) runs its batches sorted by length and cut after the longest pooled token of each:
    the same embeddings (up to float rounding of shorter products), a fraction of the work for prompts
    much shorter than the context (ImageNet's, some 10 of CLIP's 77 tokens)."""
    tokenize = getattr(text_model, "tokenize", None)
    ids = tokenize(texts) if tokenize is not None and getattr(text_model, "config", None) is not None else None
    lengths = _pooled_length(text_model, ids) if ids is not None else None
    if lengths is None:
        for start in range(0, len(texts), batch_size):
            yield torch.arange(start, min(start + batch_size, len(texts))), text_model.encode(
                texts[start:start + batch_size])
        return
    order = lengths.argsort()
    for start in range(0, len(texts), batch_size):
        rows = order[start:start + batch_size]
        yield rows, text_model(ids[rows, :int(lengths[rows].max())])


@torch.inference_mode()
def class_embeddings(text_model: TextModel, classes: Sequence[str], templates: Sequence[str], *,
                     batch_size: int = TEXT_BATCH,
                     progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """(classes, D) float32 unit vectors: each class's prompts embedded, normalised, averaged, normalised.

    The prompts are encoded `batch_size` at a time whatever the class boundaries (`_embedded`), and reduced
    as they come, so memory holds one batch of embeddings and the running sums."""
    texts = prompts(list(classes), list(templates))
    per_class = len(templates)
    sums: torch.Tensor | None = None
    done = 0
    for rows, embedded in _embedded(text_model, texts, batch_size):
        emb = F.normalize(embedded.float(), dim=-1)
        if sums is None:
            sums = emb.new_zeros(len(classes), emb.shape[-1])
        sums.index_add_(0, (rows // per_class).to(emb.device), emb)
        done += len(rows)
        if progress:
            progress(done, len(texts))
    return F.normalize(sums / per_class, dim=-1).cpu()


def build_head(text_model: TextModel, classes: Sequence[str], templates: Sequence[str], *,
               canonicalize: bool = False, batch_size: int = TEXT_BATCH,
               progress: Callable[[int, int], None] | None = None) -> ZeroShotHead:
    """The zero-shot head of `classes` prompted with `templates` (checked by prompts.resolve_*).

    `canonicalize`: fill the templates as big_vision's evaluator does (class names and templates
    lower-cased, punctuation removed; prompts.canonicalized). The stored class names stay as given."""
    filled_classes, filled_templates = canonicalized(list(classes), list(templates)) if canonicalize \
        else (list(classes), list(templates))
    embeddings = class_embeddings(text_model, filled_classes, filled_templates, batch_size=batch_size,
                                  progress=progress)
    scale, bias = float(text_model.logit_scale), float(text_model.logit_bias)
    return ZeroShotHead(weight=embeddings * scale, bias=torch.full((len(classes),), bias),
                        classes=tuple(classes), templates=tuple(templates),
                        probability=probabilities_of(text_model))
