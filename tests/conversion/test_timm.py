"""timm2torch (conversion/timm.py, timm_models.py): timm's checkpoints in, our weights file out, timm's
outputs reproduced; and back into timm.

- every wrapper form of a timm state dict (plain, safetensors, wrapped, `module.` prefix), the record,
  --model NAME and --heads, the errors and the command, on timm's ViTs;
- timm's whole VisionTransformer family (the architectures `timm.list_pretrained()` names, computed from
  the installed timm), each converted as `timm2torch --model NAME` converts it and run beside timm's model;
  DINO and DINOv2 files; what the tensors do not show; the options no published model uses; timm's hybrids'
  own numerics.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import torch
from helpers.cli import cli_error
from helpers.numerics import logits_with_eps, shrink_embeddings_
from helpers.timm_family import reduced, vit_family
from helpers.timm_reference import timm_vit
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import VisionTransformer

from vitconvert import VitConvertError, convert_timm, load_model, read_record
from vitconvert.cli import cli
from vitconvert.conversion.timm_models import create_timm_model, timm_config
from vitconvert.formats.weights_file import FORMAT_VERSION

# ==============================================================================================================
# timm's ViTs: every wrapper form, the record, --model and --heads, the errors, the command
# ==============================================================================================================
# float32, identical activation, the conversion a rename: only our last block's shortcut (the class
# token alone) rounds differently. Measured: <= 1.7e-6.
ATOL = 5e-6

MODELS = {  # 2 blocks: the conversion renames per block, so more blocks repeat what 2 show
    "token": ("vit_tiny_patch16_224", dict(depth=2)),
    "gap fc_norm": ("vit_tiny_patch16_224", dict(depth=2, class_token=False, global_pool="avg")),
    "deit distilled": ("deit_tiny_distilled_patch16_224", dict(depth=2)),
}


def save(state: dict, path, form: str) -> None:
    if form == "safetensors":
        save_file(state, str(path))
    elif form == "wrapped model":
        torch.save({"model": state, "epoch": 300, "optimizer": {"lr": 0.1}}, path)
    elif form == "wrapped state_dict":
        torch.save({"state_dict": state}, path)
    elif form == "module. prefix":
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    else:
        torch.save(state, path)


def batch(size: int | tuple[int, int] = 224) -> torch.Tensor:
    size = (size, size) if isinstance(size, int) else size
    return torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))


FORMS = {"plain .pth": ".pth", "plain .bin": ".bin", "safetensors": ".safetensors", "wrapped model": ".pth",
         "wrapped state_dict": ".pth", "module. prefix": ".bin"}


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("kind", list(MODELS))
def test_timm2torch_reproduces_timm_for_every_wrapper(tmp_path, kind: str, form: str) -> None:
    name, kwargs = MODELS[kind]
    reference = timm_vit(name, **kwargs)
    src = tmp_path / f"ckpt{FORMS[form]}"
    save(reference.state_dict(), src, form)
    record = convert_timm(src, tmp_path / "out.safetensors")
    ours = load_model(tmp_path / "out.safetensors")
    with torch.inference_mode():
        diff = (ours(batch()) - reference(batch())).abs().max().item()
    assert diff <= ATOL
    assert record.source.format == "timm" and record.source.file == src.name and len(record.source.sha256) == 64
    assert record.config.distilled == (kind == "deit distilled")
    assert record.config.pool == ("gap" if kind == "gap fc_norm" else "token")


@pytest.mark.parametrize(("zeroed", "expected"), [(("head.weight", "head.bias"), True), (("head.bias",), False)])
def test_a_zero_head_is_recorded(tmp_path, zeroed, expected) -> None:
    state = timm_vit("vit_tiny_patch16_224", depth=2, num_classes=5).state_dict()
    save_file({k: torch.zeros_like(v) if k in zeroed else v for k, v in state.items()}, str(tmp_path / "z.safetensors"))
    assert convert_timm(tmp_path / "z.safetensors", tmp_path / "ours.safetensors").head_is_zero is expected
    assert read_record(tmp_path / "ours.safetensors").head_is_zero is expected


def test_layernorm_epsilon_is_timms_1e_6_on_small_tokens(tmp_path) -> None:
    # Embeddings 1000x smaller than usual: the first LayerNorm sees tokens of variance ~1e-6, where
    # timm's ViT epsilon (1e-6, not torch's default 1e-5) decides the output.
    reference = shrink_embeddings_(timm_vit("vit_tiny_patch16_224", depth=2))
    torch.save(reference.state_dict(), tmp_path / "t.pth")
    convert_timm(tmp_path / "t.pth", tmp_path / "t.safetensors")
    ours = load_model(tmp_path / "t.safetensors")
    with torch.inference_mode():
        expected = logits_with_eps(reference, torch.nn.LayerNorm, 1e-6, batch())
        assert (ours(batch()) - expected).abs().max().item() <= ATOL  # measured: 1.4e-6
    # measured: 1.6 apart with 1e-5
    assert (logits_with_eps(reference, torch.nn.LayerNorm, 1e-5, batch()) - expected).abs().max().item() > 100 * ATOL


def test_our_file_loads_into_timm_and_gives_the_same_logits(tmp_path) -> None:
    import timm

    reference = timm_vit("vit_small_patch16_224", depth=4)
    torch.save(reference.state_dict(), tmp_path / "s.pth")
    convert_timm(tmp_path / "s.pth", tmp_path / "s.safetensors")
    fresh = timm.create_model("vit_small_patch16_224", depth=4, pretrained=False).eval()
    fresh.load_state_dict(load_file(str(tmp_path / "s.safetensors")), strict=True)
    ours = load_model(tmp_path / "s.safetensors")
    with torch.inference_mode():
        assert (fresh(batch()) - reference(batch())).abs().max().item() == 0
        assert (ours(batch()) - fresh(batch())).abs().max().item() <= ATOL


def test_model_name_fills_heads_and_the_checkpoints_preprocessing(tmp_path) -> None:
    torch.save(timm_vit("vit_tiny_patch16_384").state_dict(), tmp_path / "t.pth")
    record = convert_timm(tmp_path / "t.pth", tmp_path / "t.safetensors",
                          model="vit_tiny_patch16_384.augreg_in21k_ft_in1k")
    p = record.preprocess
    # timm's pretrained cfg for that tag, written out
    assert (p.size, p.resize, p.crop_pct, p.interpolation, p.mean, p.std) == (
        (384, 384), "crop", 1.0, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert record.config.num_heads == 3 and record.config.img_size == (384, 384)
    assert record.labels == "imagenet-1k" and record.notes == ()


@pytest.fixture(scope="module")
def tiny_pth(tmp_path_factory):
    """timm's vit_tiny_patch16_224 at full size (192 wide, 12 blocks, 3 heads), random weights."""
    path = tmp_path_factory.mktemp("tiny") / "t.pth"
    torch.save(timm_vit("vit_tiny_patch16_224").state_dict(), path)
    return path


# --model NAME whose architecture is not the checkpoint's: refused, naming every difference.
OTHER_MODELS = {
    "wider": (["--model", "vit_small_patch16_224"],
              "embed_dim 192 (checkpoint) vs 384 (timm); mlp_dim 768 (checkpoint) vs 1536 (timm)"),
    "trained at 384": (["--model", "vit_tiny_patch16_384.augreg_in21k_ft_in1k"],
                       "img_size [224, 224] (checkpoint) vs [384, 384] (timm)"),
    "21k classes": (["--model", "vit_tiny_patch16_224.augreg_in21k"],
                    "num_classes 1000 (checkpoint) vs 21843 (timm)"),
    "distilled": (["--model", "deit_tiny_distilled_patch16_224"], "distilled False (checkpoint) vs True (timm)"),
    "other patch": (["--model", "vit_small_patch32_224"],
                    "patch_size 16 (checkpoint) vs 32 (timm); embed_dim 192 (checkpoint) vs 384 (timm); "
                    "mlp_dim 768 (checkpoint) vs 1536 (timm)"),
    "--heads against the name": (["--model", "vit_tiny_patch16_224", "--heads", "6"],
                                 "num_heads 6 (checkpoint) vs 3 (timm)"),
}


@pytest.mark.parametrize("case", list(OTHER_MODELS))
def test_a_model_name_of_another_architecture_is_refused(capsys, tiny_pth, tmp_path, case: str) -> None:
    args, differences = OTHER_MODELS[case]
    code, err = cli_error(capsys, "timm2torch", str(tiny_pth), str(tmp_path / "out.safetensors"), *args)
    assert code == 1 and err.count("\n") == 1
    name = args[1]
    assert err == f"error: {tiny_pth}: timm's {name} has another architecture than this checkpoint: {differences}\n"
    assert list(tmp_path.iterdir()) == []


def test_a_width_the_names_heads_do_not_divide_is_named_as_a_difference(capsys, tmp_path) -> None:
    torch.save(timm_vit("vit_tiny_patch16_224", embed_dim=64, depth=1, num_heads=4).state_dict(), tmp_path / "w.pth")
    code, err = cli_error(capsys, "timm2torch", str(tmp_path / "w.pth"), str(tmp_path / "w.safetensors"),
                          "--model", "vit_tiny_patch16_224")  # 3 heads: 64 does not split into them
    assert code == 1
    assert err.endswith("has another architecture than this checkpoint: embed_dim 64 (checkpoint) vs 192 (timm); "
                        "depth 1 (checkpoint) vs 12 (timm); mlp_dim 256 (checkpoint) vs 768 (timm)\n"), err


def test_the_model_name_gives_the_activation_and_eps_the_shapes_cannot_show(tmp_path, monkeypatch) -> None:
    """timm registers no ViT we can run whose activation or LayerNorm eps is not the default (exact
    GELU, 1e-6), so here the name's model is built with others."""
    from functools import partial

    from timm.layers import LayerNorm

    from vitconvert.conversion import timm_models as convert

    torch.save(timm_vit("vit_tiny_patch16_224").state_dict(), tmp_path / "t.pth")
    plain = convert_timm(tmp_path / "t.pth", tmp_path / "plain.safetensors")
    assert (plain.config.act, plain.config.ln_eps) == ("gelu", 1e-6)
    monkeypatch.setattr(convert, "create_timm_model", partial(
        convert.create_timm_model, act_layer="gelu_tanh", norm_layer=partial(LayerNorm, eps=1e-5)))
    named = convert_timm(tmp_path / "t.pth", tmp_path / "named.safetensors", model="vit_tiny_patch16_224")
    assert (named.config.act, named.config.ln_eps) == ("gelu_tanh", 1e-5)


@pytest.mark.parametrize("width, heads", [(64, 4), (320, 5)])
def test_a_width_without_a_standard_head_count_needs_heads(capsys, tmp_path, width: int, heads: int) -> None:
    reference = timm_vit("vit_tiny_patch16_224", embed_dim=width, depth=1, num_heads=heads)
    torch.save(reference.state_dict(), tmp_path / "w.pth")
    out = tmp_path / "out"
    out.mkdir()
    code, err = cli_error(capsys, "timm2torch", str(tmp_path / "w.pth"), str(out / "w.safetensors"))
    assert code == 1 and list(out.iterdir()) == []
    assert err == (f"error: {tmp_path / 'w.pth'}: width {width} has no standard head count (standard widths: "
                   "192, 384, 768, 1024, 1280); give it with --heads N, or name the timm model "
                   "with --model NAME\n")  # the command line speaks options, not keywords
    record = convert_timm(tmp_path / "w.pth", out / "w.safetensors", num_heads=heads)
    assert record.config.num_heads == heads
    with torch.inference_mode():
        diff = (load_model(out / "w.safetensors")(batch()) - reference(batch())).abs().max().item()
    assert diff <= ATOL


NOT_EXPRESSIBLE = {
    "a non-ViT": ("resnet50", "timm's resnet50 is a ResNet, not a VisionTransformer"),
    "differential attention": ("vit_dwee_patch16_reg1_gap_256", "timm's vit_dwee_patch16_reg1_gap_256 is a ViT "
                                                                "variant vitconvert cannot express: attention "
                                                                "DiffAttention"),
    "an unknown name": ("vit_nonexistent_patch3", "timm cannot build the model 'vit_nonexistent_patch3'"),
}


@pytest.mark.parametrize("case", list(NOT_EXPRESSIBLE))
def test_a_model_name_we_cannot_express_is_a_one_line_error(capsys, tiny_pth, tmp_path, case: str) -> None:
    name, message = NOT_EXPRESSIBLE[case]
    code, err = cli_error(capsys, "timm2torch", str(tiny_pth), str(tmp_path / "out.safetensors"), "--model", name)
    assert code == 1 and err.count("\n") == 1 and err.startswith(f"error: {message}"), err
    assert "unexpected" not in err
    assert list(tmp_path.iterdir()) == []


def test_unknown_keys_are_an_error_that_names_them(tmp_path) -> None:
    state = timm_vit("vit_tiny_patch16_224", depth=1).state_dict()
    state["blocks.0.gamma_1"] = torch.ones(192)  # DeiT III's own name for timm's ls1.gamma
    state["rel_pos_bias"] = torch.ones(3, 197, 197)
    torch.save(state, tmp_path / "x.pth")
    with pytest.raises(VitConvertError, match=r"keys that nothing maps: blocks\.0\.gamma_1, rel_pos_bias"):
        convert_timm(tmp_path / "x.pth", tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_missing_keys_are_an_error_that_names_them(tmp_path) -> None:
    # The first block's keys say which layers every block has (a bias of none of them is a model).
    state = timm_vit("vit_tiny_patch16_224", depth=2).state_dict()
    del state["blocks.1.attn.proj.bias"]
    torch.save(state, tmp_path / "x.pth")
    with pytest.raises(VitConvertError, match=r"missing keys: blocks\.1\.attn\.proj\.bias"):
        convert_timm(tmp_path / "x.pth", tmp_path / "x.safetensors")


def test_a_pickle_that_would_run_code_is_refused_and_the_code_does_not_run(tmp_path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(VitConvertError, match="refused"):
        convert_timm(tmp_path / "evil.pth", tmp_path / "out.safetensors")
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()


def test_existing_output_is_kept_without_force(tmp_path) -> None:
    torch.save(timm_vit("vit_tiny_patch16_224", depth=1).state_dict(), tmp_path / "t.pth")
    (tmp_path / "out.safetensors").write_bytes(b"precious")
    with pytest.raises(VitConvertError, match="exists; pass --force"):
        convert_timm(tmp_path / "t.pth", tmp_path / "out.safetensors")
    assert (tmp_path / "out.safetensors").read_bytes() == b"precious"
    convert_timm(tmp_path / "t.pth", tmp_path / "out.safetensors", force=True)
    assert read_record(tmp_path / "out.safetensors").config.depth == 1


@pytest.mark.parametrize("dtype, tolerance", [("bfloat16", 0.0), ("float16", 0.0)])
def test_stored_dtype_is_the_rounded_tensor(tmp_path, dtype: str, tolerance: float) -> None:
    state = timm_vit("vit_tiny_patch16_224", depth=1).state_dict()
    torch.save(state, tmp_path / "t.pth")
    convert_timm(tmp_path / "t.pth", tmp_path / "t.safetensors", dtype=dtype)
    stored = load_file(str(tmp_path / "t.safetensors"))
    torch_dtype = getattr(torch, dtype)
    for k, v in state.items():
        assert stored[k].dtype == torch_dtype
        assert (stored[k].float() - v.to(torch_dtype).float()).abs().max().item() <= tolerance, k


def test_cli_timm2torch_prints_the_record_as_json(tmp_path) -> None:
    from click.testing import CliRunner

    from vitconvert.cli import cli

    torch.save(timm_vit("vit_tiny_patch16_224", depth=1).state_dict(), tmp_path / "t.pth")
    result = CliRunner().invoke(cli, ["timm2torch", str(tmp_path / "t.pth"), str(tmp_path / "t.safetensors"),
                                      "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["record"]["config"]["depth"] == 1 and out["record"]["version"] == FORMAT_VERSION


@pytest.mark.parametrize("args, method", [([], "bicubic"), (["--pos-resize", "bicubic"], "bicubic"),
                                          (["--pos-resize", "dino"], "dino")])
def test_pos_resize_is_recorded_and_used_at_other_sizes(tmp_path, args: list, method: str) -> None:
    from click.testing import CliRunner
    from helpers.dino import dino_interpolate_pos_encoding
    from timm.layers import resample_abs_pos_embed

    state = timm_vit("vit_tiny_patch16_224", depth=1).state_dict()
    torch.save(state, tmp_path / "t.pth")
    result = CliRunner().invoke(cli, ["timm2torch", str(tmp_path / "t.pth"), str(tmp_path / "t.safetensors"), *args])
    assert result.exit_code == 0, result.output
    assert f"  pos resize  {method} (position embeddings at other input sizes)\n" in result.output
    assert read_record(tmp_path / "t.safetensors").config.pos_resize == method
    pos, grid = state["pos_embed"], (18, 30)
    expected = {"dino": lambda: dino_interpolate_pos_encoding(pos, 16, (1, 3, 288, 480)),
                "bicubic": lambda: resample_abs_pos_embed(pos, new_size=grid, old_size=(14, 14))}[method]()
    assert torch.equal(load_model(tmp_path / "t.safetensors", img_size="288x480").pos_embed.detach(), expected)


def test_an_unknown_pos_resize_is_refused_before_writing(tmp_path, capsys) -> None:
    torch.save(timm_vit("vit_tiny_patch16_224", depth=1).state_dict(), tmp_path / "t.pth")
    with pytest.raises(VitConvertError, match="pos_resize must be 'bicubic' or 'dino' or 'flexivit' or 'transformers' "
                                              "or 'torchvision', got 'nearest'"):
        convert_timm(tmp_path / "t.pth", tmp_path / "t.safetensors", pos_resize="nearest")
    code, err = cli_error(capsys, "timm2torch", str(tmp_path / "t.pth"), str(tmp_path / "t.safetensors"),
                          "--pos-resize", "nearest")
    assert code == 2 and err.startswith("error: ")
    assert "'nearest' is not one of 'bicubic', 'dino', 'flexivit', 'transformers', 'torchvision'" in err
    assert not (tmp_path / "t.safetensors").exists()

# ==============================================================================================================
# timm's whole VisionTransformer family
# ==============================================================================================================
# The family is every architecture that `timm.list_pretrained()` names and timm builds with its
# VisionTransformer class or a subclass, computed here from the installed timm, so a new architecture
# shows up as a new case. Each is built with random weights, its state dict saved, converted as
# `timm2torch --model NAME` converts it, loaded, and run beside timm's model on the same input.
#
# To keep the sweep fast each is reduced (2 blocks, 64 wide, 2 heads, 4x4 patches; hybrids keep their
# ResNet): the conversion reads the reduced model's definition from timm through the same kwargs
# (`timm_kwargs`, the Python side of --model). A few run at their full depth and width. EXCLUDED names
# what our ViT does not express, with the reason; the sweep asserts that exactly those are refused.

# float32, the same weights on both sides. Measured over the 166 architectures: at most 1.5e-6 (the giant DINOv2
# and TIPSv2). forward_features (every token through every block) is 0 for all; the rest is rounding, in the
# class-token models' last block, which ours computes for the class token alone, and in the post-norm model's
# mean over tokens, which timm's blocks leave in another memory layout (4.8e-7).
FAMILY_ATOL = 1e-5

# Architectures of the family our ViT does not express, and why (docs/sources/timm.md lists the same).
EXCLUDED = {
    "vit_base_mci_224": "MobileCLIP's convolutional stem is the patch embedding (ConvStem, no patch projection)",
    "vit_dpwee_patch16_reg1_gap_256": "parallel blocks with differential attention (DiffParallelScalingBlock)",
    "vit_dwee_patch16_reg1_gap_256": "differential attention (DiffAttention: two softmax maps subtracted)",
    "vit_dlittle_patch16_reg1_gap_256": "differential attention (DiffAttention: two softmax maps subtracted)",
    **{f"vitamin_{size}": "ViTamin: a MobileNet-style convolutional stem (MbConvStages) is the patch "
                          "embedding, and GeGLU MLPs with their own norm"
       for size in ("small_224", "base_224", "large_224", "large_256", "large_336", "large_384", "large2_224",
                    "large2_256", "large2_336", "large2_384", "xlarge_256", "xlarge_336", "xlarge_384")},
}

# At their real depth and width (the input stays small): layer scale; registers, no head; a CLIP pre-norm.
FULL_SIZE = ["deit3_small_patch16_224", "vit_small_patch14_reg4_dinov2", "vit_xsmall_patch16_clip_224"]

FAMILY = vit_family()


def convert_and_compare(tmp_path: Path, name: str, kwargs: dict) -> dict[str, float]:
    """Convert timm's `name` (built with `kwargs`, random weights) as --model NAME does; the max abs
    differences of our outputs from timm's."""
    reference = timm_vit(name, **kwargs)
    assert isinstance(reference, VisionTransformer)
    torch.save(reference.state_dict(), tmp_path / "ckpt.pth")
    convert_timm(tmp_path / "ckpt.pth", tmp_path / "out.safetensors", model=name, timm_kwargs=kwargs)
    # Every tensor under timm's name and shape: the file loads into timm's model of that definition.
    stored = {k: tuple(v.shape) for k, v in load_file(str(tmp_path / "out.safetensors")).items()}
    assert stored == {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    ours = load_model(tmp_path / "out.safetensors")
    x = batch(kwargs["img_size"])
    with torch.inference_mode():
        tokens = reference.forward_features(x)
        return {"forward": (ours(x) - reference(x)).abs().max().item(),
                "forward_features": (ours.forward_features(x) - tokens).abs().max().item(),
                "pre_logits": (ours.forward_pooled(x) - reference.forward_head(tokens, pre_logits=True))
                .abs().max().item()}


@pytest.mark.parametrize("name", FAMILY)
def test_every_architecture_of_the_family_converts_to_timms_outputs(tmp_path, name: str) -> None:
    if name in EXCLUDED:  # as defined (some convolutional stems take no other width), shapes only
        model = create_timm_model(name, meta=True)
        assert isinstance(model, VisionTransformer)
        with pytest.raises(VitConvertError, match=f"timm's {name} is a ViT variant vitconvert cannot express"):
            timm_config(model, name)
        return
    diffs = convert_and_compare(tmp_path, name, reduced(name))
    assert max(diffs.values()) <= FAMILY_ATOL, diffs


@pytest.mark.parametrize("name", FULL_SIZE)
def test_some_at_their_full_depth_and_width(tmp_path, name: str) -> None:
    diffs = convert_and_compare(tmp_path, name, dict(img_size=reduced(name)["img_size"]))
    assert max(diffs.values()) <= FAMILY_ATOL, diffs  # measured: <= 1.2e-6


def test_the_exclusions_are_of_the_family_and_few() -> None:
    assert set(EXCLUDED) <= set(FAMILY)
    assert len(FAMILY) - len(EXCLUDED) >= 166  # timm 1.0.31: 183 architectures, 17 excluded


def test_the_timm_page_names_the_coverage_and_every_exclusion() -> None:
    section = (Path(__file__).parents[2] / "docs" / "sources" / "timm.md").read_text()
    assert f"{len(FAMILY) - len(EXCLUDED)} of the {len(FAMILY)} architectures" in section
    globs = re.findall(r"`(\w+)_\*`", section)  # `vitamin_*`
    for name, reason in EXCLUDED.items():
        assert f"`{name}`" in section or any(name.startswith(f"{g}_") for g in globs), name
        assert reason in section, reason


# --- DINO and DINOv2 backbones -------------------------------------------------------------------------------

def dino_head(dim: int, seed: int) -> dict[str, torch.Tensor]:
    """DINO's projection head (DINOHead: a 3-layer MLP and a weight-normed last layer): trained, not a classifier."""
    g = torch.Generator().manual_seed(seed)
    return {"head.mlp.0.weight": torch.randn(64, dim, generator=g), "head.mlp.0.bias": torch.randn(64, generator=g),
            "head.mlp.2.weight": torch.randn(64, 64, generator=g), "head.mlp.2.bias": torch.randn(64, generator=g),
            "head.last_layer.weight_g": torch.randn(100, 1, generator=g),
            "head.last_layer.weight_v": torch.randn(100, 64, generator=g)}


def test_a_dino_training_checkpoint_gives_the_teachers_features(tmp_path) -> None:
    teacher = timm_vit("vit_small_patch16_224", seed=1, num_classes=0, depth=2)
    student = timm_vit("vit_small_patch16_224", seed=2, num_classes=0, depth=2)
    torch.save({"teacher": {**{f"backbone.{k}": v for k, v in teacher.state_dict().items()}, **dino_head(384, 3)},
                "student": {f"module.backbone.{k}": v for k, v in student.state_dict().items()},
                "epoch": 100, "args": argparse.Namespace(arch="vit_small", patch_size=16)},
               tmp_path / "checkpoint.pth")
    record = convert_timm(tmp_path / "checkpoint.pth", tmp_path / "dino.safetensors")
    ours = load_model(tmp_path / "dino.safetensors")
    x = batch(224)
    with torch.inference_mode():
        features = ours(x)
        assert (features - teacher(x)).abs().max().item() <= FAMILY_ATOL  # measured: 1.5e-6
        assert (features - student(x)).abs().max().item() > 0.1  # measured: 5.4
    c = record.config
    assert (c.num_classes, c.num_heads, c.pool, c.pos_resize) == (0, 6, "token", "dino")
    assert features.shape == (2, 384)
    assert any("projection head (6 tensors, head.*)" in note for note in record.notes)


def test_a_bare_dino_backbone_and_a_dino_tag(tmp_path) -> None:
    backbone = timm_vit("vit_small_patch16_224", num_classes=0, depth=2)
    torch.save(backbone.state_dict(), tmp_path / "dino_deitsmall16_pretrain.pth")
    bare = convert_timm(tmp_path / "dino_deitsmall16_pretrain.pth", tmp_path / "bare.safetensors")
    assert bare.config.num_classes == 0 and bare.config.pos_resize == "bicubic"  # nothing says DINO here
    named = convert_timm(tmp_path / "dino_deitsmall16_pretrain.pth", tmp_path / "named.safetensors",
                         model="vit_small_patch16_224.dino", timm_kwargs={"depth": 2})
    assert named.config == bare.config.replace(pos_resize="dino")
    with torch.inference_mode():
        x = batch(224)
        assert (load_model(tmp_path / "named.safetensors")(x) - backbone(x)).abs().max().item() <= FAMILY_ATOL  # 1.4e-6


def test_a_dinov2_backbone_gives_timms_features(tmp_path) -> None:
    backbone = timm_vit("vit_small_patch14_dinov2", depth=2, img_size=98)
    torch.save(backbone.state_dict(), tmp_path / "dinov2.pth")
    record = convert_timm(tmp_path / "dinov2.pth", tmp_path / "dinov2.safetensors")
    c = record.config
    assert (c.layer_scale, c.num_classes, c.patch_size, c.img_size, c.pos_resize) == (True, 0, 14, (98, 98), "bicubic")
    ours = load_model(tmp_path / "dinov2.safetensors")
    x = batch(98)
    with torch.inference_mode():
        assert (ours(x) - backbone(x)).abs().max().item() <= FAMILY_ATOL  # measured: 1.3e-6
        assert (ours.forward_features(x) - backbone.forward_features(x)).abs().max().item() <= FAMILY_ATOL


@pytest.mark.parametrize("name", ["vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2",
                                  "vit_giant_patch14_dinov2"])
def test_a_dinov2_release_file_gives_what_timm_reads_from_it(tmp_path, name: str) -> None:
    """facebookresearch/dinov2's own files, made here from a timm model: a mask_token; for the register
    models, register_tokens apart from a position embedding with a row for the class token; for the giant,
    the fused SwiGLU layers named w12 and w3. timm's own reading of such a file is the reference."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    kwargs = reduced(name)
    state = timm_vit(name, **kwargs).state_dict()
    dim = kwargs["embed_dim"]
    release = {re.sub(r"mlp\.fc1\.", "mlp.w12.", re.sub(r"mlp\.fc2\.", "mlp.w3.", k)) if "giant" in name else k: v
               for k, v in state.items()}
    release["mask_token"] = torch.zeros(1, dim)
    if "reg_token" in state:
        row = torch.randn(1, 1, dim, generator=torch.Generator().manual_seed(5)) * 0.05
        release["register_tokens"] = release.pop("reg_token")
        release["pos_embed"] = torch.cat([row, state["pos_embed"]], dim=1)
        release["cls_token"] = state["cls_token"] - row
    torch.save(release, tmp_path / "dinov2_release.pth")
    reference = create_timm_model(name, **kwargs)
    reference.load_state_dict(checkpoint_filter_fn(dict(release), reference))
    # The giant's packed SwiGLU does not show which half gates: it needs its name, as any packed GLU does.
    record = convert_timm(tmp_path / "dinov2_release.pth", tmp_path / "ours.safetensors", num_heads=2,
                          **(dict(model=name, timm_kwargs=kwargs) if "giant" in name else {}))
    assert record.notes[0] == "DINOv2 release: its mask_token (used in training only) was left out"
    x = batch(kwargs["img_size"])
    with torch.inference_mode():
        # measured: 3e-7 (plain), 6e-7 (registers, giant)
        assert (load_model(tmp_path / "ours.safetensors")(x) - reference(x)).abs().max().item() <= FAMILY_ATOL


# --- what the tensors do not show -----------------------------------------------------------------------------

MISSING = {  # name, kwargs: the missing fact the error names
    "CLIP": ("vit_base_patch16_clip_224", {}, "the activation and norm eps of a CLIP-style model with norm_pre"),
    "SigLIP": ("vit_base_patch16_siglip_224", {}, "the activation of its attention-pooling model"),
    "AIMv2": ("aimv2_large_patch14_224", {}, "the activation of its SwiGLU MLP (AIMv2: silu); nor the eps of its "
                                             "RMSNorm"),
    "BEiT3": ("beit3_base_patch16_224", {}, "whether it pools the class token or the mean of the patches"),
    "DINOv2 giant": ("vit_giant_patch14_dinov2", {}, "which half of fc1 gates its GLU MLP"),
}


@pytest.mark.parametrize("case", list(MISSING))
def test_without_a_name_a_missing_fact_is_an_error_that_says_how_to_give_it(tmp_path, case: str) -> None:
    name, kwargs, fact = MISSING[case]
    kwargs = {**reduced(name), **kwargs}
    torch.save(timm_vit(name, **kwargs).state_dict(), tmp_path / "ckpt.pth")
    with pytest.raises(VitConvertError) as error:
        convert_timm(tmp_path / "ckpt.pth", tmp_path / "out.safetensors", num_heads=kwargs["num_heads"])
    message = str(error.value)
    assert fact in message and message.endswith("name the timm model with --model NAME (model=NAME), e.g. the "
                                                 "name it was published under"), message
    assert not (tmp_path / "out.safetensors").exists()


def test_without_a_name_the_defaults_taken_are_noted(tmp_path) -> None:
    torch.save(timm_vit("vit_medium_patch16_reg4_gap_256", depth=2).state_dict(), tmp_path / "ckpt.pth")
    record = convert_timm(tmp_path / "ckpt.pth", tmp_path / "out.safetensors", num_heads=8)
    c = record.config
    assert (c.reg_tokens, c.has_class_token, c.pool, c.fc_norm, c.no_embed_class) == (4, False, "gap", True, True)
    assert record.notes == ("timm's defaults assumed for what the tensors do not show (pre-norm blocks, pooling "
                            "'gap' (the mean of the patch tokens), activation gelu, norm eps 1e-6) and timm's ViT "
                            "preprocessing; convert with --model NAME.TAG for the checkpoint's own",)


def test_a_name_of_another_architecture_is_refused_naming_the_new_fields(tmp_path) -> None:
    kwargs = reduced("vit_base_patch16_clip_224")
    torch.save(timm_vit("vit_base_patch16_clip_224", **kwargs).state_dict(), tmp_path / "clip.pth")
    with pytest.raises(VitConvertError, match=r"timm's vit_base_patch16_siglip_224 has another architecture than "
                                              r"this checkpoint: num_classes 1000 \(checkpoint\) vs 0 \(timm\); "
                                              r"pool token \(checkpoint\) vs map \(timm\); class_token True "
                                              r"\(checkpoint\) vs False \(timm\); pre_norm True \(checkpoint\) vs "
                                              r"False \(timm\); patch_bias False \(checkpoint\) vs True \(timm\)$"):
        convert_timm(tmp_path / "clip.pth", tmp_path / "out.safetensors", model="vit_base_patch16_siglip_224",
                     timm_kwargs=kwargs)


def test_timms_own_definitions_read_back_at_full_size_on_the_meta_device() -> None:
    """One of each kind at its real size: our parameter names and shapes are exactly timm's (timm_config
    compares them and raises otherwise)."""
    for name, expected in {
        "vit_so400m_patch14_siglip_384": dict(pool="map", img_size=(384, 384), act="gelu", mlp_dim=4304),
        "vit_base_patch16_clip_quickgelu_224": dict(act="quick_gelu", pre_norm=True, patch_bias=False, ln_eps=1e-5,
                                                    num_classes=512),
        "aimv2_large_patch14_224": dict(norm="rmsnorm", mlp="swiglu", proj_bias=False, patch_norm=True, ln_eps=1e-5),
        "vit_giant_patch14_reg4_dinov2": dict(mlp="swiglu_packed", act="silu", reg_tokens=4, layer_scale=True),
        "beit3_base_patch16_224": dict(scale_attn_norm=True, scale_mlp_norm=True, pool="gap", fc_norm=True),
        "vit_large_patch16_radio_v3": dict(final_norm=False, reg_tokens=7, no_embed_class=True),
        "vit_base_r50_s16_384": dict(hybrid_layers=(3, 4, 9), hybrid_gn_eps=1e-5, patch_size=1),
        "vit_base_patch16_rpn_224": dict(block="res_post", qkv_bias=False, layer_scale=False, pool="gap"),
        "vit_pwee_patch16_reg1_gap_256": dict(block="parallel", layer_scale=True, reg_tokens=1, mlp_dim=1280),
    }.items():
        cfg = timm_config(create_timm_model(name, meta=True), name)
        assert {k: getattr(cfg, k) for k in expected} == expected, name


def test_attention_maps_are_timms_softmax_weights_with_registers_and_qk_norms(tmp_path) -> None:
    # timm's unfused attention passes its softmax weights through attn_drop: catch them there.
    kwargs = {**reduced("vit_small_patch14_reg4_dinov2"), "qk_norm": True}
    reference = timm_vit("vit_small_patch14_reg4_dinov2", **kwargs)
    caught = []
    for block in reference.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda mod, inp, out: caught.append(out))
    torch.save(reference.state_dict(), tmp_path / "ckpt.pth")
    convert_timm(tmp_path / "ckpt.pth", tmp_path / "out.safetensors", model="vit_small_patch14_reg4_dinov2",
                 timm_kwargs=kwargs)
    ours = load_model(tmp_path / "out.safetensors")
    assert (ours.config.qk_norm, ours.config.reg_tokens, ours.config.num_prefix_tokens) == (True, 4, 5)
    x = batch(kwargs["img_size"])
    with torch.inference_mode():
        reference(x)
        maps = ours.attention_maps(x)
    assert len(maps) == len(caught) == 2 and maps[0].shape == (2, 2, 5 + 16, 5 + 16)
    # The first block's input is the same on both sides: the same operations in the same order. The second's
    # differs by rounding, as timm's unfused attention (here, to be hooked) is not our fused one.
    assert (maps[0] - caught[0]).abs().max().item() == 0
    assert (maps[1] - caught[1]).abs().max().item() <= 5e-7  # measured: 1.5e-7 (probabilities, float32)


# --- options of timm's VisionTransformer that no published model uses, built into a small ViT -------------------

OPTIONS = {  # timm.create_model kwargs on a reduced vit_tiny_patch16_224
    # The norm before the pooling: after it (fc_norm), a norm would hide the scale of the half max, half mean.
    "pool avgmax": dict(class_token=False, global_pool="avgmax", fc_norm=False),
    "pool max, registers and class token included": dict(reg_tokens=2, global_pool="max", pool_include_prefix=True),
    "pool none (the head on every token)": dict(global_pool=""),
    "token pooling, then fc_norm": dict(fc_norm=True),
    "mean beside a class token, no final norm": dict(global_pool="avg", final_norm=False),
    "no position embedding": dict(pos_embed="none"),
    "non-square patches and input": dict(patch_size=(16, 8), img_size=(64, 48)),
    "q/k norms, scale norms, RMSNorm": dict(qk_norm=True, scale_attn_norm=True, scale_mlp_norm=True,
                                            norm_layer="rmsnorm"),
    "GluMlp (the gate second)": dict(mlp_layer="glu", act_layer="gelu_tanh"),
}


@pytest.mark.parametrize("option", list(OPTIONS))
def test_the_options_no_published_model_uses(tmp_path, option: str) -> None:
    from timm.layers import GluMlp

    kwargs = {**reduced("vit_tiny_patch16_224"), **OPTIONS[option]}
    if kwargs.get("mlp_layer") == "glu":
        kwargs["mlp_layer"] = GluMlp
    reference = timm_vit("vit_tiny_patch16_224", **kwargs)
    torch.save(reference.state_dict(), tmp_path / "ckpt.pth")
    convert_timm(tmp_path / "ckpt.pth", tmp_path / "out.safetensors", model="vit_tiny_patch16_224",
                 timm_kwargs=kwargs)
    ours = load_model(tmp_path / "out.safetensors")
    size = kwargs["img_size"] if isinstance(kwargs["img_size"], tuple) else (kwargs["img_size"],) * 2
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ours_out, theirs = ours(x), reference(x)
        assert ours_out.shape == theirs.shape
        assert (ours_out - theirs).abs().max().item() <= FAMILY_ATOL  # measured: <= 9.5e-7; forward_features 0
        assert (ours.forward_features(x) - reference.forward_features(x)).abs().max().item() <= FAMILY_ATOL


# --- timm's hybrids: their own ResNet numerics, on inputs where they show ---------------------------------------

def test_timm_hybrids_groupnorm_epsilon_is_timms_1e_5_on_a_low_contrast_image(tmp_path) -> None:
    # The stem's GroupNorm sees the standardized 7x7x3 convolution of the image: variance about
    # 147 * var(x). At x * 1e-4 that is ~1.5e-6, near the epsilon.
    kwargs = reduced("vit_tiny_r_s16_p8_224")
    reference = timm_vit("vit_tiny_r_s16_p8_224", **kwargs)
    torch.save(reference.state_dict(), tmp_path / "ckpt.pth")
    # From the name's definition, and from the keys alone (a timm hybrid state dict is timm's ResNet).
    named = convert_timm(tmp_path / "ckpt.pth", tmp_path / "named.safetensors", model="vit_tiny_r_s16_p8_224",
                         timm_kwargs=kwargs)
    keys = convert_timm(tmp_path / "ckpt.pth", tmp_path / "keys.safetensors", num_heads=2)
    assert named.config.hybrid_gn_eps == keys.config.hybrid_gn_eps == 1e-5
    x = batch(kwargs["img_size"]) * 1e-4
    expected = logits_with_eps(reference, torch.nn.GroupNorm, 1e-5, x)
    with torch.inference_mode():
        for path in ("named.safetensors", "keys.safetensors"):
            assert (load_model(tmp_path / path)(x) - expected).abs().max().item() <= FAMILY_ATOL  # measured: 8e-7
    # flax's 1e-6 is another model here (measured: 0.68 apart)
    assert (logits_with_eps(reference, torch.nn.GroupNorm, 1e-6, x) - expected).abs().max().item() > 100 * FAMILY_ATOL


def test_timm_hybrid_kernels_are_stored_standardized_as_timm_computes_them(tmp_path) -> None:
    # timm's StdConv2dSame: (w - mean) / sqrt(var + 1e-8), biased var over (Cin, H, W). Output channels
    # scaled from 1e-8 to 1e-3 put the kernels' variance on both sides of the epsilon.
    import numpy as np

    kwargs = reduced("vit_tiny_r_s16_p8_224")
    reference = timm_vit("vit_tiny_r_s16_p8_224", **kwargs)
    conv = reference.patch_embed.backbone.conv.weight
    with torch.no_grad():
        conv.mul_(torch.logspace(-8, -3, conv.shape[0]).view(-1, 1, 1, 1))
    torch.save(reference.state_dict(), tmp_path / "ckpt.pth")
    convert_timm(tmp_path / "ckpt.pth", tmp_path / "out.safetensors", model="vit_tiny_r_s16_p8_224",
                 timm_kwargs=kwargs)
    stored = load_file(str(tmp_path / "out.safetensors"))["patch_embed.backbone.conv.weight"].numpy()
    w = conv.detach().double().numpy()
    mean, var = w.mean(axis=(1, 2, 3), keepdims=True), w.var(axis=(1, 2, 3), keepdims=True)
    formula = (w - mean) / np.sqrt(var + 1e-8)
    assert np.abs(stored - formula).max() <= 1e-6  # measured: 1.0e-7 (float32 of values up to 1.6)
    assert np.abs(formula - (w - mean) / np.sqrt(var + 1e-5)).max() > 0.5  # the epsilon shows: measured 1.55


def test_rmsnorm_epsilon_is_the_models_on_small_tokens(tmp_path) -> None:
    # AIMv2's patch embedding ends in an RMSNorm (eps 1e-5); a projection 1000x smaller than usual gives it
    # tokens of mean square ~1e-6 (measured 9.9e-7), where the epsilon decides the output.
    from timm.layers import RmsNorm

    kwargs = reduced("aimv2_large_patch14_224")
    reference = timm_vit("aimv2_large_patch14_224", **kwargs)
    with torch.no_grad():
        reference.patch_embed.proj.weight.mul_(1e-3)
        reference.patch_embed.proj.bias.mul_(1e-3)
    torch.save(reference.state_dict(), tmp_path / "ckpt.pth")
    record = convert_timm(tmp_path / "ckpt.pth", tmp_path / "out.safetensors", model="aimv2_large_patch14_224",
                          timm_kwargs=kwargs)
    assert (record.config.norm, record.config.ln_eps) == ("rmsnorm", 1e-5)
    x = batch(kwargs["img_size"])
    expected = logits_with_eps(reference, RmsNorm, 1e-5, x)
    with torch.inference_mode():
        assert (load_model(tmp_path / "out.safetensors")(x) - expected).abs().max().item() <= FAMILY_ATOL  # measured: 0
    # 1e-6 is another model here (measured: 0.017 apart)
    assert (logits_with_eps(reference, RmsNorm, 1e-6, x) - expected).abs().max().item() > 100 * FAMILY_ATOL
