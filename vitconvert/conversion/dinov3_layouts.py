"""DINOv3's own ViT release files as data: the architectures of facebookresearch/dinov3's hub
(dinov3/hub/backbones.py), and which of a release file's tensors make which of ours.

DinoVisionTransformer (dinov3/models/vision_transformer.py) names its tensors `cls_token`, `storage_tokens`
(timm's and our register tokens), `mask_token`, `rope_embed.periods`, `patch_embed.proj`, `blocks.N.{norm1,
attn.qkv (+ bias_mask), attn.proj, ls1.gamma, norm2, mlp.fc1/fc2 or SwiGLU's w1/w2/w3, ls2.gamma}`, `norm`,
and the 7B's and some L's `local_cls_norm`. Every release shares the hub's settings in `HUB`; the families
differ in width, depth, heads, MLP and the query/key/value bias, all of which the tensors show but the head
count, which the RoPE periods show (head_dim / 4 of them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .mapping import IDENTITY, Op, Rule, Shape


@dataclass(frozen=True)
class Architecture:
    name: str  # as DINOv3's README names it
    hub: str  # dinov3/hub/backbones.py's function
    embed_dim: int
    depth: int
    num_heads: int
    ffn: str  # 'mlp' or 'swiglu' (w1/w2/w3)
    qkv_bias: bool


# Every ViT of the hub (patch 16, 4 storage tokens, layer scale, LayerNorm eps 1e-5 ('layernormbf16'), RoPE
# base 100 with 'separate' coordinates; the masked key bias where qkv has a bias).
ARCHITECTURES = (
    Architecture("ViT-S/16 distilled", "dinov3_vits16", 384, 12, 6, "mlp", True),
    Architecture("ViT-S+/16 distilled", "dinov3_vits16plus", 384, 12, 6, "swiglu", True),
    Architecture("ViT-B/16 distilled", "dinov3_vitb16", 768, 12, 12, "mlp", True),
    Architecture("ViT-L/16 distilled", "dinov3_vitl16", 1024, 24, 16, "mlp", True),
    Architecture("ViT-L+/16 distilled", "dinov3_vitl16plus", 1024, 24, 16, "swiglu", True),
    Architecture("ViT-H+/16 distilled", "dinov3_vith16plus", 1280, 32, 20, "swiglu", True),
    Architecture("ViT-7B/16", "dinov3_vit7b16", 4096, 40, 32, "swiglu", False),
)
HUB = dict(patch_size=16, rope_base=100.0, ln_eps=1e-5)


def architecture(embed_dim: int, depth: int, num_heads: int, ffn: str, qkv_bias: bool) -> Architecture | None:
    """The hub's architecture these tensors are, if any."""
    return next((a for a in ARCHITECTURES if (a.embed_dim, a.depth, a.num_heads, a.ffn, a.qkv_bias)
                 == (embed_dim, depth, num_heads, ffn, qkv_bias)), None)


# Source keys no target is made from, each with why (the pipeline records them as left out).
MASK_TOKEN = "iBOT's masked-patch token, pre-training only: at inference DINOv3 adds 0 * mask_token"
PERIODS = "the RoPE periods, which our model computes from the base: checked equal"
BIAS_MASK = ("the mask that zeroes the key bias, checked: the query and value biases are kept as "
             "attn.q_bias and attn.v_bias")
LOCAL_CLS_NORM = ("the local crops' class-token norm, used in training only (untie_global_and_local_cls_norm; "
                  "DINOv3's inference uses norm)")


def _third(which: int) -> Op:
    """One of the q, k, v thirds of a (3 D,) qkv bias."""
    def shape(s: Shape) -> Shape:
        if len(s) != 1 or s[0] % 3:
            raise ValueError("expected a (3 D,) qkv bias")
        return (s[0] // 3,)

    def apply(a: np.ndarray) -> np.ndarray:
        d = a.shape[0] // 3
        return a[which * d:(which + 1) * d]

    return Op(f"qkv bias third {which}", apply, shape)


def key_mask(d: int) -> np.ndarray:
    """The bias mask DINOv3's init_weights writes: 1 on the query and value rows, 0 on the key rows."""
    mask = np.ones(3 * d, dtype=np.float32)
    mask[d:2 * d] = 0
    return mask


def rules(ffn: str, qkv_bias: bool, masked_key_bias: bool) -> list[Rule]:
    """Our tensors from a release file's, for its MLP kind and qkv bias."""
    table = [Rule("cls_token", ("cls_token",), IDENTITY), Rule("reg_token", ("storage_tokens",), IDENTITY)]
    table += [Rule(f"patch_embed.proj.{p}", (f"patch_embed.proj.{p}",), IDENTITY) for p in ("weight", "bias")]
    block = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.proj.weight", "attn.proj.bias", "ls1.gamma",
             "norm2.weight", "norm2.bias", "ls2.gamma"]
    block += [f"mlp.{n}.{p}" for n in ("fc1", "fc2") for p in ("weight", "bias")] if ffn == "mlp" else []
    table += [Rule(f"blocks.{{i}}.{k}", (f"blocks.{{i}}.{k}",), IDENTITY, over="block") for k in block]
    if ffn == "swiglu":  # silu(w1 x) * w2 x, then w3: timm's SwiGLU is act(fc1_g x) * fc1_x x, then fc2
        table += [Rule(f"blocks.{{i}}.mlp.{ours}.{p}", (f"blocks.{{i}}.mlp.{theirs}.{p}",), IDENTITY, over="block")
                  for ours, theirs in (("fc1_g", "w1"), ("fc1_x", "w2"), ("fc2", "w3")) for p in ("weight", "bias")]
    if qkv_bias and masked_key_bias:
        table += [Rule(f"blocks.{{i}}.attn.{name}", ("blocks.{i}.attn.qkv.bias",), _third(which), over="block")
                  for name, which in (("q_bias", 0), ("v_bias", 2))]
    elif qkv_bias:
        table.append(Rule("blocks.{i}.attn.qkv.bias", ("blocks.{i}.attn.qkv.bias",), IDENTITY, over="block"))
    return table + [Rule(f"norm.{p}", (f"norm.{p}",), IDENTITY) for p in ("weight", "bias")]
