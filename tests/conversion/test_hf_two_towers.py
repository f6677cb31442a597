"""transformers' CLIPModel, SiglipModel and Siglip2Model (at its trained grid) with random weights and small
configs, saved with their tokenizers: our embeddings, logits and ids against transformers' own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers.two_towers import TEXTS, logits, perturb, train_sentencepiece

import vitconvert
from vitconvert.core.errors import VitConvertError

transformers = pytest.importorskip("transformers")

# float32, two blocks per tower: the largest differences seen were 1.4e-7 (image), 5e-7 (text), 6e-7 (logits).
TOL = 1e-5
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=16)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, patch_size=8)


def _save(model: torch.nn.Module, tokenizer: object, folder: Path) -> Path:
    perturb(model)
    with torch.no_grad():
        model.logit_scale.fill_(2.0)
        if hasattr(model, "logit_bias"):
            model.logit_bias.fill_(-3.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def spiece(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_sentencepiece(tmp_path_factory.mktemp("sp"))


@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> object:
    """transformers' CLIPTokenizer on OpenAI's vocabulary, written out from open_clip's own tokenizer."""
    open_clip = pytest.importorskip("open_clip")
    folder = tmp_path_factory.mktemp("clip-vocab")
    simple = open_clip.tokenizer.SimpleTokenizer()
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {names.get(t, t): i for t, i in simple.encoder.items()}
    merges = sorted(simple.bpe_ranks, key=simple.bpe_ranks.get)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)


def _check(model: torch.nn.Module, dst: Path, ids: torch.Tensor, size: int = 32) -> None:
    image, text = vitconvert.load_model(dst), vitconvert.load_text_model(dst)
    assert torch.equal(text.tokenize(TEXTS), ids)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=x)
        ours_image, ours_text = image(x), text(ids)
        ref_text = model.get_text_features(input_ids=ids)
        ref_text = getattr(ref_text, "pooler_output", ref_text)
    assert (F.normalize(ours_image, dim=-1) - out.image_embeds).abs().max() < TOL
    assert (ours_text - ref_text).abs().max() < TOL
    assert (logits(ours_image, ours_text, text.logit_scale, text.logit_bias) - out.logits_per_image).abs().max() < TOL


def test_clipmodel_reproduces_transformers_with_its_tokenizer(tmp_path: Path, clip_tokenizer: object) -> None:
    config = transformers.CLIPConfig(text_config={**TEXT, "vocab_size": 49408},
                                     vision_config={**VISION, "image_size": 32}, projection_dim=24)
    torch.manual_seed(0)
    src = _save(transformers.CLIPModel(config).eval(), clip_tokenizer, tmp_path / "clip")
    record = vitconvert.convert(src, tmp_path / "clip.safetensors")
    assert record.source.format == "transformers/CLIPModel" and record.text.probability == "softmax"
    assert record.preprocess.resize == "crop" and record.preprocess.interpolation == "bicubic"
    ids = clip_tokenizer(TEXTS, padding="max_length", max_length=16, truncation=True, return_tensors="pt").input_ids
    _check(transformers.CLIPModel.from_pretrained(src).eval(), tmp_path / "clip.safetensors", ids)


def test_siglipmodel_reproduces_transformers_padded_to_the_maximum_length(tmp_path: Path, spiece: Path) -> None:
    config = transformers.SiglipConfig(text_config={**TEXT, "vocab_size": 40},
                                       vision_config={**VISION, "image_size": 32})
    torch.manual_seed(0)
    tokenizer = transformers.SiglipTokenizer(str(spiece), model_max_length=16)
    src = _save(transformers.SiglipModel(config).eval(), tokenizer, tmp_path / "siglip")
    record = vitconvert.convert(src, tmp_path / "siglip.safetensors")
    assert record.text.probability == "sigmoid" and record.text.logit_bias == -3.0
    assert record.text.tokenizer.kind == "sentencepiece" and record.text.tokenizer.pad_id == 1
    assert record.preprocess.resize == "squash" and record.preprocess.mean == (0.5, 0.5, 0.5)
    ids = tokenizer(TEXTS, padding="max_length", max_length=16, truncation=True, return_tensors="pt").input_ids
    _check(transformers.SiglipModel.from_pretrained(src).eval(), tmp_path / "siglip.safetensors", ids)


def test_siglip2model_at_its_trained_grid_reproduces_transformers(tmp_path: Path, spiece: Path) -> None:
    config = transformers.Siglip2Config(text_config={**TEXT, "vocab_size": 40},
                                        vision_config={**VISION, "num_patches": 16})
    torch.manual_seed(0)
    tokenizer = transformers.SiglipTokenizer(str(spiece), model_max_length=16)
    src = _save(transformers.Siglip2Model(config).eval(), tokenizer, tmp_path / "siglip2")
    dst = tmp_path / "siglip2.safetensors"
    record = vitconvert.convert(src, dst)
    assert record.config.img_size == (32, 32) and record.source.format == "transformers/Siglip2Model"
    model = transformers.Siglip2Model.from_pretrained(src).eval()
    ids = tokenizer(TEXTS, padding="max_length", max_length=16, truncation=True, return_tensors="pt").input_ids
    image, text = vitconvert.load_model(dst), vitconvert.load_text_model(dst)
    assert torch.equal(text.tokenize(TEXTS), ids)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    # transformers' NaFlex input: (row, column, channel)-flattened patches, their grid, every patch valid
    patches = x.reshape(2, 3, 4, 8, 4, 8).permute(0, 2, 4, 3, 5, 1).reshape(2, 16, 8 * 8 * 3)
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=patches, pixel_attention_mask=torch.ones(2, 16, dtype=torch.long),
                    spatial_shapes=torch.tensor([[4, 4], [4, 4]]))
        ours_image, ours_text = image(x), text(ids)
    assert (F.normalize(ours_image, dim=-1) - out.image_embeds).abs().max() < TOL
    assert (F.normalize(ours_text, dim=-1) - out.text_embeds).abs().max() < TOL
    assert (logits(ours_image, ours_text, text.logit_scale, text.logit_bias) - out.logits_per_image).abs().max() < TOL


def test_image_only_and_a_damaged_tower(tmp_path: Path, spiece: Path) -> None:
    config = transformers.SiglipConfig(text_config={**TEXT, "vocab_size": 40},
                                       vision_config={**VISION, "image_size": 32})
    src = _save(transformers.SiglipModel(config).eval(), transformers.SiglipTokenizer(str(spiece)), tmp_path / "s")
    record = vitconvert.convert(src, tmp_path / "image.safetensors", image_only=True)
    assert record.text is None and record.config.num_classes == 0
    (src / "spiece.model").unlink()
    with pytest.raises(VitConvertError, match="no tokenizer beside it.*--tokenizer FILE"):
        vitconvert.convert(src, tmp_path / "x.safetensors")
    record = vitconvert.convert(src, tmp_path / "given.safetensors", tokenizer=str(spiece))
    assert record.text.tokenizer.kind == "sentencepiece"
    from safetensors.torch import load_file, save_file

    state = load_file(src / "model.safetensors")
    del state["text_model.final_layer_norm.bias"]
    save_file(state, src / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(VitConvertError, match="missing keys: text_model.final_layer_norm.bias") as e:
        vitconvert.convert(src, tmp_path / "out.safetensors", tokenizer=str(spiece))
    assert "\n" not in str(e.value) and not (tmp_path / "out.safetensors").exists()


def test_a_siglip_tokenizer_json_without_lowercasing_is_lower_cased_as_siglip2_was_trained(tmp_path: Path) -> None:
    from helpers.two_towers import CORPUS
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS * 5, trainers.BpeTrainer(vocab_size=40, special_tokens=["<pad>", "<eos>", "<unk>"]))
    tok.post_processor = processors.TemplateProcessing(single="$A <eos>", special_tokens=[("<eos>", 1)])
    reference = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    config = transformers.SiglipConfig(text_config={**TEXT, "vocab_size": 40},
                                       vision_config={**VISION, "image_size": 32})
    src = _save(transformers.SiglipModel(config).eval(), reference, tmp_path / "s")
    record = vitconvert.convert(src, tmp_path / "s.safetensors")
    assert record.text.tokenizer.clean == "lowercase" and record.text.tokenizer.pad_id == 0
    text = vitconvert.load_text_model(tmp_path / "s.safetensors")
    expected = reference([t.lower() for t in TEXTS], padding="max_length", max_length=16, truncation=True).input_ids
    assert text.tokenize(TEXTS).tolist() == expected
