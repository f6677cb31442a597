"""Small two-tower models with random weights, written as their sources write them, and what the tests compare
with: each source's own model and tokenizer (open_clip, transformers), never our package."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

TEXTS = ["a photo of a cat.", "A DOG, in the sky!", "hello_world: naïve café", "it's  two   spaces", "x"]
CORPUS = ["a photo of a cat", "a photo of a dog", "the quick brown fox jumps over the lazy dog",
          "an image of many birds in the sky", "hello world this is a test of sentencepiece"]


def perturb(model: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> None:
    """Random offsets on every parameter, norms included, so that no weight is at its initial value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def train_sentencepiece(folder: Path) -> Path:
    """A tiny SentencePiece model in T5's id layout (pad 0, </s> 1, <unk> 2), trained here."""
    import sentencepiece as spm

    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 20))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "sp"), vocab_size=36,
                                   model_type="unigram", hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2,
                                   bos_id=-1, minloglevel=2, character_coverage=1.0)
    return folder / "sp.model"


def save_state_dict(model: torch.nn.Module, folder: Path, model_cfg: dict, name: str = "model.pth",
                    preprocess_cfg: dict | None = None) -> Path:
    """The state dict and open_clip_config.json beside it, as the hub's OpenCLIP repositories hold them."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / name)
    config = {"model_cfg": model_cfg, **({"preprocess_cfg": preprocess_cfg} if preprocess_cfg else {})}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    return folder / name


def logits(image: torch.Tensor, text: torch.Tensor, scale: float, bias: float) -> torch.Tensor:
    """The two-tower logits from un-normalised embeddings: cos(img, txt) * scale + bias."""
    return F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T * scale + bias


TINY_SIGLIP = "vit_tiny_siglip_vitconvert_test"


def register_tiny_siglip() -> str:
    """A SigLIP-shaped timm ViT small enough for a test (no class token, attention pooling, gelu_tanh),
    registered in timm's registry under TINY_SIGLIP, as OpenCLIP's timm trunks name theirs."""
    import sys

    import timm
    from timm.models import generate_default_cfgs, register_model
    from timm.models.vision_transformer import _cfg, _create_vision_transformer

    if timm.is_model(TINY_SIGLIP):
        return TINY_SIGLIP
    module = sys.modules[__name__]
    module.default_cfgs = generate_default_cfgs({TINY_SIGLIP: _cfg(input_size=(3, 32, 32), mean=(0.5, 0.5, 0.5),
                                                                     std=(0.5, 0.5, 0.5), num_classes=0)})

    def vit_tiny_siglip_vitconvert_test(pretrained: bool = False, **kwargs: object) -> torch.nn.Module:
        args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0, class_token=False,
                    global_pool="map", act_layer="gelu_tanh")
        return _create_vision_transformer(TINY_SIGLIP, pretrained=pretrained, **{**args, **kwargs})

    vit_tiny_siglip_vitconvert_test.__module__ = __name__
    register_model(vit_tiny_siglip_vitconvert_test)
    return TINY_SIGLIP
