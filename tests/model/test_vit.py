"""Our ViT is numerically timm's ViT on the same weights, at the trained size and at others."""

from __future__ import annotations

import typing

import pytest
import torch
from helpers.timm_reference import model_shapes, timm_vit

from vitconvert.core.config import Activation, ViTConfig, preset
from vitconvert.core.param_shapes import param_shapes
from vitconvert.model.layers import activation
from vitconvert.model.loading import at_size, build_with_weights
from vitconvert.model.vit import VisionTransformer

# float32, same activation on both sides. Measured: 0 for gap models, <= 2.4e-6 for class-token
# models (our last block computes only the class token: a smaller matrix product rounds differently).
ATOL = 1e-5

# Each at its real width, heads and token count, with 2 blocks: a first block and the last one (whose
# shortcut computes only the prefix tokens) are all a deeper stack repeats. The real depth runs in
# test_parity_timm.py (a full ViT-B/16 through vitpredict).
DEPTH = 2
VARIANTS = {
    # id: (timm name, timm kwargs, our config)
    "Ti/16 token": ("vit_tiny_patch16_224", {}, preset("Ti/16")),
    "S/16 token": ("vit_small_patch16_224", {}, preset("S/16")),
    "B/16 token": ("vit_base_patch16_224", {}, preset("B/16")),
    "S/32 gap (JAX: norm, then mean)": (
        "vit_small_patch32_224", dict(class_token=False, global_pool="avg", fc_norm=False),
        preset("S/32", pool="gap")),
    "Ti/16 gap (timm: mean, then fc_norm)": (
        "vit_tiny_patch16_224", dict(class_token=False, global_pool="avg"), preset("Ti/16", pool="gap", fc_norm=True)),
    "DeiT-Ti distilled": ("deit_tiny_distilled_patch16_224", {}, preset("Ti/16", distilled=True)),
    "Ti/16 big_vision pos (no_embed_class)": ("vit_tiny_patch16_224", dict(no_embed_class=True),
                                             preset("Ti/16", no_embed_class=True)),
}


def logits(model: torch.nn.Module, size: tuple[int, int], seed: int = 1) -> torch.Tensor:
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return model(x)


@pytest.mark.parametrize("size", [(224, 224), (384, 384)], ids=["224", "384"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_our_model_gives_timms_logits(variant: str, size: tuple[int, int]) -> None:
    name, kwargs, cfg = VARIANTS[variant]
    kwargs = dict(kwargs, depth=DEPTH)
    reference = timm_vit(name, **kwargs)
    theirs_at_size = reference
    state = reference.state_dict()
    cfg_at, state_at = at_size(cfg.replace(depth=DEPTH), state, size)
    if size != cfg.img_size:  # timm's own path to another size: its state-dict filter, bicubic
        from timm.models.vision_transformer import checkpoint_filter_fn

        theirs_at_size = timm_vit(name, img_size=size, **kwargs)
        theirs_at_size.load_state_dict(checkpoint_filter_fn(state, theirs_at_size))
    ours = build_with_weights(cfg_at, state_at)
    diff = (logits(ours, size) - logits(theirs_at_size, size)).abs().max().item()
    assert diff <= ATOL, f"max abs logit difference {diff:.3e}"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_pooled_features_are_timms_pre_logits(variant: str) -> None:
    # What feature extraction reads: the pooled token (DeiT: class and distillation tokens averaged;
    # gap: the mean, normed before or after as the model does), before any head.
    name, kwargs, cfg = VARIANTS[variant]
    reference = timm_vit(name, depth=DEPTH, **kwargs)
    ours = build_with_weights(cfg.replace(depth=DEPTH), reference.state_dict())
    x = torch.randn(2, 3, *cfg.img_size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        tokens = reference.forward_features(x)
        theirs = reference.forward_head(tokens, pre_logits=True)
        diff = (ours.forward_pooled(x) - theirs).abs().max().item()
        # timm's names mean timm's things: every token after the final norm, then the pooling.
        ours_tokens = ours.forward_features(x)
        token_diff = (ours_tokens - tokens).abs().max().item()
        head_diff = (ours.forward_head(ours_tokens, pre_logits=True) - theirs).abs().max().item()
        logit_diff = (ours.forward_head(ours_tokens) - reference.forward_head(tokens)).abs().max().item()
    assert diff <= ATOL, f"max abs feature difference {diff:.3e}"  # measured: <= 1.9e-6
    assert max(token_diff, head_diff, logit_diff) <= ATOL  # measured: <= 2e-6


@pytest.mark.parametrize("cfg, timm_name", [
    (preset("Ti/16"), "vit_tiny_patch16_224"), (preset("S/16"), "vit_small_patch16_224"),
    (preset("S/32"), "vit_small_patch32_224"), (preset("B/16"), "vit_base_patch16_224"),
    (preset("B/32"), "vit_base_patch32_224"), (preset("B/8"), "vit_base_patch8_224"),
    (preset("L/16"), "vit_large_patch16_224"), (preset("L/32"), "vit_large_patch32_224"),
    (preset("H/14"), "vit_huge_patch14_224"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_presets_have_timms_parameter_shapes(cfg: ViTConfig, timm_name: str) -> None:
    import timm

    with torch.device("meta"):
        theirs = timm.create_model(timm_name, pretrained=False, num_classes=1000)
    timm_shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert model_shapes(cfg) == timm_shapes
    assert param_shapes(cfg) == timm_shapes  # the torch-free twin the converters check against


def test_state_dict_of_ours_loads_strictly_into_timm() -> None:
    import timm

    ours = VisionTransformer(preset("Ti/16", distilled=True))
    theirs = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False)
    assert str(theirs.load_state_dict(ours.state_dict(), strict=True)) == "<All keys matched successfully>"


def test_intermediates_name_every_stage_and_end_in_the_logits() -> None:
    model = build_with_weights(preset("Ti/16", depth=3), timm_vit("vit_tiny_patch16_224", depth=3).state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        out = model.forward_intermediates(x)
        assert list(out.stages) == ["embed", "blocks.0", "blocks.1", "blocks.2", "norm", "pool"]
        # forward runs the last block for the class token only (a smaller matrix product): equal up
        # to float rounding, not bit for bit (measured: up to 1.7e-6 and 1.1e-6 over runs)
        assert (out.logits - model(x)).abs().max().item() <= 5e-6
        assert out.stages["pool"].shape == (1, 192)
        assert (model.forward_pooled(x) - out.stages["pool"]).abs().max().item() <= 5e-6


@pytest.mark.parametrize("bad, message", [
    (dict(embed_dim=100, num_heads=3), "not divisible by num_heads"),
    # A plain patch embedding leaves out the pixels past the last whole patch, as timm's does; a hybrid's
    # ResNet would pad them instead.
    (dict(img_size=(225, 224), hybrid_layers=(), patch_size=4), "not a multiple of the patch stride 16"),
    (dict(img_size=(8, 224)), "smaller than one patch"),
    (dict(pool="cls"), "pool must be"),
    (dict(act="tanh"), "act must be"),
    (dict(pos_resize="bilinear"), "pos_resize must be 'bicubic' or 'dino' or 'flexivit' or 'transformers', got 'bilinear'"),
    (dict(pool="gap", distilled=True), "distilled model needs pool='token'"),
    (dict(block="parallel", attn_head_dim=32), "parallel blocks split embed_dim into the heads"),
    (dict(block="post_norm", layer_scale=True), "post-norm blocks have no layer scale"),
    (dict(hybrid_variant="jeonsworld"), "hybrid_variant 'jeonsworld' is a ResNet of at least 2 stages"),
    (dict(attn_head_dim=0), "attn_head_dim must be a positive integer or null"),
])
def test_impossible_configs_are_refused(bad: dict, message: str) -> None:
    from vitconvert.core.errors import VitConvertError

    with pytest.raises(VitConvertError, match=message):
        preset("Ti/16", **bad)


def test_config_survives_json_round_trip() -> None:
    cfg = preset("S/32", pool="gap", hybrid_layers=(2, 2, 2, 2), patch_size=1, representation_size=384)
    assert ViTConfig.from_dict(cfg.to_dict()) == cfg


def test_the_pytorch_sources_fields_are_written_only_where_set() -> None:
    # A model expressible before them is written as before (an older vitconvert reads it).
    assert not {"attn_head_dim", "patch_pre_norm", "hybrid_variant"} & set(preset("Ti/16").to_dict())
    cfg = preset("S/16", hybrid_layers=(1, 1, 1), patch_size=1, hybrid_variant="jeonsworld", attn_head_dim=48,
                 patch_pre_norm=True, block="post_norm", act="relu")
    assert ViTConfig.from_dict(cfg.to_dict()) == cfg
    assert {k: cfg.to_dict()[k] for k in ("attn_head_dim", "patch_pre_norm", "hybrid_variant")} == \
        {"attn_head_dim": 48, "patch_pre_norm": True, "hybrid_variant": "jeonsworld"}
    # one spelling per model: the head width that embed_dim / num_heads already is, is no field
    assert preset("S/16", attn_head_dim=64) == preset("S/16")


# Each name ViTConfig.act accepts, written out from its definition (torch's GELU docs, OpenAI CLIP's QuickGELU).
ACTIVATION_FORMULAS = {
    "gelu": lambda x: 0.5 * x * (1 + torch.erf(x / 2 ** 0.5)),
    "gelu_tanh": lambda x: 0.5 * x * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (x + 0.044715 * x ** 3))),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "silu": lambda x: x * torch.sigmoid(x),
    "relu": lambda x: x.clamp(min=0),
}


@pytest.mark.parametrize("name", typing.get_args(Activation))
def test_every_config_activation_computes_its_formula(name):
    x = torch.linspace(-6, 6, 241, dtype=torch.float64)
    # float64 on both sides; measured 0 to 8.9e-16 apart (silu).
    torch.testing.assert_close(activation(name)(x), ACTIVATION_FORMULAS[name](x), atol=2e-15, rtol=0)


def test_every_config_field_says_what_it_means_and_which_sources_set_it() -> None:
    # The attribute docstring right after each field, as the API docs (mkdocstrings) read it.
    import ast
    import dataclasses
    import inspect

    import vitconvert.core.config as config_module

    body = next(node for node in ast.parse(inspect.getsource(config_module)).body
                if isinstance(node, ast.ClassDef) and node.name == "ViTConfig").body
    docs = {field.target.id: text.value.value for field, text in zip(body, body[1:])
            if isinstance(field, ast.AnnAssign) and isinstance(text, ast.Expr) and isinstance(text.value, ast.Constant)}
    undocumented = [f.name for f in dataclasses.fields(ViTConfig) if "Set by: " not in docs.get(f.name, "")]
    assert not undocumented
