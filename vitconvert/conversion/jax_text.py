"""The text tower of big_vision's two-tower `.npz` files (SigLIP, SigLIP 2) and of vit_jax's LiT files with a
SentencePiece text transformer (LiT-L16S, LiT-L16Ti; vit_jax/models_lit.py TextTransformer: the same model, its
blocks numbered as vit_jax numbers them), read into our text tower (`text.*`, core/text_config.py). LiT's BERT
text towers (LiT-B16B, LiT-L16L) are another architecture, not read.

big_vision/models/proj/image_text/text_transformer.py: `Embed_0/embedding` (the token table), `pos_embedding`
(1, L, width) added to every token, `vit.Encoder` (`Encoder_0`: pre-norm blocks numbered the Linen way,
`encoderblock_N` or stacked in `encoderblock` when scanned, as SigLIP 2 stores them, then `encoder_norm`),
no attention mask, a pooling (`pool_type`, default 'last': the sticky end-of-sequence token; 'map' stores
`MAPHead_0`) and `head` (Dense to the embedding width, with bias). flax's LayerNorm eps (1e-6) and `nn.gelu`
(the tanh form). The model's ztxt is `head`'s output; two_towers.py L2-normalises it afterwards.

The npz holds no tokenizer: the SentencePiece model comes with `--tokenizer FILE` (catalog/data's manifest
names where each published file's is). big_vision's SigLIP colab tokenizes with `eos="sticky"`, padding
with id 1 for its T5 vocabularies (c4_en, mc4: `pad_value=1`, the end-of-sequence id) to 64 tokens; vit_jax's
LiT `SentencepieceTokenizer` likewise pads with '</s>' (sticky eos) to its 16.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..core.errors import VitConvertError
from ..core.text_config import TextConfig
from .jax_layouts import DENSE, IDENTITY, block_rules, map_head_rules
from .mapping import Rule, source_dims

Shape = tuple[int, ...]
TXT = "txt/"
LN_EPS = 1e-6  # flax nn.LayerNorm
# The pooling the keys cannot show: big_vision's text_transformer default, every published SigLIP's.
DEFAULT_POOL = "last"


def text_prefix(outer: str) -> str:
    return f"{outer}{TXT}"


def has_text_tower(shapes: Mapping[str, Shape], outer: str) -> bool:
    return f"{text_prefix(outer)}Embed_0/embedding" in shapes


def _scanned(shapes: Mapping[str, Shape], p: str) -> bool:
    return f"{p}Encoder_0/encoderblock/LayerNorm_0/scale" in shapes


def _block(p: str, scanned: bool) -> str:
    return f"{p}Encoder_0/encoderblock" + ("" if scanned else "_{i}")


def _names(shapes: Mapping[str, Shape], p: str, scanned: bool) -> tuple[str, str, str]:
    """(attention, MLP, second norm) sub-module names: big_vision numbers them the Linen way (its
    Encoder1DBlock: MultiHeadDotProductAttention_0, MlpBlock_0, LayerNorm_1), vit_jax's LiT text tower by
    creation order (MultiHeadDotProductAttention_1, MlpBlock_3, LayerNorm_2)."""
    first = _block(p, scanned).format(i=0)
    if f"{first}/MultiHeadDotProductAttention_1/query/kernel" in shapes:
        return "MultiHeadDotProductAttention_1", "MlpBlock_3", "LayerNorm_2"
    return "MultiHeadDotProductAttention_0", "MlpBlock_0", "LayerNorm_1"


def _depth(shapes: Mapping[str, Shape], p: str, scanned: bool, where: str) -> int:
    if scanned:
        key = f"{p}Encoder_0/encoderblock/LayerNorm_0/scale"
        source_dims(shapes, key, 1, where, 1)  # (layers, width)
        return shapes[key][0]
    pattern = re.compile(re.escape(f"{p}Encoder_0/encoderblock_") + r"(\d+)/")
    blocks = sorted({int(m[1]) for k in shapes if (m := pattern.match(k))})
    if blocks != list(range(len(blocks))):
        raise VitConvertError(f"{where}: the text tower's blocks are not numbered 0..n-1: found {blocks}")
    return len(blocks)


def text_config(shapes: Mapping[str, Shape], outer: str, act: str, where: str) -> TextConfig:
    """The text tower's architecture from the shapes; a damaged tower (a block or table missing) is named."""
    p = text_prefix(outer)
    scanned = _scanned(shapes, p)
    blk = _block(p, scanned).format(i=0)
    mha, mlp, _ = _names(shapes, p, scanned)
    needed = [f"{p}Embed_0/embedding", f"{p}pos_embedding", f"{blk}/{mha}/query/kernel", f"{blk}/{mlp}/Dense_0/kernel",
              f"{p}Encoder_0/encoder_norm/scale"]
    if missing := [k for k in needed if k not in shapes]:
        raise VitConvertError(f"{where}: the text tower is damaged: no {missing[0]}; convert with --image-only for "
                              "the image tower alone")
    vocab, width = source_dims(shapes, f"{p}Embed_0/embedding", 2, where)
    context = source_dims(shapes, f"{p}pos_embedding", 3, where)[1]
    lead = 1 if scanned else 0
    heads = source_dims(shapes, f"{blk}/{mha}/query/kernel", 3, where, lead)[1]
    mlp_dim = source_dims(shapes, f"{blk}/{mlp}/Dense_0/kernel", 2, where, lead)[1]
    embed = source_dims(shapes, f"{p}head/kernel", 2, where)[1] if f"{p}head/kernel" in shapes else 0
    map_head = any(k.startswith(f"{p}MAPHead_0/") for k in shapes)
    try:
        return TextConfig(vocab_size=vocab, context_length=context, width=width,
                          depth=_depth(shapes, p, scanned, where), num_heads=heads, mlp_dim=mlp_dim,
                          embed_dim=embed, act=act, ln_eps=LN_EPS, causal=False,
                          pool="map" if map_head else DEFAULT_POOL, proj_bias=f"{p}head/bias" in shapes)
    except VitConvertError as e:
        raise VitConvertError(f"{where}: {e}") from None


def text_rules(shapes: Mapping[str, Shape], outer: str) -> list[Rule]:
    """The table from the text tower's keys to our `text.*` tensors."""
    p = text_prefix(outer)
    scanned = _scanned(shapes, p)
    block = _block(p, scanned)

    def blk(sub: str) -> str:
        return f"{block}/{sub}" + ("[{i}]" if scanned else "")

    rules = [Rule("text.token_embed.weight", (f"{p}Embed_0/embedding",), IDENTITY),
             Rule("text.pos_embed", (f"{p}pos_embedding",), IDENTITY),
             *block_rules(blk, *_names(shapes, p, scanned), "text.", "text_block"),
             Rule("text.norm.weight", (f"{p}Encoder_0/encoder_norm/scale",), IDENTITY),
             Rule("text.norm.bias", (f"{p}Encoder_0/encoder_norm/bias",), IDENTITY),
             Rule("text.proj.weight", (f"{p}head/kernel",), DENSE, optional=True),
             Rule("text.proj.bias", (f"{p}head/bias",), IDENTITY, optional=True)]
    if any(k.startswith(f"{p}MAPHead_0/") for k in shapes):
        rules += map_head_rules(p, "text.")
    return rules


def clean(vocab_size: int) -> str:
    """The cleaning before tokenizing: SigLIP 2's colab lower-cases (`lower(key="text")|tok(..., model="gemma")`,
    tf.strings.lower: 'lowercase'), which the Gemma vocabulary (256,000 tokens) marks; SigLIP's and LiT's
    tokenize the text as given."""
    return "lowercase" if vocab_size == 256_000 else "none"


def pad_token(vocab_size: int) -> str:
    """The padding big_vision's colabs tokenize with: SigLIP 2's Gemma vocabulary (256,000 tokens) pads with
    '<pad>' (id 0); SigLIP's T5 vocabularies with the end-of-sequence token '</s>' (`pad_value=1`)."""
    return "<pad>" if vocab_size == 256_000 else "</s>"

