"""jeonsworld/ViT-pytorch's model, the reference for `torch2torch --source jeonsworld`.

That repository is not a package, so its models/modeling.py and models/modeling_resnet.py (commit 460a162)
are written out here with the same module names (hence the same state-dict keys), the same operations in
the same order, and its `load_from` for Google's npz files. Dropout is left out (these run in eval mode);
`ml_collections` configs are plain arguments. Independent of vitconvert: never import it here.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def np2th(weights: np.ndarray, conv: bool = False) -> torch.Tensor:
    """Possibly convert HWIO to OIHW."""
    if conv:
        weights = weights.transpose([3, 2, 0, 1])
    return torch.from_numpy(np.ascontiguousarray(weights))


# --- modeling_resnet.py -----------------------------------------------------------------------------------

class StdConv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        v, m = torch.var_mean(w, dim=[1, 2, 3], keepdim=True, unbiased=False)
        w = (w - m) / torch.sqrt(v + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def conv3x3(cin: int, cout: int, stride: int = 1) -> StdConv2d:
    return StdConv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> StdConv2d:
    return StdConv2d(cin, cout, kernel_size=1, stride=stride, padding=0, bias=False)


class PreActBottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, cmid: int, stride: int = 1) -> None:
        super().__init__()
        self.gn1 = nn.GroupNorm(32, cmid, eps=1e-6)
        self.conv1 = conv1x1(cin, cmid)
        self.gn2 = nn.GroupNorm(32, cmid, eps=1e-6)
        self.conv2 = conv3x3(cmid, cmid, stride)
        self.gn3 = nn.GroupNorm(32, cout, eps=1e-6)
        self.conv3 = conv1x1(cmid, cout)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or cin != cout:
            self.downsample = conv1x1(cin, cout, stride)
            self.gn_proj = nn.GroupNorm(cout, cout)  # sic: one group per channel, torch's default eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        if hasattr(self, "downsample"):
            residual = self.gn_proj(self.downsample(x))
        y = self.relu(self.gn1(self.conv1(x)))
        y = self.relu(self.gn2(self.conv2(y)))
        y = self.gn3(self.conv3(y))
        return self.relu(residual + y)

    def load_from(self, weights: Mapping[str, np.ndarray], n_block: str, n_unit: str) -> None:
        for r in (1, 2, 3):
            getattr(self, f"conv{r}").weight.copy_(np2th(weights[f"{n_block}/{n_unit}/conv{r}/kernel"], conv=True))
            getattr(self, f"gn{r}").weight.copy_(np2th(weights[f"{n_block}/{n_unit}/gn{r}/scale"]).view(-1))
            getattr(self, f"gn{r}").bias.copy_(np2th(weights[f"{n_block}/{n_unit}/gn{r}/bias"]).view(-1))
        if hasattr(self, "downsample"):
            self.downsample.weight.copy_(np2th(weights[f"{n_block}/{n_unit}/conv_proj/kernel"], conv=True))
            self.gn_proj.weight.copy_(np2th(weights[f"{n_block}/{n_unit}/gn_proj/scale"]).view(-1))
            self.gn_proj.bias.copy_(np2th(weights[f"{n_block}/{n_unit}/gn_proj/bias"]).view(-1))


class ResNetV2(nn.Module):
    """Three stages, as its ResNetV2 always builds (block_units: units per stage)."""

    def __init__(self, block_units: tuple[int, int, int], width_factor: float) -> None:
        super().__init__()
        width = self.width = int(64 * width_factor)
        self.root = nn.Sequential(OrderedDict([
            ("conv", StdConv2d(3, width, kernel_size=7, stride=2, bias=False, padding=3)),
            ("gn", nn.GroupNorm(32, width, eps=1e-6)),
            ("relu", nn.ReLU(inplace=True)),
            ("pool", nn.MaxPool2d(kernel_size=3, stride=2, padding=0)),
        ]))
        blocks, cin = [], width
        for b, (units, mult, stride) in enumerate(zip(block_units, (4, 8, 16), (1, 2, 2), strict=False), start=1):
            cout, cmid = width * mult, width * mult // 4
            blocks.append((f"block{b}", nn.Sequential(OrderedDict(
                [("unit1", PreActBottleneck(cin, cout, cmid, stride))]
                + [(f"unit{i}", PreActBottleneck(cout, cout, cmid)) for i in range(2, units + 1)]))))
            cin = cout
        self.body = nn.Sequential(OrderedDict(blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.root(x))


# --- modeling.py --------------------------------------------------------------------------------------------

class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.num_attention_heads = heads
        self.attention_head_size = int(hidden / heads)
        self.all_head_size = heads * self.attention_head_size
        self.query = nn.Linear(hidden, self.all_head_size)
        self.key = nn.Linear(hidden, self.all_head_size)
        self.value = nn.Linear(hidden, self.all_head_size)
        self.out = nn.Linear(hidden, hidden)
        self.softmax = nn.Softmax(dim=-1)

    def transpose_for_scores(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(*x.size()[:-1], self.num_attention_heads, self.attention_head_size)
        return x.permute(0, 2, 1, 3)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        q = self.transpose_for_scores(self.query(hidden_states))
        k = self.transpose_for_scores(self.key(hidden_states))
        v = self.transpose_for_scores(self.value(hidden_states))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.attention_head_size)
        context = torch.matmul(self.softmax(scores), v).permute(0, 2, 1, 3).contiguous()
        return self.out(context.view(*context.size()[:-2], self.all_head_size))


class Mlp(nn.Module):
    def __init__(self, hidden: int, mlp_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # ACT2FN["gelu"]: torch.nn.functional.gelu, exact


class Embeddings(nn.Module):
    def __init__(self, hidden: int, img_size: int, patch: int | None, resnet: tuple | None) -> None:
        super().__init__()
        in_channels = 3
        if resnet is not None:  # config.patches.grid: the ResNet's /16 map cut into grid x grid patches
            (block_units, width_factor), grid = resnet, patch
            patch_size, n_patches = img_size // 16 // grid, (img_size // 16) ** 2
            self.hybrid_model = ResNetV2(block_units, width_factor)
            in_channels = self.hybrid_model.width * 16
        else:
            patch_size, n_patches = patch, (img_size // patch) ** 2
        self.hybrid = resnet is not None
        self.patch_embeddings = nn.Conv2d(in_channels, hidden, kernel_size=patch_size, stride=patch_size)
        self.position_embeddings = nn.Parameter(torch.zeros(1, n_patches + 1, hidden))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls_tokens = self.cls_token.expand(x.shape[0], -1, -1)
        if self.hybrid:
            x = self.hybrid_model(x)
        x = self.patch_embeddings(x).flatten(2).transpose(-1, -2)
        return torch.cat((cls_tokens, x), dim=1) + self.position_embeddings


class Block(nn.Module):
    def __init__(self, hidden: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.hidden_size = hidden
        self.attention_norm = nn.LayerNorm(hidden, eps=1e-6)
        self.ffn_norm = nn.LayerNorm(hidden, eps=1e-6)
        self.ffn = Mlp(hidden, mlp_dim)
        self.attn = Attention(hidden, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.attention_norm(x)) + x
        return self.ffn(self.ffn_norm(x)) + x

    def load_from(self, weights: Mapping[str, np.ndarray], n_block: str) -> None:
        root, d = f"Transformer/encoderblock_{n_block}", self.hidden_size
        attn = f"{root}/MultiHeadDotProductAttention_1"
        for name in ("query", "key", "value", "out"):
            layer = getattr(self.attn, name)
            layer.weight.copy_(np2th(weights[f"{attn}/{name}/kernel"]).view(d, d).t())
            layer.bias.copy_(np2th(weights[f"{attn}/{name}/bias"]).view(-1))
        for r, fc in enumerate((self.ffn.fc1, self.ffn.fc2)):
            fc.weight.copy_(np2th(weights[f"{root}/MlpBlock_3/Dense_{r}/kernel"]).t())
            fc.bias.copy_(np2th(weights[f"{root}/MlpBlock_3/Dense_{r}/bias"]).t())
        for norm, name in ((self.attention_norm, "LayerNorm_0"), (self.ffn_norm, "LayerNorm_2")):
            norm.weight.copy_(np2th(weights[f"{root}/{name}/scale"]))
            norm.bias.copy_(np2th(weights[f"{root}/{name}/bias"]))


class Encoder(nn.Module):
    def __init__(self, hidden: int, depth: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Block(hidden, heads, mlp_dim) for _ in range(depth))
        self.encoder_norm = nn.LayerNorm(hidden, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.layer:
            x = block(x)
        return self.encoder_norm(x)


class Transformer(nn.Module):
    def __init__(self, embeddings: Embeddings, encoder: Encoder) -> None:
        super().__init__()
        self.embeddings, self.encoder = embeddings, encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embeddings(x))


class VisionTransformer(nn.Module):
    """`patch`: the patch size, or with `resnet=(block_units, width_factor)` its config's patches.grid."""

    def __init__(self, *, hidden: int, depth: int, heads: int, mlp_dim: int, img_size: int, num_classes: int,
                 patch: int, resnet: tuple | None = None) -> None:
        super().__init__()
        embeddings = Embeddings(hidden, img_size, patch, resnet)
        self.transformer = Transformer(embeddings, Encoder(hidden, depth, heads, mlp_dim))
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.transformer(x)[:, 0])  # logits (its tuple's first half)

    @torch.no_grad()
    def load_from(self, weights: Mapping[str, np.ndarray]) -> None:
        """Its load_from for a file of the model's own size (no position-embedding zoom)."""
        self.head.weight.copy_(np2th(weights["head/kernel"]).t())
        self.head.bias.copy_(np2th(weights["head/bias"]).t())
        embeddings = self.transformer.embeddings
        embeddings.patch_embeddings.weight.copy_(np2th(weights["embedding/kernel"], conv=True))
        embeddings.patch_embeddings.bias.copy_(np2th(weights["embedding/bias"]))
        embeddings.cls_token.copy_(np2th(weights["cls"]))
        self.transformer.encoder.encoder_norm.weight.copy_(np2th(weights["Transformer/encoder_norm/scale"]))
        self.transformer.encoder.encoder_norm.bias.copy_(np2th(weights["Transformer/encoder_norm/bias"]))
        posemb = np2th(weights["Transformer/posembed_input/pos_embedding"])
        assert posemb.size() == embeddings.position_embeddings.size()
        embeddings.position_embeddings.copy_(posemb)
        for uname, unit in self.transformer.encoder.layer.named_children():
            unit.load_from(weights, n_block=uname)
        if embeddings.hybrid:
            resnet = embeddings.hybrid_model
            resnet.root.conv.weight.copy_(np2th(weights["conv_root/kernel"], conv=True))
            resnet.root.gn.weight.copy_(np2th(weights["gn_root/scale"]).view(-1))
            resnet.root.gn.bias.copy_(np2th(weights["gn_root/bias"]).view(-1))
            for bname, block in resnet.body.named_children():
                for uname, unit in block.named_children():
                    unit.load_from(weights, n_block=bname, n_unit=uname)
