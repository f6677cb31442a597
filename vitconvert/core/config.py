"""The one description of a ViT architecture.

`ViTConfig` is frozen and is the only way a model gets built: converters infer it from array shapes,
the weights file stores it as JSON, and `build_model` reads it back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from .checks import is_int, is_real, is_size
from .errors import VitConvertError

Pool = Literal["token", "gap"]
Activation = Literal["gelu", "gelu_tanh"]

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
_POSITIVE_INTS = ("patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_dim", "num_classes",
                  "hybrid_width")
_BOOLS = ("fc_norm", "distilled", "qkv_bias", "no_embed_class")


@dataclass(frozen=True)
class ViTConfig:
    img_size: tuple[int, int] = (224, 224)
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    num_classes: int = 1000
    pool: Pool = "token"
    # 'gap' only: True = timm's fc_norm (mean, then LayerNorm); False = JAX (LayerNorm every token, then mean).
    fc_norm: bool = False
    # Linear + tanh before the head (the 2020 ImageNet-21k checkpoints).
    representation_size: int | None = None
    distilled: bool = False
    qkv_bias: bool = True
    ln_eps: float = 1e-6
    act: Activation = "gelu"
    # big_vision stores position embeddings for the patches only (timm's no_embed_class=True).
    no_embed_class: bool = False
    pos_resize: Literal["bicubic", "dino"] = "bicubic"
    # ResNetV2 stages before the patch embedding; None = plain ViT, () = stem only (R+Ti/16).
    hybrid_layers: tuple[int, ...] | None = None
    # Stem width of that ResNet (64 in every published hybrid); stage s outputs 4 * width * 2**s channels.
    hybrid_width: int = 64

    def __post_init__(self) -> None:
        # Types first: a config also comes from a file's JSON, and a wrong type must be a clear
        # error here, not a TypeError (or a silently wrong model) when the model is built.
        problems = self._type_problems()
        if problems:
            raise VitConvertError("invalid ViT config: " + "; ".join(problems))
        if self.embed_dim % self.num_heads:
            problems.append(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.pool == "gap" and self.distilled:
            problems.append("a distilled model needs pool='token'")
        if self.fc_norm and self.pool != "gap":
            problems.append("fc_norm is only used with pool='gap'")
        if self.hybrid_layers is not None and self.hybrid_width % GN_GROUPS:
            problems.append(f"hybrid_width {self.hybrid_width} is not a multiple of the {GN_GROUPS} "
                            "GroupNorm groups of the ResNet")
        stride = self.total_stride
        for side in self.img_size:
            if side % stride:
                problems.append(
                    f"image size {self.img_size[0]}x{self.img_size[1]} is not a multiple of the "
                    f"patch stride {stride}")
                break
        if problems:
            raise VitConvertError("invalid ViT config: " + "; ".join(problems))

    def _type_problems(self) -> list[str]:
        problems = []
        if not is_size(self.img_size):
            problems.append(f"img_size must be (height, width) > 0, got {self.img_size!r}")
        for name in _POSITIVE_INTS:
            if not (is_int(value := getattr(self, name)) and value > 0):
                problems.append(f"{name} must be a positive integer, got {value!r}")
        rep = self.representation_size
        if rep is not None and not (is_int(rep) and rep > 0):
            problems.append(f"representation_size must be a positive integer or null, got {rep!r}")
        for name in _BOOLS:
            if not isinstance(value := getattr(self, name), bool):
                problems.append(f"{name} must be true or false, got {value!r}")
        eps = self.ln_eps
        if not (is_real(eps) and eps > 0):
            problems.append(f"ln_eps must be a positive number, got {eps!r}")
        if self.pool not in ("token", "gap"):
            problems.append(f"pool must be 'token' or 'gap', got {self.pool!r}")
        if self.act not in ("gelu", "gelu_tanh"):
            problems.append(f"act must be 'gelu' or 'gelu_tanh', got {self.act!r}")
        # How position embeddings reach another input size (model/posembed.py's table): not the architecture.
        if self.pos_resize not in ("bicubic", "dino"):
            problems.append(f"pos_resize must be 'bicubic' or 'dino', got {self.pos_resize!r}")
        layers = self.hybrid_layers
        if layers is not None and not (isinstance(layers, tuple) and all(is_int(n) and n > 0 for n in layers)):
            problems.append(f"hybrid_layers must be null or a list of positive unit counts, got {layers!r}")
        return problems

    @property
    def backbone_stride(self) -> int:
        """Down-sampling of the hybrid ResNet before the patch embedding (1 without one)."""
        if self.hybrid_layers is None:
            return 1
        return 4 * 2 ** max(len(self.hybrid_layers) - 1, 0)

    @property
    def total_stride(self) -> int:
        return self.backbone_stride * self.patch_size

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.img_size[0] // self.total_stride, self.img_size[1] // self.total_stride

    @property
    def num_prefix_tokens(self) -> int:
        return (self.pool == "token") + self.distilled

    @property
    def num_pos_tokens(self) -> int:
        gh, gw = self.grid_size
        return gh * gw + (0 if self.no_embed_class else self.num_prefix_tokens)

    def replace(self, **changes: Any) -> ViTConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["img_size"] = list(self.img_size)
        if self.hybrid_layers is not None:
            d["hybrid_layers"] = list(self.hybrid_layers)
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
        for name in ("img_size", "hybrid_layers"):
            if isinstance(d.get(name), list):
                d[name] = tuple(d[name])
        try:
            return cls(**d)
        except TypeError as e:
            raise VitConvertError(f"invalid ViT config: {e}") from None


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
