"""The zero-shot head against OpenCLIP's own builder (`build_zero_shot_classifier`) on an OpenCLIP model
with random weights and OpenCLIP's tokenizer: the same class embeddings, and the head's logits on unit
image embeddings are OpenCLIP's `logit_scale * img @ classifier` (plus the bias, for a model with one).

The text tower is reached through the duck-typed interface the builder takes (`encode`, `logit_scale`,
`logit_bias`), here OpenCLIP's `encode_text` itself, so what is specified is the averaging, the
normalisation and the folding, not a text tower."""

from __future__ import annotations

import math

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.zero_shot_classifier import build_zero_shot_classifier

from vitconvert.zeroshot.head import build_head, class_embeddings, probabilities_of
from vitconvert.zeroshot.prompts import canonicalized, resolve_classes, resolve_templates

# float32 embeddings of unit length through a small random tower; observed differences are ~1e-7.
ATOL = 1e-6


class OpenClipText:
    """OpenCLIP's text tower behind the builder's interface."""

    def __init__(self, model: open_clip.CLIP, tokenizer, logit_bias: float = 0.0) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.logit_scale = model.logit_scale.exp().item()
        self.logit_bias = logit_bias
        self.calls: list[int] = []

    def encode(self, texts):
        self.calls.append(len(texts))
        return self.model.encode_text(self.tokenizer(list(texts)))


@pytest.fixture(scope="module")
def clip_model() -> open_clip.CLIP:
    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=24,
        vision_cfg=open_clip.model.CLIPVisionCfg(layers=1, width=32, patch_size=16, image_size=32, head_width=16),
        text_cfg=open_clip.model.CLIPTextCfg(layers=2, width=32, heads=2, context_length=77),
    ).eval()
    with torch.no_grad():  # a logit scale other than OpenCLIP's init, so that folding it is seen
        model.logit_scale.fill_(math.log(37.5))
    return model


@pytest.fixture(scope="module")
def tokenizer():
    return open_clip.get_tokenizer("ViT-B-32")  # CLIP's BPE, bundled with open_clip


CLASSES = resolve_classes("imagenet-1k")[:23]
TEMPLATES = resolve_templates("imagenet-simple")


def test_class_embeddings_are_openclips_zero_shot_classifier(clip_model, tokenizer):
    text = OpenClipText(clip_model, tokenizer)
    theirs = build_zero_shot_classifier(clip_model, tokenizer, CLASSES, TEMPLATES, num_classes_per_batch=10)
    ours = class_embeddings(text, CLASSES, TEMPLATES, batch_size=17)  # batches across class boundaries
    torch.testing.assert_close(ours, theirs.T, atol=ATOL, rtol=0)
    assert text.calls == [17] * 9 + [161 - 9 * 17]


def test_the_head_on_unit_image_embeddings_gives_openclips_logits(clip_model, tokenizer):
    text = OpenClipText(clip_model, tokenizer)
    head = build_head(text, CLASSES, TEMPLATES)
    classifier = build_zero_shot_classifier(clip_model, tokenizer, CLASSES, TEMPLATES)
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        img = clip_model.encode_image(images, normalize=True)
        theirs = clip_model.logit_scale.exp() * img @ classifier
    torch.testing.assert_close(F.linear(img, head.weight, head.bias), theirs, atol=ATOL * 40, rtol=0)
    assert head.classes == tuple(CLASSES) and head.probability == "softmax"


def test_a_bias_is_folded_in_and_makes_the_probabilities_sigmoid(clip_model, tokenizer):
    text = OpenClipText(clip_model, tokenizer, logit_bias=-10.0)
    head = build_head(text, CLASSES[:3], ["a photo of a {}."])
    assert head.bias.tolist() == [-10.0] * 3
    assert head.probability == "sigmoid" and probabilities_of(OpenClipText(clip_model, tokenizer)) == "softmax"


def test_canonicalize_fills_the_templates_as_big_visions_evaluator_but_keeps_the_given_names(clip_model, tokenizer):
    text = OpenClipText(clip_model, tokenizer)
    classes = ["St. Bernard", "Geoffroy's spider monkey"]
    head = build_head(text, classes, ["A photo of a {}."], canonicalize=True)
    names, templates = canonicalized(classes, ["A photo of a {}."])
    assert names == ["st bernard", "geoffroys spider monkey"] and templates == ["a photo of a {}"]
    theirs = build_zero_shot_classifier(clip_model, tokenizer, names, templates)
    torch.testing.assert_close(head.weight, theirs.T * text.logit_scale, atol=ATOL * 40, rtol=0)
    assert head.classes == tuple(classes)
