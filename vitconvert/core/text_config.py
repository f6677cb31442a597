"""The description of a two-tower model's text tower and of its tokenizer.

`TextConfig` is to the text tower what `ViTConfig` is to the image tower: frozen, checked field by field
(types first, since it is read back from a file's JSON), the only way `vitconvert.text.model` builds one.
`TokenizerConfig` says how texts become the ids that tower reads: which library reads the tokenizer file
embedded in the weights file, how the text is cleaned first, and the source's special ids and padding.
Both are plain data: recording them needs no torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

from .config import ACTIVATIONS, Activation
from .errors import VitConvertError
from .json_types import is_int, is_real

# argmax: the position of the highest id (OpenAI's and OpenCLIP's CLIP: the end-of-text id is the vocabulary's
# last); eos: the first position holding `eos_id` (transformers' CLIP with a non-legacy eos_token_id);
# last / first: that position (SigLIP: last); map: attention pooling with a learned query (big_vision's MAPHead).
TextPool = Literal["argmax", "eos", "last", "first", "map"]
TEXT_POOLS: tuple[TextPool, ...] = get_args(TextPool)
# How similarities become probabilities: CLIP's softmax over the classes, SigLIP's sigmoid of each logit.
Probability = Literal["softmax", "sigmoid"]
PROBABILITIES: tuple[Probability, ...] = get_args(Probability)
# Which library reads the embedded tokenizer file: a `tokenizers` JSON (CLIP's BPE, transformers'
# tokenizer.json) or a SentencePiece model (SigLIP's spiece.model).
TokenizerKind = Literal["tokenizers", "sentencepiece"]
TOKENIZER_KINDS: tuple[TokenizerKind, ...] = get_args(TokenizerKind)
# The cleaning a source applies before tokenizing. none: the text as given (transformers' tokenizer.json
# normalises inside). lower, whitespace, canonicalize: open_clip's clean functions of those names (each starts
# with ftfy.fix_text and html.unescape twice; lower: whitespace runs to one space, stripped, lower-cased;
# canonicalize: big_vision's canonicalize_text, '_' to space, string.punctuation removed, lower-cased).
# siglip: transformers' SiglipTokenizer.canonicalize_text (lower-cased, string.punctuation removed, whitespace
# runs to one space, stripped: no ftfy, and '_' is removed, not a space). lowercase: str.lower alone (SigLIP 2 was
# trained on lower-cased texts; transformers' Siglip2Tokenizer puts a Lowercase normaliser before Gemma's).
Clean = Literal["none", "lower", "whitespace", "canonicalize", "siglip", "lowercase"]
CLEANS: tuple[Clean, ...] = get_args(Clean)


def _problems(obj: object, positive: tuple[str, ...], counts: tuple[str, ...], bools: tuple[str, ...],
              choices: dict[str, tuple[str, ...]], optional_ids: tuple[str, ...]) -> list[str]:
    problems = []
    for name in positive:
        if not (is_int(value := getattr(obj, name)) and value > 0):
            problems.append(f"{name} must be a positive integer, got {value!r}")
    for name in counts:
        if not (is_int(value := getattr(obj, name)) and value >= 0):
            problems.append(f"{name} must be an integer >= 0, got {value!r}")
    for name in bools:
        if not isinstance(value := getattr(obj, name), bool):
            problems.append(f"{name} must be true or false, got {value!r}")
    for name, allowed in choices.items():
        if (value := getattr(obj, name)) not in allowed:
            problems.append(f"{name} must be {' or '.join(map(repr, allowed))}, got {value!r}")
    for name in optional_ids:
        if (value := getattr(obj, name)) is not None and not (is_int(value) and value >= 0):
            problems.append(f"{name} must be a token id (an integer >= 0) or null, got {value!r}")
    return problems


def _from_dict(cls: type, d: object, what: str) -> Any:
    if not isinstance(d, dict):
        raise VitConvertError(f"{what} must be a JSON object, got {type(d).__name__}")
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise VitConvertError(f"unknown {what} fields: {', '.join(unknown)}")
    try:
        return cls(**d)
    except TypeError as e:  # a required field missing
        raise VitConvertError(f"invalid {what}: {e}") from None


@dataclass(frozen=True)
class TextConfig:
    """A text transformer: token and position embeddings, pre-norm blocks (our ViT's `Block`), a final norm on
    every token, a pooling, a projection. Names of the tensors: `text_param_shapes`.

    Set by: open_clip (`--from open_clip`: open_clip_config.json's text_cfg, or the named model's), hf
    (config.json's text_config: CLIPModel, SiglipModel, Siglip2Model).
    """

    vocab_size: int
    """Rows of the token embedding (CLIP 49408; SigLIP 32000; SigLIP 2 256000)."""
    context_length: int
    """Positions of the position table, and the ids per text the tokenizer makes (CLIP 77, SigLIP 64)."""
    width: int
    """The token width (open_clip's width, transformers' hidden_size)."""
    depth: int
    """Transformer blocks (open_clip's layers, transformers' num_hidden_layers)."""
    num_heads: int
    """Attention heads per block (open_clip's heads, transformers' num_attention_heads)."""
    mlp_dim: int
    """The MLP's hidden width (open_clip's int(width * mlp_ratio), transformers' intermediate_size)."""
    embed_dim: int
    """The projection's outputs, the text embedding's width, equal to the image tower's; 0: no projection
    (the pooled token is the embedding)."""
    act: Activation = "gelu"
    """The MLP's activation (ViTConfig's names): quick_gelu in OpenAI's CLIP and OpenCLIP's -quickgelu models,
    gelu in OpenCLIP's others, gelu_tanh in SigLIP (transformers' gelu_pytorch_tanh)."""
    ln_eps: float = 1e-5
    """eps of every LayerNorm: 1e-5 in CLIP (torch's default, open_clip's), 1e-6 in SigLIP."""
    causal: bool = True
    """A causal attention mask (each token sees those before it): CLIP's; SigLIP's text tower has none."""
    pool: TextPool = "argmax"
    """Which token becomes the text's vector, after the final norm (see TextPool)."""
    eos_id: int | None = None
    """The end-of-text id that pool 'eos' looks for; None for the other poolings."""
    proj_bias: bool = False
    """A bias on the projection: SigLIP's head has one; CLIP's text_projection none."""
    qkv_bias: bool = True
    """Biases on the attention's input projection (every published CLIP and SigLIP has them)."""

    def __post_init__(self) -> None:
        problems = _problems(self, ("vocab_size", "context_length", "width", "depth", "num_heads", "mlp_dim"),
                             ("embed_dim",), ("causal", "proj_bias", "qkv_bias"),
                             {"act": ACTIVATIONS, "pool": TEXT_POOLS}, ("eos_id",))
        if not (is_real(self.ln_eps) and self.ln_eps > 0):
            problems.append(f"ln_eps must be a positive number, got {self.ln_eps!r}")
        if not problems:
            if self.width % self.num_heads:
                problems.append(f"width {self.width} is not divisible by num_heads {self.num_heads}")
            if (self.pool == "eos") != (self.eos_id is not None):
                problems.append("pool 'eos' needs eos_id, and only it takes one")
            elif self.eos_id is not None and self.eos_id >= self.vocab_size:
                problems.append(f"eos_id {self.eos_id} is not in the vocabulary of {self.vocab_size}")
            if self.proj_bias and not self.embed_dim:
                problems.append("proj_bias without a projection (embed_dim 0)")
        if problems:
            raise VitConvertError("invalid text config: " + "; ".join(problems))

    @property
    def out_dim(self) -> int:
        """The text embedding's width."""
        return self.embed_dim or self.width

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: object) -> TextConfig:
        return _from_dict(cls, d, "text config")


@dataclass(frozen=True)
class TokenizerConfig:
    """How a text becomes `context_length` ids: cleaned (`clean`), encoded by the embedded file without special
    tokens, `bos_id` before and `eos_id` after; cut to `context_length` keeping `eos_id` last (open_clip's,
    transformers' and big_vision's "sticky" end); padded with `pad_id` to `context_length` (SigLIP's text tower
    has no mask: it must see the padding it was trained with).

    Set by: open_clip (CLIP: OpenAI's BPE vocabulary, shipped with vitconvert; SigLIP: the tokenizer.json
    beside the checkpoint), hf (tokenizer.json or spiece.model in the directory).
    """

    kind: TokenizerKind
    """Which library reads the embedded file (see TokenizerKind)."""
    context_length: int
    """Ids per text, padding included (the text tower's context_length)."""
    vocab_size: int
    """The file's vocabulary size: at most the text tower's vocab_size (checked where both are known)."""
    pad_id: int
    """The id that fills a text to context_length: 0 in OpenAI's CLIP (open_clip pads with zeros), the
    end-of-text id in transformers' CLIP and T5-vocabulary SigLIP (1), 0 in SigLIP 2 (Gemma's <pad>)."""
    bos_id: int | None = None
    """Prepended to every text: CLIP's <start_of_text>; None in SigLIP."""
    eos_id: int | None = None
    """Appended to every text, and kept as the last id when a text is cut: CLIP's <end_of_text>, SigLIP's </s>."""
    clean: Clean = "none"
    """The cleaning applied before tokenizing (see Clean)."""
    sha256: str = ""
    """The sha256 of the embedded tokenizer file: checked when it is read."""

    def __post_init__(self) -> None:
        problems = _problems(self, ("context_length", "vocab_size"), ("pad_id",), (),
                             {"kind": TOKENIZER_KINDS, "clean": CLEANS}, ("bos_id", "eos_id"))
        if not isinstance(self.sha256, str):
            problems.append(f"sha256 must be a string, got {self.sha256!r}")
        if not problems:
            for name in ("pad_id", "bos_id", "eos_id"):
                if (value := getattr(self, name)) is not None and value >= self.vocab_size:
                    problems.append(f"{name} {value} is not in the tokenizer's vocabulary of {self.vocab_size}")
            specials = (self.bos_id is not None) + (self.eos_id is not None)
            if self.context_length <= specials:
                problems.append(f"context_length {self.context_length} leaves no room for a token")
        if problems:
            raise VitConvertError("invalid tokenizer config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: object) -> TokenizerConfig:
        return _from_dict(cls, d, "tokenizer config")


def text_param_shapes(cfg: TextConfig, prefix: str = "text.") -> dict[str, tuple[int, ...]]:
    """The text tower's tensors, by name (under `prefix`), and their shapes."""
    w, m = cfg.width, cfg.mlp_dim
    shapes: dict[str, tuple[int, ...]] = {"token_embed.weight": (cfg.vocab_size, w),
                                          "pos_embed": (1, cfg.context_length, w)}
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        shapes |= {b + "norm1.weight": (w,), b + "norm1.bias": (w,), b + "attn.qkv.weight": (3 * w, w),
                   b + "attn.proj.weight": (w, w), b + "attn.proj.bias": (w,), b + "norm2.weight": (w,),
                   b + "norm2.bias": (w,), b + "mlp.fc1.weight": (m, w), b + "mlp.fc1.bias": (m,),
                   b + "mlp.fc2.weight": (w, m), b + "mlp.fc2.bias": (w,)}
        if cfg.qkv_bias:
            shapes[b + "attn.qkv.bias"] = (3 * w,)
    shapes |= {"norm.weight": (w,), "norm.bias": (w,)}
    if cfg.pool == "map":
        shapes |= {"attn_pool.latent": (1, 1, w), "attn_pool.q.weight": (w, w), "attn_pool.q.bias": (w,),
                   "attn_pool.kv.weight": (2 * w, w), "attn_pool.kv.bias": (2 * w,),
                   "attn_pool.proj.weight": (w, w), "attn_pool.proj.bias": (w,),
                   "attn_pool.norm.weight": (w,), "attn_pool.norm.bias": (w,),
                   "attn_pool.mlp.fc1.weight": (m, w), "attn_pool.mlp.fc1.bias": (m,),
                   "attn_pool.mlp.fc2.weight": (w, m), "attn_pool.mlp.fc2.bias": (w,)}
    if cfg.embed_dim:
        shapes["proj.weight"] = (cfg.embed_dim, w)
        if cfg.proj_bias:
            shapes["proj.bias"] = (cfg.embed_dim,)
    return {prefix + k: v for k, v in shapes.items()}
