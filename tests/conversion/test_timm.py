"""timm2torch: every wrapper form in, our weights file out, timm's logits reproduced; and back into timm."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.timm_reference import timm_vit
from helpers.numerics import logits_with_eps, shrink_embeddings_
from helpers.cli import cli_error
from safetensors.torch import load_file, save_file

from vitconvert import VitConvertError, convert_timm, load_model, read_record
from vitconvert.cli import cli

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


def batch(size=(224, 224)) -> torch.Tensor:
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
    assert out["record"]["config"]["depth"] == 1 and out["record"]["version"] == 2


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
    with pytest.raises(VitConvertError, match="pos_resize must be 'bicubic' or 'dino' or 'flexivit' or 'transformers', "
                                              "got 'nearest'"):
        convert_timm(tmp_path / "t.pth", tmp_path / "t.safetensors", pos_resize="nearest")
    code, err = cli_error(capsys, "timm2torch", str(tmp_path / "t.pth"), str(tmp_path / "t.safetensors"),
                          "--pos-resize", "nearest")
    assert code == 2 and err.startswith("error: ")
    assert "'nearest' is not one of 'bicubic', 'dino', 'flexivit', 'transformers'" in err
    assert not (tmp_path / "t.safetensors").exists()
