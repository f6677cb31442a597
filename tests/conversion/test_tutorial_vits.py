"""torch2torch: the ViTs people build from tutorials, converted, against their own code.

- lucidrains' vit-pytorch (the installed package): ViT (class token or mean pooling, dim_head x heads other
  than dim, one head without a projection, no head) and SimpleViT; older releases' state dicts written
  from the current model by a renaming of our own, after giving the model that release's structure.
- jeonsworld's ViT-pytorch (tests/helpers/jeonsworld.py, written out from its source): random weights,
  and a Google npz loaded by its own load_from, against our jax2torch of the same file.
- ViTs built on torch.nn.TransformerEncoder: pre-norm and post-norm, relu and gelu, against torch's module.
Where timm's VisionTransformer can build the model, the file also loads into timm with the same logits.
"""

from __future__ import annotations

import re
from functools import partial

import numpy as np
import pytest
import torch
from helpers import jeonsworld
from helpers.numerics import logits_with_eps
from helpers.published_layouts import fill_random_, random_timm_vit, write_npz
from safetensors.torch import load_file
from torch import nn

from vitconvert import VitConvertError, convert_jax, convert_torch, load_model, read_record
from vitconvert.cli import cli
from vitconvert.cli.errors import run

vit_pytorch = pytest.importorskip("vit_pytorch")

# float32; the conversions are renames and exact reshapes (the patch Linear as a convolution, jeonsworld's
# kernels standardized by its own calls), so only the order of float operations differs. Observed: logits
# <= 6.3e-7 (lucidrains <= 6.3e-7, jeonsworld <= 5.8e-7, nn.TransformerEncoder <= 3.6e-7, timm on our files
# <= 3.1e-7); every token of a headless model 1.4e-6.
ATOL = 1e-5
IMG, PATCH, DIM, DEPTH, MLP, CLASSES = 32, 8, 32, 2, 64, 10


def batch(size: int = IMG) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


@torch.inference_mode()
def max_diff(ours: nn.Module, theirs: nn.Module, x: torch.Tensor) -> float:
    return (ours(x) - theirs(x)).abs().max().item()


def convert(model: nn.Module, tmp_path, source: str, **kwargs) -> tuple[nn.Module, object]:
    torch.save(model.state_dict(), tmp_path / "model.pth")
    record = convert_torch(tmp_path / "model.pth", tmp_path / "ours.safetensors", source=source, **kwargs)
    return load_model(tmp_path / "ours.safetensors"), record


def into_timm(path, **kwargs) -> nn.Module:
    """timm's VisionTransformer of the tests' size with our file's tensors, loaded strictly."""
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=IMG, patch_size=PATCH, embed_dim=DIM, depth=DEPTH, mlp_ratio=MLP / DIM,
                              num_classes=CLASSES, **kwargs).eval()
    model.load_state_dict(load_file(str(path)), strict=True)
    return model


# --- lucidrains' vit-pytorch --------------------------------------------------------------------------------

def lucidrains_vit(simple: bool = False, seed: int = 0, **kwargs) -> nn.Module:
    args = dict(image_size=IMG, patch_size=PATCH, num_classes=CLASSES, dim=DIM, depth=DEPTH, mlp_dim=MLP)
    model = (vit_pytorch.SimpleViT if simple else vit_pytorch.ViT)(**{**args, **kwargs})
    return fill_random_(model, seed).eval()


@torch.no_grad()
def as_release(model: nn.Module, release: tuple[int, ...], seed: int = 1) -> nn.Module:
    """The current model given the structure an older release had, in place, so that its own forward computes
    what that release's did: no transformer.norm and a LayerNorm + Linear head before 1.4 (SimpleViT 1.4.1);
    no LayerNorms around the patch projection before 1.0; a mean-pooled ViT keeps (and averages) its class
    token before 1.16."""
    simple = isinstance(model, vit_pytorch.SimpleViT)
    if release < ((1, 4, 1) if simple else (1, 4, 0)):
        model.transformer.norm = nn.Identity()
        name = "linear_head" if simple else "mlp_head"
        setattr(model, name, fill_random_(nn.Sequential(nn.LayerNorm(DIM), nn.Linear(DIM, CLASSES)), seed))
    if release < (1, 0, 0):
        model.to_patch_embedding[1] = model.to_patch_embedding[3] = nn.Identity()
    if not simple and release < (1, 16, 0) and model.cls_token.shape[0] == 0:
        g = torch.Generator().manual_seed(seed)
        model.cls_token = nn.Parameter(torch.randn(1, DIM, generator=g) * 0.05)
        model.pos_embedding = nn.Parameter(torch.randn(model.pos_embedding.shape[0] + 1, DIM, generator=g) * 0.05)
    return model


def release_state_dict(model: nn.Module, release: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """`model`'s state dict (after `as_release`) under the names and shapes that release wrote, from
    lucidrains/vit-pytorch's history: Residual(PreNorm(fn)) blocks in 0.7.0-0.10.0, PreNorm(fn) in 0.10.1-1.3, the
    patch projection alone (to_patch_embedding.1) before 1.0, cls_token and pos_embedding with a batch axis
    before 1.16.1."""
    simple = isinstance(model, vit_pytorch.SimpleViT)
    wrap = "" if simple or release >= (1, 4, 0) else "fn.fn." if release < (0, 10, 1) else "fn."
    norm = "fn.norm" if wrap == "fn.fn." else "norm"
    out = {}
    for key, value in model.state_dict().items():
        if m := re.fullmatch(r"(transformer\.layers\.\d+)\.(\d)\.(.+)", key):
            layer, sub, rest = m.groups()
            if wrap and sub == "0":  # Attention: norm, to_qkv, to_out
                rest = norm + rest[len("norm"):] if rest.startswith("norm") else wrap + rest
            elif wrap:  # FeedForward, its LayerNorm net.0 outside, its Linears net.1, net.4 inside as net.0, net.3
                inner = {"0": norm, "1": wrap + "net.0", "4": wrap + "net.3"}[rest.split(".")[1]]
                rest = inner + "." + rest.split(".")[-1]
            key = f"{layer}.{sub}.{rest}"
        elif key.startswith("to_patch_embedding.2.") and release < (1, 0, 0):
            key = key.replace(".2.", ".1.")
        elif key in ("cls_token", "pos_embedding") and release < (1, 16, 1):
            value = value[None]
        out[key] = value
    return out


LUCIDRAINS = {  # id: (release, SimpleViT, constructor arguments, timm's VisionTransformer arguments or None)
    "ViT 1.26 cls, 2 heads x 24 != 32": ((1, 26, 11), False, dict(heads=2, dim_head=24), None),
    "ViT 1.26 mean over the patches": ((1, 26, 11), False, dict(heads=2, dim_head=24, pool="mean"), None),
    "ViT 1.26 one head as wide as the model (no to_out)": ((1, 26, 11), False, dict(heads=1, dim_head=DIM), None),
    "SimpleViT 1.26": ((1, 26, 11), True, dict(heads=2, dim_head=24), None),
    "ViT 1.16.0 mean": ((1, 16, 0), False, dict(heads=2, dim_head=24, pool="mean"), None),
    "ViT 1.4.0 cls": ((1, 4, 0), False, dict(heads=4, dim_head=8), None),
    "ViT 1.4.0 mean with the class token": ((1, 4, 0), False, dict(heads=4, dim_head=8, pool="mean"), None),
    "ViT 1.0.0 cls": ((1, 0, 0), False, dict(heads=2, dim_head=16), None),
    "SimpleViT 1.0.0": ((1, 0, 0), True, dict(heads=2, dim_head=16), None),
    "ViT 0.10.1 cls": ((0, 10, 1), False, dict(heads=2, dim_head=16),
                       dict(num_heads=2, qkv_bias=False, global_pool="token", fc_norm=True)),
    "ViT 0.10.1 mean with the class token": ((0, 10, 1), False, dict(heads=2, dim_head=16, pool="mean"),
                                             dict(num_heads=2, qkv_bias=False, global_pool="avg", fc_norm=True,
                                                  pool_include_prefix=True)),
    "ViT 0.7.0 cls": ((0, 7, 0), False, dict(heads=2, dim_head=24), None),
    "SimpleViT 0.35.2": ((0, 35, 2), True, dict(heads=2, dim_head=24), None),
}


@pytest.mark.parametrize("case", list(LUCIDRAINS))
def test_lucidrains_releases_give_vit_pytorchs_logits(tmp_path, case: str) -> None:
    release, simple, kwargs, timm_args = LUCIDRAINS[case]
    reference = as_release(lucidrains_vit(simple, **kwargs), release)
    torch.save(release_state_dict(reference, release), tmp_path / "model.pt")
    # What the weights do not show: the heads, the pooling beside a class token, SimpleViT's input size.
    args = {"heads": kwargs["heads"], **({"image_size": IMG} if simple else {}),
            **({"pool": kwargs["pool"]} if "pool" in kwargs else {})}
    record = convert_torch(tmp_path / "model.pt", tmp_path / "ours.safetensors", source="lucidrains", model_args=args)
    assert max_diff(load_model(tmp_path / "ours.safetensors"), reference, batch()) <= ATOL
    assert record.config.ln_eps == 1e-5 and record.config.act == "gelu"  # torch's LayerNorm and exact GELU
    cannot = [n for n in record.notes if n.startswith("timm cannot load this file")]
    if timm_args is None:
        assert cannot
    else:  # a release without the patch norms, dim_head x heads == dim: timm's ViT, LayerNorm eps 1e-5
        assert not cannot
        theirs = into_timm(tmp_path / "ours.safetensors", norm_layer=partial(nn.LayerNorm, eps=1e-5), **timm_args)
        assert max_diff(theirs, reference, batch()) <= ATOL


def test_lucidrains_without_a_head_returns_every_token_as_vit_pytorch_does(tmp_path) -> None:
    reference = lucidrains_vit(heads=2, dim_head=24, num_classes=0)
    ours, record = convert(reference, tmp_path, "lucidrains", model_args={"heads": 2})
    assert (record.config.num_classes, record.config.pool) == (0, "none")
    with torch.inference_mode():
        assert ours(batch()).shape == reference(batch()).shape == (2, 17, DIM)
    assert max_diff(ours, reference, batch()) <= ATOL


def test_lucidrains_heads_default_to_its_dim_head_64_with_a_note(tmp_path) -> None:
    reference = lucidrains_vit(heads=3)  # dim_head 64 by default: a 192-wide attention in a 32-wide model
    ours, record = convert(reference, tmp_path, "lucidrains")
    assert (record.config.num_heads, record.config.attn_head_dim) == (3, 64)
    assert any("dim_head 64 assumed" in n for n in record.notes)
    assert max_diff(ours, reference, batch()) <= ATOL


def test_lucidrains_patch_norm_is_stored_in_the_kernels_channel_row_column_order(tmp_path) -> None:
    reference = lucidrains_vit(heads=2, dim_head=16)
    convert(reference, tmp_path, "lucidrains", model_args={"heads": 2})
    ours = load_file(str(tmp_path / "ours.safetensors"))
    p1, p2, c = 8, 8, 3  # vit-pytorch flattens a patch as (p1 p2 c); a conv kernel is (c, p1, p2)
    theirs = reference.to_patch_embedding[1].weight.detach().reshape(p1, p2, c)
    assert torch.equal(ours["patch_embed.pre_norm.weight"].reshape(c, p1, p2), theirs.permute(2, 0, 1))
    linear = reference.to_patch_embedding[2].weight.detach().reshape(DIM, p1, p2, c)
    assert torch.equal(ours["patch_embed.proj.weight"], linear.permute(0, 3, 1, 2))


@torch.no_grad()
def test_lucidrains_layernorm_epsilon_is_torchs_1e_5_on_faint_images(tmp_path) -> None:
    # The norm over the raw patches sees pixel values 1e-3: variance 1e-6, where 1e-5 and 1e-6 part ways.
    reference = lucidrains_vit(heads=2, dim_head=24)
    ours, _ = convert(reference, tmp_path, "lucidrains", model_args={"heads": 2})
    x = batch() * 1e-3
    assert max_diff(ours, reference, x) <= ATOL  # observed 3.6e-7
    assert (logits_with_eps(reference, nn.LayerNorm, 1e-6, x) - ours(x)).abs().max() > 0.1  # observed 0.39


# --- jeonsworld's ViT-pytorch ------------------------------------------------------------------------------

JEONSWORLD = {  # id: reference arguments
    "ViT": dict(patch=PATCH),
    "R50 hybrid (3 one-unit stages, width 32)": dict(patch=2, resnet=((1, 1, 1), 0.5)),
}


def jeonsworld_vit(seed: int = 0, **kwargs) -> nn.Module:
    args = dict(hidden=DIM, depth=DEPTH, heads=2, mlp_dim=MLP, img_size=IMG, num_classes=CLASSES)
    return fill_random_(jeonsworld.VisionTransformer(**args, **kwargs), seed).eval()


@pytest.mark.parametrize("case", list(JEONSWORLD))
def test_jeonsworld_gives_its_logits(tmp_path, case: str) -> None:
    reference = jeonsworld_vit(**JEONSWORLD[case])
    ours, record = convert(reference, tmp_path, "jeonsworld", model_args={"num_heads": 2})
    assert max_diff(ours, reference, batch()) <= ATOL
    hybrid = "resnet" in JEONSWORLD[case]
    assert record.config.hybrid_variant == ("jeonsworld" if hybrid else "bit")
    if hybrid:  # timm's ResNet pads the SAME way and groups its shortcut norms by 32: the file is no timm model
        assert any(n.startswith("timm cannot load this file: jeonsworld's ResNet") for n in record.notes)
    else:  # vit_jax's ViT: timm's own, with timm's eps 1e-6 and exact GELU
        assert max_diff(into_timm(tmp_path / "ours.safetensors", num_heads=2), reference, batch()) <= ATOL


NPZ = {  # id: (timm model written as a Google npz, reference arguments)
    "ViT": (dict(patch_size=PATCH), dict(patch=PATCH)),
    "R50 hybrid": (dict(patch_size=1, backbone={"layers": (1, 1, 1), "channels": (128, 256, 512), "stem_chs": 32}),
                   dict(patch=2, resnet=((1, 1, 1), 0.5))),
}


@pytest.mark.parametrize("case", list(NPZ))
def test_a_google_npz_through_jeonsworlds_load_from_converts_as_its_model_runs_it(tmp_path, case: str) -> None:
    timm_args, reference_args = NPZ[case]
    timm_model = random_timm_vit(dict(img_size=IMG, embed_dim=DIM, depth=DEPTH, num_heads=2, mlp_ratio=2.0,
                                      num_classes=CLASSES, **timm_args), seed=3)
    write_npz(timm_model, tmp_path / "google.npz", "vit_jax")
    reference = jeonsworld_vit(**reference_args)
    with np.load(tmp_path / "google.npz") as npz:
        reference.load_from(dict(npz))
    ours, _ = convert(reference, tmp_path, "jeonsworld", model_args={"num_heads": 2})
    assert max_diff(ours, reference, batch()) <= ATOL
    # jeonsworld runs exact GELU where the JAX models run tanh: jax2torch --gelu erf is the same model.
    convert_jax(tmp_path / "google.npz", tmp_path / "jax.safetensors", gelu="erf")
    via_jax = load_model(tmp_path / "jax.safetensors")
    if "resnet" not in reference_args:
        assert max_diff(ours, via_jax, batch()) <= ATOL
    else:  # its ResNet is not the JAX one it loads (padding, max-pool, shortcut norms): other logits.
        assert max_diff(ours, via_jax, batch()) > 0.05  # observed 0.92


@torch.no_grad()
def test_jeonsworld_layernorm_epsilon_is_its_1e_6_on_small_tokens(tmp_path) -> None:
    reference = jeonsworld_vit(patch=PATCH)
    embeddings = reference.transformer.embeddings
    for p in (embeddings.patch_embeddings.weight, embeddings.patch_embeddings.bias, embeddings.cls_token,
              embeddings.position_embeddings):
        p.mul_(1e-3)  # tokens of variance ~1e-6 into the first LayerNorm
    ours, _ = convert(reference, tmp_path, "jeonsworld", model_args={"num_heads": 2})
    assert max_diff(ours, reference, batch()) <= ATOL  # observed 3.0e-7
    assert (logits_with_eps(reference, nn.LayerNorm, 1e-5, batch()) - ours(batch())).abs().max() > 0.1  # obs. 0.76


@torch.no_grad()
def test_jeonsworld_resnet_epsilons_are_its_own_on_small_activations(tmp_path) -> None:
    # An image times 1e-4 into the stem's GroupNorm (eps 1e-6); the stem's output times 1e-3 into the units'
    # GroupNorms (eps 1e-6) and the shortcut's per-channel GroupNorm (torch's default eps, 1e-5).
    reference = jeonsworld_vit(patch=2, resnet=((1, 1, 1), 0.5))
    resnet = reference.transformer.embeddings.hybrid_model
    resnet.root.gn.weight.mul_(1e-3)
    resnet.root.gn.bias.mul_(1e-3)
    ours, _ = convert(reference, tmp_path, "jeonsworld", model_args={"num_heads": 2})
    x = batch() * 1e-4
    assert max_diff(ours, reference, x) <= ATOL  # observed 3.0e-7
    expected = reference(x)
    for kind, other in ((nn.GroupNorm, 1e-5), (nn.GroupNorm, 1e-6)):  # every GroupNorm at one eps, either one
        assert (logits_with_eps(reference, kind, other, x) - expected).abs().max() > 0.1  # observed 0.21, 0.54


@torch.no_grad()
def test_jeonsworld_kernels_are_stored_standardized_as_its_stdconv_computes_them(tmp_path) -> None:
    reference = jeonsworld_vit(patch=2, resnet=((1, 1, 1), 0.5))
    root = reference.transformer.embeddings.hybrid_model.root.conv.weight
    root.mul_(torch.logspace(-6, -2, root.shape[0])[:, None, None, None])  # kernel std 1e-7 to 1e-3: eps shows
    convert(reference, tmp_path, "jeonsworld", model_args={"num_heads": 2})
    stored = load_file(str(tmp_path / "ours.safetensors"))["patch_embed.backbone.stem.conv.weight"].double()
    w = root.double()
    mean, var = w.mean(dim=(1, 2, 3), keepdim=True), w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
    assert (stored - (w - mean) / torch.sqrt(var + 1e-5)).abs().max() <= 1e-6  # float32 vs 64: observed 4.1e-8
    assert (stored - (w - mean) / torch.sqrt(var + 1e-8)).abs().max() > 1  # timm's eps: observed 2.8


# --- torch.nn.TransformerEncoder ---------------------------------------------------------------------------

class EncoderViT(nn.Module):
    """A ViT as tutorials build it around torch.nn.TransformerEncoder, its parts under names of its own."""

    def __init__(self, norm_first: bool, activation: str, heads: int = 4, bias: bool = True,
                 cls_position: bool = True) -> None:
        super().__init__()
        self.cls_position = cls_position
        self.to_patches = nn.Conv2d(3, DIM, PATCH, PATCH)
        self.cls = nn.Parameter(torch.zeros(1, 1, DIM))
        self.pos = nn.Parameter(torch.zeros(1, (IMG // PATCH) ** 2 + cls_position, DIM))
        layer = nn.TransformerEncoderLayer(DIM, heads, MLP, dropout=0.0, activation=activation, batch_first=True,
                                           norm_first=norm_first, bias=bias)
        self.transformer = nn.Module()
        norm = nn.LayerNorm(DIM, bias=bias) if norm_first else None
        self.transformer.encoder = nn.TransformerEncoder(layer, DEPTH, norm=norm, enable_nested_tensor=False)
        self.fc = nn.Linear(DIM, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.to_patches(x).flatten(2).transpose(1, 2)
        cls = self.cls.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos if self.cls_position else torch.cat([cls, x + self.pos], dim=1)
        return self.fc(self.transformer.encoder(x)[:, 0])


NAMES = {"patch_embed": "to_patches", "cls_token": "cls", "pos_embed": "pos", "head": "fc"}


@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
def test_a_transformer_encoder_vit_gives_torchs_logits(tmp_path, norm_first: bool, activation: str) -> None:
    reference = fill_random_(EncoderViT(norm_first, activation), seed=0).eval()
    args = {"nhead": 4, "norm_first": norm_first, "activation": activation}
    ours, record = convert(reference, tmp_path, "torch-encoder", model_args=args, names=NAMES)
    assert max_diff(ours, reference, batch()) <= ATOL
    assert record.config.block == ("pre_norm" if norm_first else "post_norm")
    assert record.config.ln_eps == 1e-5 and record.config.act == activation
    if norm_first:  # timm's pre-norm Block with torch's eps and the activation
        act = {"relu": nn.ReLU, "gelu": nn.GELU}[activation]
        theirs = into_timm(tmp_path / "ours.safetensors", num_heads=4, act_layer=act,
                           norm_layer=partial(nn.LayerNorm, eps=1e-5))
        assert max_diff(theirs, reference, batch()) <= ATOL
    else:
        assert any(n.startswith("timm cannot load this file: post-norm blocks") for n in record.notes)


@pytest.mark.parametrize(("zeroed", "expected"), [(True, True), (False, False)])
def test_a_zero_head_under_the_users_name_is_recorded(tmp_path, zeroed: bool, expected: bool) -> None:
    reference = fill_random_(EncoderViT(False, "relu"), seed=0).eval()  # nn.TransformerEncoderLayer's defaults
    if zeroed:
        with torch.no_grad():
            for p in reference.fc.parameters():
                p.zero_()
    _, record = convert(reference, tmp_path, "torch-encoder", model_args={"nhead": 4}, names=NAMES)
    assert record.head_is_zero is expected and read_record(tmp_path / "ours.safetensors").head_is_zero is expected


def test_a_transformer_encoder_without_biases_and_positions_for_the_patches_alone(tmp_path) -> None:
    # nn.TransformerEncoderLayer(bias=False): no bias anywhere, its LayerNorms' stored as zeros; a position
    # table without the class token's row (timm's no_embed_class).
    reference = fill_random_(EncoderViT(True, "gelu", bias=False, cls_position=False), seed=0).eval()
    args = {"nhead": 4, "norm_first": True, "activation": "gelu"}
    ours, record = convert(reference, tmp_path, "torch-encoder", model_args=args, names=NAMES)
    assert max_diff(ours, reference, batch()) <= ATOL  # observed 2.4e-7
    cfg = record.config
    assert (cfg.qkv_bias, cfg.proj_bias, cfg.no_embed_class) == (False, False, True)
    theirs = into_timm(tmp_path / "ours.safetensors", num_heads=4, qkv_bias=False, proj_bias=False,
                       no_embed_class=True, norm_layer=partial(nn.LayerNorm, eps=1e-5))
    assert max_diff(theirs, reference, batch()) <= ATOL  # observed 0


@torch.no_grad()
def test_transformer_encoder_layernorm_epsilon_is_the_given_one_on_small_tokens(tmp_path) -> None:
    reference = fill_random_(EncoderViT(True, "gelu"), seed=0).eval()
    for p in (reference.to_patches.weight, reference.to_patches.bias, reference.cls, reference.pos):
        p.mul_(1e-3)  # tokens of variance ~1e-6 into the first LayerNorm
    args = {"nhead": 4, "norm_first": True, "activation": "gelu"}
    ours, _ = convert(reference, tmp_path, "torch-encoder", model_args=args, names=NAMES)  # torch's default 1e-5
    assert max_diff(ours, reference, batch()) <= ATOL  # observed 6.0e-7
    expected = reference(batch())
    assert (logits_with_eps(reference, nn.LayerNorm, 1e-6, batch()) - expected).abs().max() > 0.1  # observed 0.22
    ours, _ = convert(reference, tmp_path, "torch-encoder", model_args={**args, "layer_norm_eps": 1e-6}, names=NAMES,
                      force=True)
    assert max_diff(ours, reference, batch()) <= ATOL


def test_torch2torch_cli_names_the_parts_and_says_timm_cannot_load_a_post_norm_model(tmp_path, capsys) -> None:
    reference = fill_random_(EncoderViT(False, "relu"), seed=0).eval()
    torch.save({"model": reference.state_dict(), "epoch": 3}, tmp_path / "model.pth")
    with pytest.raises(SystemExit) as exit_info:
        run(cli, ["torch2torch", str(tmp_path / "model.pth"), str(tmp_path / "ours.safetensors"),
                  "--source", "torch-encoder", "--model-args", '{"nhead": 4}',
                  "--map", ",".join(f"{k}={v}" for k, v in NAMES.items())])
        raise SystemExit(0)
    assert exit_info.value.code == 0
    assert "note        timm cannot load this file: post-norm blocks" in capsys.readouterr().out
    assert max_diff(load_model(tmp_path / "ours.safetensors"), reference, batch()) <= ATOL
    assert read_record(tmp_path / "ours.safetensors").source.format == "torch/nn.TransformerEncoder"


# --- what is refused ---------------------------------------------------------------------------------------

def _extra_key(state: dict) -> dict:
    return {**state, "extra.weight": torch.ones(3)}


def _layernorm_head(state: dict) -> dict:  # vit-pytorch 1.4.0's SimpleViT: linear_head = nn.LayerNorm(dim)
    return {**{k: v for k, v in state.items() if not k.startswith("linear_head")},
            "linear_head.weight": torch.ones(DIM), "linear_head.bias": torch.zeros(DIM)}


def _old_patch(state: dict) -> dict:
    return {("patch_to_embedding.weight" if k == "to_patch_embedding.2.weight" else k): v for k, v in state.items()}


REFUSED = {  # id: (model, source, state-dict edit, model args, names, message)
    "a key nothing maps": (lambda: lucidrains_vit(heads=2, dim_head=24), "lucidrains", _extra_key, {"heads": 2}, None,
                           r"keys that nothing maps: extra\.weight"),
    "heads vit-pytorch's dim_head does not divide": (lambda: lucidrains_vit(heads=2, dim_head=24), "lucidrains",
                                                     None, {}, None, r"give its heads"),
    "a release before 0.7.0": (lambda: lucidrains_vit(heads=2, dim_head=24), "lucidrains", _old_patch, {"heads": 2},
                               None, r"before 0\.7\.0 \(patch_to_embedding\)"),
    "SimpleViT without its image size": (lambda: lucidrains_vit(True, heads=2, dim_head=24), "lucidrains", None,
                                         {"heads": 2}, None, r"give it with --model-args '\{\"image_size\": N\}'"),
    "SimpleViT 1.4.0's LayerNorm head": (lambda: lucidrains_vit(True, heads=2, dim_head=24), "lucidrains",
                                         _layernorm_head, {"heads": 2, "image_size": IMG}, None,
                                         r"linear_head is a LayerNorm, not a classifier"),
    "a model arg of another source": (lambda: lucidrains_vit(heads=2, dim_head=24), "lucidrains", None, {"nhead": 2},
                                      None, r"model args 'nhead' mean nothing for lucidrains"),
    "--map outside torch-encoder": (lambda: jeonsworld_vit(patch=PATCH), "jeonsworld", None, {"num_heads": 2},
                                    NAMES, r"--map names the parts around an nn\.TransformerEncoder"),
    "jeonsworld's heads at a width of no standard": (lambda: jeonsworld_vit(patch=PATCH), "jeonsworld", None, {}, None,
                                                     r"width 32 has no standard head count"),
    "no nhead": (lambda: EncoderViT(True, "gelu"), "torch-encoder", None, {}, NAMES, r"nhead"),
    "an unnamed patch embedding": (lambda: EncoderViT(True, "gelu"), "torch-encoder", None, {"nhead": 4},
                                   {"cls_token": "cls"}, r"no patch embedding patch_embed\.weight"),
    "a part named but absent is a part left over": (lambda: EncoderViT(True, "gelu"), "torch-encoder", None,
                                                    {"nhead": 4}, {**NAMES, "head": "classifier"},
                                                    r"keys that nothing maps: fc\.bias, fc\.weight"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_what_the_weights_cannot_tell_or_nothing_maps_is_an_error_that_names_it(tmp_path, case: str) -> None:
    make, source, edit, args, names, message = REFUSED[case]
    state = make().state_dict()
    torch.save(edit(state) if edit else state, tmp_path / "model.pth")
    with pytest.raises(VitConvertError, match=message):
        convert_torch(tmp_path / "model.pth", tmp_path / "ours.safetensors", source=source, model_args=args,
                      names=names)
    assert not (tmp_path / "ours.safetensors").exists()
