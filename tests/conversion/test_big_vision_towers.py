"""big_vision's two-tower `.npz` (SigLIP: per-layer text blocks; SigLIP 2: scanned) converted with both towers
(`--tokenizer FILE`, a SentencePiece model trained here): the text embeddings are big_vision's ztxt (its text
transformer written out in tests/helpers/big_vision_layouts.py, fed the ids SentencePiece itself makes, ended
and padded as big_vision's SigLIP colab tokenizes: eos 'sticky', pad 1), and a zero-shot head built from the
file gives big_vision's zero-shot probabilities (its evaluator's canonicalized prompts, normalised and averaged
text embeddings; the SigLIP colab's sigmoid(zimg @ ztxt.T * exp(t) + b)).

The images are fed to both as our Predictor prepares them: preprocessing is not what this file specifies."""

from __future__ import annotations

import io
from pathlib import Path

import helpers.big_vision_layouts as bv
import numpy as np
import pytest
import sentencepiece as spm
import torch

from vitconvert import convert, load_text_model
from vitconvert.core.errors import VitConvertError
from vitconvert.formats.weights_file import read_record
from vitconvert.inference.predictor import Predictor
from vitconvert.zeroshot.classifier import ZeroShotRequest, build_zeroshot_classifier

DATA = Path(__file__).parents[1] / "data"
# float32 towers of two blocks against the float64 reference: observed 3.8e-7 on text embeddings of entries up
# to 2.3, 1.1e-7 on the probabilities (of 0.1 to 0.5).
ATOL = 2e-6
PROB_ATOL = 5e-7
TEXT = bv.BigVisionText()
IMAGE = bv.BigVision(width=32, depth=2, heads=2, mlp=64, patch=8, grid=(4, 4), pool="map", num_classes=TEXT.out)
T, B = 2.3, -1.0
CORPUS = ["a photo of a cat", "a photo of a dog", "the bird in the sky", "a small fish", "art of the tabby cat",
          "a blurry photo", "itap of a car", "a painting of a house", "the origami crane", "a sketch of a tree"] * 20


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory) -> Path:
    """A T5-style SentencePiece vocabulary: <pad> 0, </s> 1, <unk> 2, no <s>; smaller than the text tower's."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=36, minloglevel=2,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, model_type="unigram",
                                   character_coverage=1.0)
    path = tmp_path_factory.mktemp("spm") / "spiece.model"
    path.write_bytes(model.getvalue())
    return path


def reference_ids(texts: list[str], model: Path, length: int) -> np.ndarray:
    """big_vision's tokenize(max_len, eos='sticky', pad_value=1): the pieces, cut to keep the end id last."""
    sp = spm.SentencePieceProcessor(model_file=str(model))
    rows = []
    for t in texts:
        ids = sp.encode(t)[:length - 1] + [sp.eos_id()]
        rows.append(ids + [1] * (length - len(ids)))
    return np.array(rows)


@pytest.fixture(scope="module", params=["per-layer", "scanned"])
def siglip(request, tmp_path_factory, sentencepiece_model):
    text = bv.random_text_params(TEXT)
    image = bv.random_params(IMAGE, seed=3)
    folder = tmp_path_factory.mktemp(request.param)
    bv.write_npz(folder / "siglip.npz", bv.siglip_npz(image, bv.scan_text(text) if request.param == "scanned" else
                                                      text, T, B))
    out = folder / "siglip.safetensors"
    convert(folder / "siglip.npz", out, tokenizer=str(sentencepiece_model))
    return text, image, out


def test_both_towers_are_kept_with_the_temperature_and_bias(siglip):
    _, _, out = siglip
    record = read_record(out)
    assert record.head_is_embedding and record.text is not None
    assert record.text.probability == "sigmoid" and record.text.logit_bias == B
    assert record.text.logit_scale == pytest.approx(np.exp(np.float32(T)), rel=1e-7)
    assert record.text.config.causal is False and record.text.config.pool == "last"


def test_the_token_ids_are_sentencepieces_as_big_vision_pads_them(siglip, sentencepiece_model):
    texts = ["a photo of a cat", "the origami crane in the sky " * 4]  # the second is cut to the context
    with pytest.warns(UserWarning):
        ours = load_text_model(siglip[2]).tokenize(texts)
    assert ours.tolist() == reference_ids(texts, sentencepiece_model, TEXT.length).tolist()


def test_text_embeddings_are_big_visions_ztxt(siglip, sentencepiece_model):
    text, _, out = siglip
    texts = ["a photo of a cat", "a small fish", "itap of a car"]
    theirs = bv.text_forward(text, reference_ids(texts, sentencepiece_model, TEXT.length), TEXT)
    torch.testing.assert_close(load_text_model(out).encode(texts).double(), theirs, atol=ATOL, rtol=0)


def test_zero_shot_probabilities_are_big_visions(siglip, sentencepiece_model, tmp_path):
    text, image, out = siglip
    classes, templates = ["Cat", "Tabby cat", "St. Bernard, dog"], ["A photo of a {}.", "art of the {}!"]
    head = tmp_path / "zs.safetensors"
    build_zeroshot_classifier(out, head, ZeroShotRequest(classes, templates))
    predictor = Predictor(head)
    images = [DATA / "cat.jpg", DATA / "camera_gray.png"]
    x = torch.stack([predictor.transform(p) for p in images])
    # The evaluator: names canonicalized keeping ',', templates keeping '{}', filled, embedded, averaged.
    names = [bv.canonicalize_text(c, keep_punctuation_exact_string=",") for c in classes]
    filled = [bv.canonicalize_text(t, keep_punctuation_exact_string="{}").replace("{}", n)
              for n in names for t in templates]
    ztxt = bv.average_embeddings(bv.normalize(bv.text_forward(
        text, reference_ids(filled, sentencepiece_model, TEXT.length), TEXT)), len(templates))
    zimg = bv.normalize(bv.forward(image, x, IMAGE)["out"])
    theirs = torch.sigmoid(zimg @ ztxt.T * np.exp(np.float32(T)) + B)
    torch.testing.assert_close(predictor.probabilities(images).double(), theirs, atol=PROB_ATOL, rtol=0)
    assert read_record(head).labels == tuple(classes)


def test_without_a_tokenizer_the_image_tower_is_converted_alone_saying_how_to_keep_both(tmp_path):
    bv.write_npz(tmp_path / "siglip.npz", bv.siglip_npz(bv.random_params(IMAGE), bv.random_text_params(TEXT), T, B))
    record = convert(tmp_path / "siglip.npz", tmp_path / "img.safetensors")
    assert record.text is None and any("--tokenizer FILE" in n for n in record.notes)


def test_a_damaged_text_tower_is_one_line_and_writes_nothing(tmp_path, sentencepiece_model):
    text = bv.random_text_params(TEXT)
    del text["Encoder_0/encoder_norm/scale"]
    bv.write_npz(tmp_path / "siglip.npz", bv.siglip_npz(bv.random_params(IMAGE), text, T, B))
    with pytest.raises(VitConvertError, match="the text tower is damaged: no params/txt/Encoder_0/encoder_norm"):
        convert(tmp_path / "siglip.npz", tmp_path / "out.safetensors", tokenizer=str(sentencepiece_model))
    assert not (tmp_path / "out.safetensors").exists()


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(tmp_path, sentencepiece_model):
    small = bv.BigVisionText(vocab=30)
    bv.write_npz(tmp_path / "siglip.npz", bv.siglip_npz(bv.random_params(IMAGE), bv.random_text_params(small), T, B))
    with pytest.raises(VitConvertError, match="the tokenizer has 36 tokens but the text tower embeds 30"):
        convert(tmp_path / "siglip.npz", tmp_path / "out.safetensors", tokenizer=str(sentencepiece_model))


def test_the_record_says_the_text_tower_was_kept_not_left_out(siglip):
    notes = read_record(siglip[2]).notes
    assert any(n.startswith("text tower: 2 blocks, 32-wide, pool last") for n in notes)
    assert not any("left out" in n and "txt/" in n for n in notes)


def test_a_lit_file_keeps_its_sentencepiece_text_tower_with_softmax_probabilities(tmp_path, sentencepiece_model):
    """vit_jax's LiT layout: the towers at the top (img/, txt/), vit_jax's block numbering, `t` without `b`."""
    lit = bv.BigVisionText(vit_jax=True)
    text = bv.random_text_params(lit)
    image = bv.random_params(IMAGE, seed=5)
    bv.write_npz(tmp_path / "lit.npz", bv.siglip_npz(image, text, T, None, outer=""))
    out = tmp_path / "lit.safetensors"
    record = convert(tmp_path / "lit.npz", out, tokenizer=str(sentencepiece_model))
    assert record.text.probability == "softmax" and record.text.logit_bias == 0.0
    texts = ["a photo of a cat", "a sketch of a tree"]
    theirs = bv.text_forward(text, reference_ids(texts, sentencepiece_model, lit.length), lit)
    torch.testing.assert_close(load_text_model(out).encode(texts).double(), theirs, atol=ATOL, rtol=0)


def test_a_siglip2_file_lower_cases_texts_as_its_colab_does(tmp_path):
    """SigLIP 2's Gemma vocabulary (256,000 rows) marks its `lower(key="text")` before tokenizing; no other
    vocabulary's texts are changed."""
    from vitconvert.conversion.jax_text import clean

    assert clean(256_000) == "lowercase" and clean(32_000) == clean(250_000) == clean(16_000) == "none"
