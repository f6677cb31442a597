"""The one description of a ViT architecture.

`ViTConfig` is frozen and is the only way a model gets built: converters infer it from array shapes,
the weights file stores it as JSON, and `build_model` reads it back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

from .errors import VitConvertError
from .json_types import is_int, is_real, is_size

# The enums are the Literals: the tuples of accepted values come from them (`get_args`), so that the type
# a checker sees and the values a file's JSON is checked against cannot drift apart.
# 'gap' is timm's 'avg' (the name predates the others and stays, so older files keep their meaning).
Pool = Literal["token", "gap", "avgmax", "max", "map", "none"]
POOLS: tuple[Pool, ...] = get_args(Pool)
Activation = Literal["gelu", "gelu_tanh", "quick_gelu", "silu", "relu"]
ACTIVATIONS: tuple[Activation, ...] = get_args(Activation)
Norm = Literal["layernorm", "rmsnorm"]
NORMS: tuple[Norm, ...] = get_args(Norm)
# timm's MLP classes: Mlp; GluMlp (fc1 packs value and gate, the gate second); SwiGLUPacked (GluMlp
# with the gate first); SwiGLU (fc1_g and fc1_x apart). The activation is always `act`.
MlpKind = Literal["mlp", "glu", "swiglu_packed", "swiglu"]
MLPS: tuple[MlpKind, ...] = get_args(MlpKind)
# timm's Block (pre-norm), ResPostBlock (the norms after the branches) and ParallelScalingBlock (attention
# and MLP side by side, from one fused input projection); post_norm is torch's TransformerEncoderLayer with
# norm_first=False (the norm after each residual sum: norm(x + attn(x)), which timm's blocks do not build).
BlockKind = Literal["pre_norm", "res_post", "parallel", "post_norm"]
BLOCK_KINDS: tuple[BlockKind, ...] = get_args(BlockKind)
# learn: a stored table (timm's); none; sincos2d: a fixed 2-D sin-cos table computed for the patch grid
# (big_vision's posemb_sincos_2d, lucidrains' SimpleViT), added to the patch tokens only and never stored.
PosEmbed = Literal["learn", "none", "sincos2d"]
POS_EMBEDS: tuple[PosEmbed, ...] = get_args(PosEmbed)
# How a stored position table is resampled for another grid: the methods of model/posembed.py (its RESIZERS,
# which a test holds equal to these), each one source's own.
PosResize = Literal["bicubic", "dino", "flexivit", "transformers", "torchvision"]
POS_RESIZES: tuple[PosResize, ...] = get_args(PosResize)
# The hybrid ResNetV2 as vit_jax and timm build it (Big Transfer's), or jeonsworld/ViT-pytorch's port of it.
HybridVariant = Literal["bit", "jeonsworld"]
HYBRID_VARIANTS: tuple[HybridVariant, ...] = get_args(HybridVariant)
# What the head reads: the features as they are, or scaled to unit length (a zero-shot head's cosines).
HeadNorm = Literal["none", "l2"]
HEAD_NORMS: tuple[HeadNorm, ...] = get_args(HeadNorm)
# The representation layer's activation: tanh (the 2020 ImageNet-21k models) or none (a two-tower image
# projection, kept before a zero-shot head).
PreLogitsAct = Literal["tanh", "none"]
PRE_LOGITS_ACTS: tuple[PreLogitsAct, ...] = get_args(PreLogitsAct)
# The rotary position embeddings of timm's Eva (layers/pos_embed_sincos.py), each computed for the input's grid:
# cat: RotaryEmbeddingCat (EVA-02, PE, timm's SBB and Naver's axial RoPE-ViT): fixed inverse-temperature
# frequencies on patch indices; mixed: RotaryEmbeddingMixed (Naver's RoPE-Mixed): learned per-block, per-head
# frequencies (`rope.freqs`); dinov3: RotaryEmbeddingDinoV3: periods on centred coordinates normalised to [-1, 1].
RopeKind = Literal["none", "cat", "mixed", "dinov3"]
ROPE_KINDS: tuple[RopeKind, ...] = get_args(RopeKind)
# meshgrid's indexing: ij keeps the coordinate channels (row, column); xy swaps them (column, row).
GridIndexing = Literal["ij", "xy"]
GRID_INDEXINGS: tuple[GridIndexing, ...] = get_args(GridIndexing)
# How DINOv3's centred coordinates are divided: each axis by its own size, or both by the smaller or larger.
RopeNormalize = Literal["separate", "min", "max"]
ROPE_NORMALIZES: tuple[RopeNormalize, ...] = get_args(RopeNormalize)
# How a relative position bias table is resampled for another grid: the rules of model/relpos.py (its
# RESIZERS, which a test holds equal to these), timm's and transformers'.
RelPosResize = Literal["timm", "transformers"]
REL_POS_RESIZES: tuple[RelPosResize, ...] = get_args(RelPosResize)

# name -> (embed_dim, depth, num_heads, mlp_dim), as in the ViT and DeiT papers.
WIDTHS: dict[str, tuple[int, int, int, int]] = {
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "H": (1280, 32, 16, 5120),
}
PATCHES = (8, 14, 16, 32)
# The hybrid ResNet normalizes with GroupNorm(32 groups): every width in it must divide into them.
GN_GROUPS = 32
_POSITIVE_INTS = ("in_chans", "embed_dim", "depth", "num_heads", "mlp_dim", "hybrid_width")
_COUNTS = ("num_classes", "reg_tokens")  # zero allowed
_BOOLS = ("fc_norm", "distilled", "qkv_bias", "no_embed_class", "pool_include_prefix", "final_norm", "pre_norm",
          "patch_bias", "patch_norm", "layer_scale", "qk_norm", "scale_attn_norm", "scale_mlp_norm", "proj_bias",
          "patch_pre_norm", "k_bias", "mlp_layer_scale", "rope_rotate_half", "rel_pos_bias",
          "shared_rel_pos_bias")
_CHOICES = {"pool": POOLS, "act": ACTIVATIONS, "norm": NORMS, "mlp": MLPS, "block": BLOCK_KINDS,
            "pos_embed": POS_EMBEDS, "pos_resize": POS_RESIZES, "hybrid_variant": HYBRID_VARIANTS,
            "head_norm": HEAD_NORMS, "pre_logits_act": PRE_LOGITS_ACTS,
            "rope": ROPE_KINDS, "rope_grid_indexing": GRID_INDEXINGS, "rope_normalize_coords": ROPE_NORMALIZES,
            "rel_pos_resize": REL_POS_RESIZES}


@dataclass(frozen=True)
class ViTConfig:
    """Every field has the default that files written before it existed mean (docs/weights-file.md).

    Names follow timm's VisionTransformer arguments where it has one; the module and parameter names of
    the model it describes are timm's (core/param_shapes.py lists them).

    Each field's type and default are its annotation and value; its docstring says what it means and which
    converters set it ("Set by"): jax (`convert_jax`: vit_jax and big_vision .npz files), timm
    (`convert_timm`: from the checkpoint's keys and shapes, or from timm's definition of a model named with
    `model=`), transformers (`convert_hf`: config.json and the keys), tutorial (`convert_torch`: lucidrains'
    vit-pytorch, jeonsworld's ViT-pytorch, nn.TransformerEncoder). A converter that does not set a field
    leaves its default, which is then that source's meaning too.
    """

    img_size: tuple[int, int] = (224, 224)
    """The input size the model was trained at, (height, width) in pixels: its token grid times the stride,
    or more where the patches leave out the pixels past the last whole one (SigLIP So400m/14 at 384).

    Set by: jax (the stored grid, or the published size the catalog knows; for a computed sincos2d table,
    224 in whole patches), timm, transformers (image_size), tutorial (the stored grid, or `image_size` in the
    model args)."""
    patch_size: int | tuple[int, int] = 16
    """An int for square patches, (height, width) otherwise (a square tuple is stored as the int).

    Set by: every converter, from the patch embedding's kernel (transformers: patch_size)."""
    in_chans: int = 3
    """Input channels. Set by: every converter, from the patch embedding's (or the hybrid ResNet root's)
    kernel; transformers: num_channels."""
    embed_dim: int = 768
    """The token width. Set by: every converter, from the patch embedding's kernel; transformers: hidden_size."""
    depth: int = 12
    """The number of transformer blocks. Set by: every converter, by counting the stored blocks;
    transformers: num_hidden_layers."""
    num_heads: int = 12
    """Attention heads per block. Set by: jax (the query kernel's shape); timm (a named model, `num_heads=`, or
    the usual count of a standard width); transformers (num_attention_heads); tutorial (jeonsworld: its
    `num_heads` or the standard count; nn.TransformerEncoder: `nhead`, required; lucidrains: the shapes)."""
    mlp_dim: int = 3072
    """The MLP's hidden width as timm counts it (int(embed_dim * mlp_ratio)): fc1's outputs; a packed GLU's
    fc2 reads half of them. Set by: every converter, from the first MLP kernel; transformers:
    intermediate_size (Dinov2: from mlp_ratio)."""
    num_classes: int = 1000
    """The head's classes; 0: no head (a backbone), and the model returns the pooled features.

    Set by: every converter, from the head's kernel (0 where there is none)."""
    pool: Pool = "token"
    """How the tokens become one vector. token: the class token; gap: the mean of the patch tokens (timm's
    'avg'); avgmax: half max, half mean; max; map: attention pooling (attn_pool); none: every token, prefix
    tokens too. Prefix tokens (class, registers) stay out of the reductions and the attention pooling unless
    `pool_include_prefix`.

    Set by: jax (map with a MAPHead, token with a class token, else gap), timm, tutorial (lucidrains and
    nn.TransformerEncoder: `pool` cls or mean; none without a head). transformers and jeonsworld: token."""
    fc_norm: bool = False
    """The final norm after the pooling (timm's fc_norm) instead of on every token before it. With 'gap':
    True = timm (mean, then LayerNorm); False = JAX (LayerNorm every token, then mean).

    Set by: timm, tutorial (lucidrains' norm in its mlp_head)."""
    representation_size: int | None = None
    """Linear + tanh before the head (the 2020 ImageNet-21k checkpoints); without a head, the model's output
    (transformers' ViTModel pooler). None: no such layer.

    Set by: jax (pre_logits), timm (pre_logits.fc), transformers (the pooler: pooler_output_size, else
    hidden_size)."""
    distilled: bool = False
    """DeiT's distillation token and its second head, whose logits are averaged with the first's.

    Set by: timm, transformers (DeiT with the distillation head)."""
    qkv_bias: bool = True
    """Biases on the query, key and value projections. Set by: timm, transformers (qkv_bias), tutorial
    (lucidrains: none; nn.TransformerEncoder: in_proj_bias present)."""
    ln_eps: float = 1e-6
    """eps of every norm layer in the transformer (LayerNorm or RMSNorm); the default is flax's and timm's.

    Set by: timm (a named model; else its default), transformers (layer_norm_eps), tutorial (lucidrains
    1e-5, jeonsworld 1e-6, nn.TransformerEncoder `layer_norm_eps`, 1e-5 unless given)."""
    act: Activation = "gelu"
    """The MLP's activation. Set by: jax (`gelu=`: tanh, vit_jax's, or erf), timm (a named model; else
    gelu), transformers (hidden_act; silu for Dinov2's SwiGLU), tutorial (nn.TransformerEncoder
    `activation`, relu unless given; gelu for the others)."""
    no_embed_class: bool = False
    """Position embeddings for the patches only (timm's no_embed_class=True), as big_vision stores them.

    Set by: jax (big_vision with a class token), timm, tutorial (nn.TransformerEncoder, by the table's
    length)."""
    pos_resize: PosResize = "bicubic"
    """How the position table is resampled for another input size (model/posembed.py): bicubic is timm's.

    Set by: jax (the catalog's entry for a published file), timm (dino for a DINO checkpoint or tag),
    transformers (its own method), torchvision (its interpolate_embeddings); every converter's `pos_resize=`
    (`--pos-resize`) overrides it."""
    hybrid_layers: tuple[int, ...] | None = None
    """Units per stage of a ResNetV2 before the patch embedding; None = plain ViT, () = stem only (R+Ti/16).

    Set by: jax (R50+ViT), timm, tutorial (jeonsworld's hybrid)."""
    hybrid_width: int = 64
    """Stem width of that ResNet (64 in every published hybrid); stage s outputs 4 * width * 2**s channels.

    Set by: jax, timm, tutorial (jeonsworld), from the root convolution."""
    hybrid_gn_eps: float = 1e-6
    """GroupNorm eps of that ResNet: 1e-6 in the JAX models (flax), 1e-5 in timm's.

    Set by: timm (1e-5), tutorial (jeonsworld: 1e-6). jax: the default."""
    class_token: bool | None = None
    """A class token; None: as the pooling implies (one exactly when pool='token'), as before this field.

    Set by: jax, timm, tutorial (lucidrains, nn.TransformerEncoder), from the stored token."""
    reg_tokens: int = 0
    """Register tokens after the class token (timm's reg_tokens; DINOv2 with registers).

    Set by: timm, transformers (DeiT's distillation token, where its head is left out, runs as one)."""
    pool_include_prefix: bool = False
    """The prefix tokens join the pooling's reduction. Set by: timm (a named model), tutorial (lucidrains
    and nn.TransformerEncoder pooling the mean with a class token)."""
    final_norm: bool = True
    """False: no final norm at all (neither `norm` nor `fc_norm`).

    Set by: timm, tutorial (lucidrains, nn.TransformerEncoder), from the stored norm."""
    pre_norm: bool = False
    """A norm on the embedded tokens before the blocks (CLIP's ln_pre: timm's norm_pre). Set by: timm."""
    patch_bias: bool = True
    """A bias on the patch projection. Set by: timm, tutorial (nn.TransformerEncoder)."""
    patch_norm: bool = False
    """A norm on the patch tokens inside the patch embedding (AIMv2). Set by: timm, tutorial (lucidrains)."""
    pos_embed: PosEmbed = "learn"
    """The position embedding: a stored table, none, or the computed sincos2d.

    Set by: jax (big_vision's sincos2d), timm (learn or none), tutorial (lucidrains' SimpleViT: sincos2d;
    nn.TransformerEncoder: learn or none)."""
    norm: Norm = "layernorm"
    """The kind of every norm layer in the transformer. Set by: timm (RMSNorm: a norm weight without bias)."""
    layer_scale: bool = False
    """Per-channel scales on both residual branches (timm's init_values: ls1.gamma, ls2.gamma).

    Set by: timm, transformers (Dinov2)."""
    qk_norm: bool = False
    """Norms on each head's queries and keys. Set by: timm."""
    scale_attn_norm: bool = False
    """A norm on the attention output before its projection. Set by: timm."""
    scale_mlp_norm: bool = False
    """A norm on the MLP's hidden activations. Set by: timm."""
    proj_bias: bool = True
    """Biases of the attention output projection and of the MLP layers (timm ties them).

    Set by: timm, tutorial (nn.TransformerEncoder)."""
    mlp: MlpKind = "mlp"
    """The MLP's kind (see MlpKind). Set by: timm, transformers (Dinov2's SwiGLU)."""
    block: BlockKind = "pre_norm"
    """The block's kind (see BlockKind). Set by: timm, tutorial (nn.TransformerEncoder: post_norm unless
    `norm_first`)."""
    attn_head_dim: int | None = None
    """The width of each attention head where it is not embed_dim / num_heads (lucidrains' dim_head): qkv
    projects to 3 * num_heads * attn_head_dim, proj back to embed_dim. None: embed_dim // num_heads (a value
    equal to it is stored as None). timm's Attention takes it; its VisionTransformer does not pass it on.

    Set by: tutorial (lucidrains)."""
    patch_pre_norm: bool = False
    """A norm over each raw patch (its channels x pixels, before the projection: lucidrains' dual PatchNorm),
    its parameters stored in the projection kernel's (channel, row, column) order.

    Set by: tutorial (lucidrains)."""
    hybrid_variant: HybridVariant = "bit"
    """'bit': TF 'SAME' padding, GroupNorm of 32 groups throughout (vit_jax, timm). 'jeonsworld': that
    repository's port: PyTorch's symmetric padding, a max-pool without padding, and on each projection
    shortcut a GroupNorm of one group per channel with eps 1e-5.

    Set by: tutorial (jeonsworld's hybrid)."""
    head_norm: HeadNorm = "none"
    """'l2': the head reads its input scaled to unit length (after the representation layer, if any), so
    its logits are scaled cosines: a zero-shot head, whose rows are class text embeddings times the logit
    scale and whose bias is the logit bias. 'none': the features as they are.

    Set by: zeroshot (`vitconvert zeroshot`: `build_zeroshot_classifier`)."""
    pre_logits_act: PreLogitsAct = "tanh"
    """The representation layer's activation (with `representation_size`): 'tanh', the 2020 ImageNet-21k
    models'; 'none', a plain Linear: a two-tower model's image projection kept before a zero-shot head.

    Set by: zeroshot."""
    k_bias: bool = True
    """With qkv_bias: False leaves the keys without a bias (EVA's and BEiT's attention). The query and value
    biases are then parameters of their own, `attn.q_bias` and `attn.v_bias` (timm's names), and qkv has none.

    Set by: timm (Eva: EvaAttention; a separate q_proj/k_proj/v_proj without k_proj.bias)."""
    kv_heads: tuple[int, ...] | None = None
    """Key/value heads of each block, for grouped-query attention (head h reads key/value head
    h // (num_heads / kv_heads[i])): qkv projects to (num_heads + 2 * kv_heads[i]) * head_dim. None: num_heads in
    every block (a tuple of num_heads only is stored as None).

    Set by: timm (Eva: Sapiens2's num_kv_heads)."""
    mlp_layer_scale: bool = True
    """With layer_scale: False scales the attention branch only (ls1.gamma; timm's attn_only_layer_scale).

    Set by: timm (Eva: Sapiens2)."""
    pool_heads: int | None = None
    """Heads of the attention pooling (pool='map'); None: num_heads. Set by: timm (Eva: attn_pool_num_heads)."""
    pool_mlp_dim: int | None = None
    """The hidden width of the attention pooling's MLP (pool='map'); None: mlp_dim.

    Set by: timm (Eva: attn_pool_mlp_ratio)."""
    rope: RopeKind = "none"
    """Rotary position embeddings in every attention layer (see RopeKind), on the queries and keys of the patch
    tokens; the prefix tokens (class, registers) are not rotated. Computed for the input's patch grid.

    Set by: timm (Eva: use_rot_pos_emb, rope_type)."""
    rope_temperature: float = 10000.0
    """The RoPE frequencies' base: cat: 1 / t**(i / n) for n = head_dim / 4 bands; mixed: the magnitudes its
    learned frequencies were initialised from (not used at forward); dinov3: the periods t**(2i / (head_dim / 2)).

    Set by: timm (Eva: rope_temperature)."""
    rope_ref_grid: tuple[int, int] | None = None
    """cat: the patch grid (rows, columns) the RoPE positions are scaled to: position p on a grid of n rows counts
    as p * ref / n (EVA-02's and PE's rule for other sizes, each axis by its own). None: plain patch indices.

    Set by: timm (Eva: ref_feat_shape)."""
    rope_grid_offset: float = 0.0
    """Added to every RoPE position before any scaling (cat: patch indices; dinov3: the centred ones, 0.5 +
    index). Set by: timm (Eva: rope_grid_offset; PE's 1)."""
    rope_grid_indexing: GridIndexing = "ij"
    """The order of the RoPE frequency channels: ij rows first (the first half of each head's bands rotates by
    the row), xy columns first. Set by: timm (Eva: rope_grid_indexing)."""
    rope_rotate_half: bool = False
    """How the rotated pairs sit in a head: False interleaved (x0, x1), (x2, x3), ...; True the two halves
    (x_i, x_{i + head_dim / 2}), as in DINOv3 and LLaMA. Set by: timm (Eva: rope_rotate_half)."""
    rope_normalize_coords: RopeNormalize = "separate"
    """dinov3: what the centred coordinates are divided by (see RopeNormalize). Set by: timm ('separate')."""
    rel_pos_bias: bool = False
    """A relative position bias table in every block's attention (blocks.N.attn.relative_position_bias_table,
    model/relpos.py): per head, one learned attention-logit bias for each offset between two patches and three
    for the class token (BEiT's). Needs the class token and no other prefix token.

    Set by: timm (Beit's use_rel_pos_bias), transformers (Beit's and Data2VecVision's
    use_relative_position_bias)."""
    shared_rel_pos_bias: bool = False
    """One such table for all the blocks (rel_pos_bias.relative_position_bias_table), added to the attention
    logits of each, after a block's own where it has one too.

    Set by: timm (Beit's use_shared_rel_pos_bias), transformers (use_shared_relative_position_bias)."""
    rel_pos_resize: RelPosResize = "timm"
    """How the relative position tables are resampled for another input size (model/relpos.py): 'timm' (BEiT's
    geometric-progression rule, timm's resize_rel_pos_bias_table) or 'transformers' (bilinear, as
    BeitRelativePositionBias does at every forward).

    Set by: timm ('timm'), transformers ('transformers')."""

    def __post_init__(self) -> None:
        # Types first: a config also comes from a file's JSON, and a wrong type must be a clear
        # error here, not a TypeError (or a silently wrong model) when the model is built.
        problems = self._type_problems()
        if problems:
            raise VitConvertError("invalid ViT config: " + "; ".join(problems))
        # One spelling per model, so that equal models compare equal: square patches are an int, and
        # class_token is None where the pooling implies it.
        if isinstance(self.patch_size, tuple) and self.patch_size[0] == self.patch_size[1]:
            object.__setattr__(self, "patch_size", self.patch_size[0])
        if self.class_token == (self.pool == "token"):
            object.__setattr__(self, "class_token", None)
        if self.attn_head_dim is not None and self.attn_head_dim * self.num_heads == self.embed_dim:
            object.__setattr__(self, "attn_head_dim", None)
        if isinstance(self.kv_heads, tuple) and len(self.kv_heads) == self.depth and set(self.kv_heads) == {
                self.num_heads}:
            object.__setattr__(self, "kv_heads", None)
        # Attention pooling splits the width into the heads whatever attn_head_dim says.
        if (self.attn_head_dim is None or self.pool == "map") and self.embed_dim % self.num_heads:
            problems.append(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.attn_head_dim is not None and self.block == "parallel":
            problems.append("parallel blocks split embed_dim into the heads: they take no attn_head_dim")
        if self.hybrid_variant != "bit" and (self.hybrid_layers is None or len(self.hybrid_layers) < 2):
            problems.append(f"hybrid_variant {self.hybrid_variant!r} is a ResNet of at least 2 stages (its unpadded "
                            "max-pool leaves an odd grid that the second stage's stride evens out)")
        if self.pool == "token" and not self.has_class_token:
            problems.append("pool='token' needs the class token")
        if self.distilled and (self.pool != "token" or self.reg_tokens or self.fc_norm or not self.num_classes):
            problems.append("a distilled model needs pool='token', a head, no register tokens and no fc_norm (DeiT)")
        if self.fc_norm and not self.final_norm:
            problems.append("fc_norm places the final norm, so it needs final_norm")
        if self.mlp in ("glu", "swiglu_packed") and self.mlp_dim % 2:
            problems.append(f"a packed GLU MLP splits mlp_dim in two halves, but mlp_dim is {self.mlp_dim}")
        if self.block in ("res_post", "post_norm") and self.layer_scale:
            problems.append("post-norm blocks have no layer scale")
        if self.block == "parallel" and (self.mlp != "mlp" or self.scale_attn_norm or self.scale_mlp_norm):
            problems.append("parallel blocks have a plain MLP and no scale norms")
        if self.head_norm != "none" and (not self.num_classes or self.distilled):
            problems.append("head_norm normalises what the head reads: it needs a head (num_classes > 0), and one "
                            "head (not distilled)")
        if self.pre_logits_act != "tanh" and not self.representation_size:
            problems.append("pre_logits_act is the representation layer's activation: it needs representation_size")
        problems += self._rope_attention_problems()
        if (self.rel_pos_bias or self.shared_rel_pos_bias) and not (self.has_class_token and
                                                                  self.num_prefix_tokens == 1):
            problems.append("a relative position bias table has rows for one class token: it needs the class "
                            "token and no register or distillation token")
        if (self.rel_pos_bias or self.shared_rel_pos_bias) and self.block == "parallel":
            problems.append("parallel blocks take no relative position bias")
        if self.pos_embed == "sincos2d" and (self.embed_dim % 4 or self.embed_dim < 8):
            problems.append(f"a sincos2d position embedding needs embed_dim a multiple of 4 and >= 8 "
                            f"(sin and cos of each axis), got {self.embed_dim}")
        if self.hybrid_layers is not None and self.hybrid_width % GN_GROUPS:
            problems.append(f"hybrid_width {self.hybrid_width} is not a multiple of the {GN_GROUPS} "
                            "GroupNorm groups of the ResNet")
        # A patch embedding leaves out the pixels past the last whole patch (timm's SigLIP-so400m/14 at
        # 384 sees 378 of them); the hybrids' ResNet pads instead, so its input must tile.
        if self.hybrid_layers is not None and (untiled := self.untiled(self.img_size)):
            problems.append(untiled)
        elif self.img_size[0] < self.stride[0] or self.img_size[1] < self.stride[1]:
            problems.append(f"image size {self.img_size[0]}x{self.img_size[1]} is smaller than one patch")
        if problems:
            raise VitConvertError("invalid ViT config: " + "; ".join(problems))

    def _rope_attention_problems(self) -> list[str]:
        problems = []
        if not self.k_bias and not self.qkv_bias:
            problems.append("k_bias=false (q and v biases only) needs qkv_bias")
        if self.kv_heads is not None:
            if len(self.kv_heads) != self.depth:
                problems.append(f"kv_heads needs one count per block ({self.depth}), got {len(self.kv_heads)}")
            elif bad := [n for n in self.kv_heads if self.num_heads % n]:
                problems.append(f"kv_heads must divide num_heads {self.num_heads}, got {bad[0]}")
        if (self.kv_heads is not None or not self.k_bias) and self.block not in ("pre_norm", "res_post"):
            problems.append("q/v-only biases and grouped-query attention are built in pre-norm and res-post blocks")
        if self.rope != "none":
            if self.head_dim % 4:
                problems.append(f"RoPE rotates pairs of each axis' bands: head_dim {self.head_dim} must be a "
                                "multiple of 4")
            if self.block not in ("pre_norm", "res_post"):
                problems.append("RoPE is built in pre-norm and res-post blocks")
        if self.rope_ref_grid is not None and self.rope != "cat":
            problems.append("rope_ref_grid scales the positions of rope='cat' only")
        if self.rope == "mixed" and self.rope_rotate_half:
            problems.append("rope='mixed' rotates interleaved pairs (timm's RotaryEmbeddingMixed): no rope_rotate_half")
        return problems

    def _type_problems(self) -> list[str]:
        problems = []
        if not is_size(self.img_size):
            problems.append(f"img_size must be (height, width) > 0, got {self.img_size!r}")
        patch = self.patch_size
        if not (is_int(patch) and patch > 0 or is_size(patch)):
            problems.append(f"patch_size must be a positive integer or (height, width), got {patch!r}")
        for name in _POSITIVE_INTS:
            if not (is_int(value := getattr(self, name)) and value > 0):
                problems.append(f"{name} must be a positive integer, got {value!r}")
        for name in _COUNTS:
            if not (is_int(value := getattr(self, name)) and value >= 0):
                problems.append(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("representation_size", "attn_head_dim", "pool_heads", "pool_mlp_dim"):
            if (value := getattr(self, name)) is not None and not (is_int(value) and value > 0):
                problems.append(f"{name} must be a positive integer or null, got {value!r}")
        for name in _BOOLS:
            if not isinstance(value := getattr(self, name), bool):
                problems.append(f"{name} must be true or false, got {value!r}")
        if self.class_token is not None and not isinstance(self.class_token, bool):
            problems.append(f"class_token must be true, false or null, got {self.class_token!r}")
        for name in ("ln_eps", "hybrid_gn_eps", "rope_temperature"):
            if not (is_real(eps := getattr(self, name)) and eps > 0):
                problems.append(f"{name} must be a positive number, got {eps!r}")
        if not is_real(self.rope_grid_offset):
            problems.append(f"rope_grid_offset must be a number, got {self.rope_grid_offset!r}")
        if self.rope_ref_grid is not None and not is_size(self.rope_ref_grid):
            problems.append(f"rope_ref_grid must be null or (rows, columns) > 0, got {self.rope_ref_grid!r}")
        heads = self.kv_heads
        if heads is not None and not (isinstance(heads, tuple) and all(is_int(n) and n > 0 for n in heads)):
            problems.append(f"kv_heads must be null or a list of positive head counts, got {heads!r}")
        for name, choices in _CHOICES.items():
            if (value := getattr(self, name)) not in choices:
                problems.append(f"{name} must be {' or '.join(map(repr, choices))}, got {value!r}")
        layers = self.hybrid_layers
        if layers is not None and not (isinstance(layers, tuple) and all(is_int(n) and n > 0 for n in layers)):
            problems.append(f"hybrid_layers must be null or a list of positive unit counts, got {layers!r}")
        return problems

    @property
    def patch_hw(self) -> tuple[int, int]:
        p = self.patch_size
        return (p, p) if isinstance(p, int) else p

    @property
    def backbone_stride(self) -> int:
        """Down-sampling of the hybrid ResNet before the patch embedding (1 without one)."""
        if self.hybrid_layers is None:
            return 1
        return 4 * 2 ** max(len(self.hybrid_layers) - 1, 0)

    @property
    def stride(self) -> tuple[int, int]:
        """Pixels per token, (height, width)."""
        return self.backbone_stride * self.patch_hw[0], self.backbone_stride * self.patch_hw[1]

    @property
    def total_stride(self) -> int:
        """Pixels per token of a square patch (see `stride` for any patch)."""
        sh, sw = self.stride
        if sh != sw:
            raise VitConvertError(f"this model's patches are not square ({sh}x{sw} pixels): use its stride")
        return sh

    def untiled(self, size: tuple[int, int]) -> str | None:
        """Why inputs of `size` do not tile into whole patches, or None if they do."""
        (h, w), (sh, sw) = size, self.stride
        if h % sh == 0 and w % sw == 0:
            return None
        return f"image size {h}x{w} is not a multiple of the patch stride {sh if sh == sw else f'{sh}x{sw}'}"

    def input_grid(self, size: tuple[int, int]) -> tuple[int, int]:
        """The patch grid of inputs of `size` (height, width), or a VitConvertError saying why they cannot run.

        The config's own size is always the model's, tiled or not (timm's SigLIP-so400m/14 at 384 sees 378
        pixels of it); any other must tile into whole patches, the hybrids' ResNet stride included. The one
        check of an input size: the model runs it at forward, vitpredict's plan before torch is imported.
        """
        if tuple(size) == self.img_size:
            return self.grid_size
        (h, w), (sh, sw) = size, self.stride
        if h < sh or w < sw:
            raise VitConvertError(f"image size {h}x{w} is smaller than one patch of this model ({sh}x{sw} pixels)")
        if problem := self.untiled(size):
            below = f"{h // sh * sh}x{w // sw * sw}"  # each side at least one patch, checked above
            above = f"{-(-h // sh) * sh}x{-(-w // sw) * sw}"
            raise VitConvertError(f"{problem}; the nearest sizes that tile are {below} and {above}")
        return h // sh, w // sw

    def at_input_size(self, size: tuple[int, int]) -> ViTConfig:
        """This model for inputs of `size`, which must tile into whole patches (a file's own size need
        not, as timm's need not)."""
        if problem := self.untiled(size):
            raise VitConvertError(problem)
        return self.replace(img_size=tuple(size))

    @property
    def head_dim(self) -> int:
        """The width of each attention head."""
        return self.attn_head_dim or self.embed_dim // self.num_heads

    def block_kv_heads(self, i: int) -> int:
        """Key/value heads of block `i`."""
        return self.num_heads if self.kv_heads is None else self.kv_heads[i]

    @property
    def attn_dim(self) -> int:
        """The attention's inner width: qkv's rows per q, k and v; proj's inputs."""
        return self.head_dim * self.num_heads

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.img_size[0] // self.stride[0], self.img_size[1] // self.stride[1]

    @property
    def has_class_token(self) -> bool:
        return self.pool == "token" if self.class_token is None else self.class_token

    @property
    def num_prefix_tokens(self) -> int:
        """Class, register and distillation tokens before the patches."""
        return self.has_class_token + self.reg_tokens + self.distilled

    @property
    def num_pos_tokens(self) -> int:
        """Rows of the stored position table (none for a computed or absent one)."""
        if self.pos_embed != "learn":
            return 0
        gh, gw = self.grid_size
        return gh * gw + (0 if self.no_embed_class else self.num_prefix_tokens)

    def replace(self, **changes: Any) -> ViTConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON values; those added with timm's family (`SINCE_FAMILY`) and after it
        (`SINCE_TORCH_SOURCES`, `SINCE_ROPE`, `SINCE_ZEROSHOT`, `SINCE_BEIT`) only where they are not their
        default, so a model that was expressible before is written as it was."""
        later = {**SINCE_FAMILY, **SINCE_TORCH_SOURCES, **SINCE_ROPE, **SINCE_ZEROSHOT, **SINCE_BEIT}
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in later or v != later[k]}
        for name in TUPLE_FIELDS:
            if isinstance(d.get(name), tuple):
                d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ViTConfig:
        if not isinstance(d, dict):
            raise VitConvertError(f"config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise VitConvertError(f"unknown ViT config fields: {', '.join(unknown)}")
        d = dict(d)
        # JSON has lists where the config has tuples; anything else is left for validation to name.
        for name in TUPLE_FIELDS:
            if isinstance(d.get(name), list):
                d[name] = tuple(d[name])
        try:
            return cls(**d)
        except TypeError as e:
            raise VitConvertError(f"invalid ViT config: {e}") from None


# The fields added with timm's VisionTransformer family, and their defaults (the meaning of files without them).
SINCE_FAMILY = {f.name: f.default for f in dataclasses.fields(ViTConfig) if f.name in (
    "pos_resize", "hybrid_gn_eps", "class_token", "reg_tokens", "pool_include_prefix", "final_norm", "pre_norm",
    "patch_bias", "patch_norm", "pos_embed", "norm", "layer_scale", "qk_norm", "scale_attn_norm", "scale_mlp_norm",
    "proj_bias", "mlp", "block")}
# The fields added for the PyTorch sources (lucidrains' vit-pytorch, jeonsworld's ViT-pytorch, nn.TransformerEncoder).
SINCE_TORCH_SOURCES = {f.name: f.default for f in dataclasses.fields(ViTConfig) if f.name in (
    "attn_head_dim", "patch_pre_norm", "hybrid_variant")}
# The fields added for zero-shot classifiers (issue 25: a two-tower model's image tower with a head of class
# text embeddings).
SINCE_ZEROSHOT = {f.name: f.default for f in dataclasses.fields(ViTConfig) if f.name in (
    "head_norm", "pre_logits_act")}
# The fields added for the RoPE ViTs (timm's Eva: EVA-02, PE, RoPE-ViT, DINOv3, Sapiens2).
SINCE_ROPE = {f.name: f.default for f in dataclasses.fields(ViTConfig) if f.name in (
    "k_bias", "kv_heads", "mlp_layer_scale", "pool_heads", "pool_mlp_dim", "rope", "rope_temperature",
    "rope_ref_grid", "rope_grid_offset", "rope_grid_indexing", "rope_rotate_half", "rope_normalize_coords")}
# The fields added for BEiT (timm's Beit, transformers' Beit and Data2VecVision).
SINCE_BEIT = {f.name: f.default for f in dataclasses.fields(ViTConfig) if f.name in (
    "rel_pos_bias", "shared_rel_pos_bias", "rel_pos_resize")}
# Fields JSON holds as lists.
TUPLE_FIELDS = ("img_size", "patch_size", "hybrid_layers", "kv_heads", "rope_ref_grid")


def timm_incompatibilities(cfg: ViTConfig) -> list[str]:
    """What in `cfg` timm's VisionTransformer does not build, in words: a file of such a model does not
    load into timm (or, for the jeonsworld ResNet, loads and computes something else)."""
    reasons = []
    if cfg.block == "post_norm":
        reasons.append("post-norm blocks (the norm after each residual sum)")
    if cfg.attn_head_dim is not None:
        reasons.append(f"an attention width ({cfg.num_heads} heads x {cfg.attn_head_dim}) other than embed_dim "
                       f"{cfg.embed_dim}")
    if cfg.patch_pre_norm:
        reasons.append("a norm over the raw patches before the patch projection")
    if cfg.pos_embed == "sincos2d":
        reasons.append("a computed 2-D sin-cos position embedding")
    if cfg.head_norm != "none":
        reasons.append("a head on the unit-length features (a zero-shot head)")
    if cfg.pre_logits_act != "tanh":
        reasons.append("a representation layer without tanh")
    if cfg.rope != "none":
        reasons.append(f"rotary position embeddings ({cfg.rope}: timm's Eva builds them, not its VisionTransformer)")
    if not cfg.k_bias:
        reasons.append("query and value biases without a key bias (timm's Eva and Beit)")
    if cfg.kv_heads is not None:
        reasons.append("grouped-query attention")
    if cfg.layer_scale and not cfg.mlp_layer_scale:
        reasons.append("layer scale on the attention branch only")
    if cfg.pool == "map" and (cfg.pool_heads or cfg.pool_mlp_dim):
        reasons.append("an attention pooling of other heads or MLP width than the blocks'")
    if cfg.rel_pos_bias or cfg.shared_rel_pos_bias:
        reasons.append("relative position bias tables (timm's Beit has them, its VisionTransformer does not)")
    if cfg.hybrid_variant == "jeonsworld":
        reasons.append("jeonsworld's ResNet (timm loads its tensors but pads and normalizes otherwise: other outputs)")
    return reasons


def preset(name: str, **overrides: Any) -> ViTConfig:
    """A named architecture such as 'B/16' or 'Ti/8' (sizes Ti, S, B, L, H; patches 8, 14, 16, 32)."""
    width, _, patch = name.partition("/")
    if width not in WIDTHS or not patch.isdigit() or int(patch) not in PATCHES:
        choices = ", ".join(f"{w}/{p}" for w in WIDTHS for p in PATCHES)
        raise VitConvertError(f"unknown preset {name!r}; choose one of {choices}")
    dim, depth, heads, mlp = WIDTHS[width]
    # Every patch size in PATCHES divides 224.
    base = ViTConfig(patch_size=int(patch), embed_dim=dim, depth=depth, num_heads=heads, mlp_dim=mlp)
    return base.replace(**overrides)


def parse_size(text: str | int | tuple[int, int]) -> tuple[int, int]:
    """'384' -> (384, 384); '384x512' -> (384, 512) as height x width."""
    if isinstance(text, int):
        return text, text
    if isinstance(text, tuple):
        return text
    h, sep, w = str(text).lower().partition("x")
    try:
        size = (int(h), int(w)) if sep else (int(h), int(h))
    except ValueError:
        raise VitConvertError(f"size must be R or HxW in pixels, got {text!r}") from None
    if min(size) <= 0:
        raise VitConvertError(f"size must be positive, got {text!r}")
    return size
