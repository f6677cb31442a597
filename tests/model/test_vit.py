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
    (dict(pos_resize="bilinear"),
     "pos_resize must be 'bicubic' or 'dino' or 'flexivit' or 'transformers' or 'torchvision', got 'bilinear'"),
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
    docs = {field.target.id: text.value.value for field, text in zip(body, body[1:], strict=False)
            if isinstance(field, ast.AnnAssign) and isinstance(text, ast.Expr) and isinstance(text.value, ast.Constant)}
    undocumented = [f.name for f in dataclasses.fields(ViTConfig) if "Set by: " not in docs.get(f.name, "")]
    assert not undocumented


# --- any input size at forward: the stored position table resampled to the input's grid --------------------

# Our depth-2 models at their stored size (224), against timm's same weights built with dynamic_img_size=True
# (its `_pos_embed` resamples with `resample_abs_pos_embed` at every forward: the reference for 'bicubic').
DYNAMIC = {
    # id: (timm kwargs on vit_tiny_patch16_224, our config)
    "class token": ({}, preset("Ti/16")),
    "class and 4 register tokens": (dict(reg_tokens=4), preset("Ti/16", reg_tokens=4)),
    "class token, no_embed_class": (dict(no_embed_class=True), preset("Ti/16", no_embed_class=True)),
    "gap, 2 registers, no_embed_class": (dict(class_token=False, global_pool="avg", reg_tokens=2, no_embed_class=True),
                                         preset("Ti/16", pool="gap", fc_norm=True, reg_tokens=2, no_embed_class=True)),
}
SIZES = [(160, 160), (384, 384), (224, 320), (96, 288)]


def dynamic_pair(variant: str) -> tuple[torch.nn.Module, VisionTransformer]:
    kwargs, cfg = DYNAMIC[variant]
    theirs = timm_vit("vit_tiny_patch16_224", depth=DEPTH, dynamic_img_size=True, **kwargs)
    # Copies: built from timm's own tensors, ours would share their storage and version counter.
    return theirs, build_with_weights(cfg.replace(depth=DEPTH), {k: v.clone() for k, v in theirs.state_dict().items()})


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("variant", list(DYNAMIC))
def test_at_any_tiled_size_our_model_gives_timms_dynamic_img_size_logits(variant: str, size: tuple[int, int]) -> None:
    theirs, ours = dynamic_pair(variant)
    diff = (logits(ours, size) - logits(theirs, size)).abs().max().item()
    assert diff <= ATOL, f"max abs logit difference {diff:.3e}"  # measured: <= 1.7e-6


@pytest.mark.parametrize("size", [(160, 160), (224, 320)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("pos_resize", ["bicubic", "dino", "transformers", "flexivit"])
def test_at_any_size_the_output_is_load_models_at_that_size(tmp_path, pos_resize: str, size: tuple[int, int]) -> None:
    from helpers.vit_weights import TINY, our_vit, write_test_weights

    from vitconvert import load_model

    cfg = TINY.replace(pos_resize=pos_resize, reg_tokens=1)
    path = write_test_weights(tmp_path / "w.safetensors", our_vit(cfg).state_dict(), cfg)
    fixed, free = load_model(path, img_size=size), load_model(path)
    assert fixed.config.img_size == size and free.config.img_size == (224, 224)
    # Measured: bit-identical (the same float32 resampling of the same table, then the same model).
    assert torch.equal(logits(free, size), logits(fixed, size))


@pytest.mark.parametrize("size", [(96, 128), (32, 64)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_a_hybrid_runs_at_another_size_as_timms_dynamic_img_size_does(tmp_path, size: tuple[int, int]) -> None:
    from helpers.timm_family import reduced

    from vitconvert import convert_timm, load_model

    name = "vit_tiny_r_s16_p8_224"  # ResNet stem (stride 4), then 8x8 patches: 32 pixels a token
    kwargs = reduced(name)
    theirs = timm_vit(name, dynamic_img_size=True, **kwargs)
    torch.save(theirs.state_dict(), tmp_path / "ckpt.pth")
    convert_timm(tmp_path / "ckpt.pth", tmp_path / "ours.safetensors", model=name, timm_kwargs=kwargs)
    ours = load_model(tmp_path / "ours.safetensors")
    assert ours.config.img_size == (kwargs["img_size"],) * 2 != size
    diff = (logits(ours, size) - logits(theirs, size)).abs().max().item()
    assert diff <= ATOL, f"max abs logit difference {diff:.3e}"  # measured: <= 8.4e-7


def test_at_any_size_gradients_reach_the_position_table_as_timms_do() -> None:
    theirs, ours = dynamic_pair("class and 4 register tokens")
    x = torch.randn(2, 3, 160, 288, generator=torch.Generator().manual_seed(3))
    logits(ours, (160, 288))  # inference first: the table it keeps for this grid carries no gradient
    for model in (theirs, ours):
        model.train()
        for _ in range(2):  # the second pass needs its own graph through the resampling, not the first's
            model(x).square().mean().backward()
    grad = ours.pos_embed.grad
    assert grad is not None and grad.abs().max().item() > 1e-3  # the resampling is in the graph
    # Measured 1.4e-7 on gradients up to 0.15 (float32 rounding of the same arithmetic, backwards).
    assert (grad - theirs.pos_embed.grad).abs().max().item() <= 5e-7


def count_resamplings(monkeypatch) -> list[tuple[int, int]]:
    from vitconvert.model import posembed

    calls, bicubic = [], posembed.RESIZERS["bicubic"]

    def counted(grid, new, old):
        calls.append(tuple(new))
        return bicubic(grid, new, old)

    monkeypatch.setitem(posembed.RESIZERS, "bicubic", counted)
    return calls


def test_inference_at_one_grid_resamples_the_position_table_once(monkeypatch) -> None:
    calls = count_resamplings(monkeypatch)
    _, ours = dynamic_pair("class token")
    first = logits(ours, (160, 160))
    for size in [(160, 160), (160, 160), (224, 320), (160, 160), (224, 224)]:
        logits(ours, size)
    assert calls == [(10, 10), (14, 20)]  # the stored grid is never resampled
    assert torch.equal(logits(ours, (160, 160)), first)


def test_the_kept_tables_are_bounded_the_oldest_dropped_first(monkeypatch) -> None:
    from vitconvert.model.posembed import GridTables

    calls = count_resamplings(monkeypatch)
    _, ours = dynamic_pair("class token")
    sides = [16 * (2 + i) for i in range(GridTables.MAX_GRIDS + 1)]  # one grid more than are kept
    for side in sides + sides[-1:] + sides[:1]:
        logits(ours, (side, 32))
    assert calls == [(side // 16, 2) for side in sides + sides[:1]]


@pytest.mark.parametrize("change", ["in place under no_grad", "load_state_dict", "an optimizer step",
                                    "load_state_dict(assign=True)"])
def test_after_the_position_table_changes_the_next_forward_uses_the_new_values(change: str) -> None:
    theirs, ours = dynamic_pair("class token")
    size = (160, 224)
    logits(ours, size)  # a resampled table now kept for this grid
    new = torch.randn(ours.pos_embed.shape, generator=torch.Generator().manual_seed(5)) * 0.05
    if change == "in place under no_grad":
        with torch.no_grad():
            ours.pos_embed.copy_(new)
    elif change.startswith("load_state_dict"):
        ours.load_state_dict({**ours.state_dict(), "pos_embed": new}, assign=change.endswith("True)"))
    else:
        ours.train()
        optimizer = torch.optim.SGD([ours.pos_embed], lr=1.0)
        ours.pos_embed.grad = ours.pos_embed.detach() - new
        optimizer.step()
        ours.eval()
    with torch.no_grad():
        theirs.pos_embed.copy_(new)
    # The same tolerance as timm's at any size: only a stale table would move it (by ~0.1 and more).
    assert (logits(ours, size) - logits(theirs, size)).abs().max().item() <= ATOL


@pytest.mark.parametrize("cfg, size, message", [
    (preset("Ti/16"), (225, 224),
     "image size 225x224 is not a multiple of the patch stride 16"
     "; the nearest sizes that tile are 224x224 and 240x224"),
    (preset("Ti/16"), (8, 224), "image size 8x224 is smaller than one patch of this model (16x16 pixels)"),
    (preset("Ti/16", patch_size=(16, 8)), (224, 100),
     "image size 224x100 is not a multiple of the patch stride 16x8"
     "; the nearest sizes that tile are 224x96 and 224x104"),
    # SigLIP So400m/14 at 384 stores a 27x27 grid: its own size runs, and other sizes must tile
    (preset("Ti/16", patch_size=14, img_size=(384, 384)), (385, 384),
     "image size 385x384 is not a multiple of the patch stride 14"
     "; the nearest sizes that tile are 378x378 and 392x392"),
    # a hybrid's ResNet stride counts: 4 x 8-pixel patches
    (preset("Ti/16", hybrid_layers=(), patch_size=8), (80, 64),
     "image size 80x64 is not a multiple of the patch stride 32; the nearest sizes that tile are 64x64 and 96x64"),
    (preset("Ti/16", hybrid_layers=(), patch_size=8), (16, 64), "smaller than one patch of this model (32x32 pixels)"),
], ids=["untiled", "smaller than a patch", "rectangular patches", "untiled beside a file's own untiled size",
        "hybrid stride", "hybrid smaller than its stride"])
def test_a_size_that_cannot_run_is_one_line_saying_why_before_any_compute(cfg, size, message) -> None:
    from vitconvert.core.errors import VitConvertError

    model = VisionTransformer(cfg.replace(depth=1)).eval()
    computed = []
    model.patch_embed.register_forward_pre_hook(lambda *_: computed.append(True))
    with pytest.raises(VitConvertError) as raised:
        model(torch.zeros(1, 3, *size))
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert not computed


def test_a_files_own_untiled_size_runs_as_the_whole_patches_inside_it() -> None:
    # timm's SigLIP-so400m/14 at 384 sees its top-left 378x378 pixels: the same at 378 as at 384.
    model = VisionTransformer(preset("Ti/16", patch_size=14, img_size=(384, 384), depth=1)).eval()
    x = torch.randn(1, 3, 384, 384, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(model(x), model(x[..., :378, :378].contiguous()))
