"""timm2torch: every wrapper form in, our weights file out, timm's logits reproduced; and back into timm."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import timm_vit
from helpers.numerics import logits_with_eps, shrink_embeddings_
from vitconvert import VitConvertError, convert_timm, load_model, read_record

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
    torch.save(timm_vit("vit_base_patch16_384", depth=1).state_dict(), tmp_path / "b.pth")
    record = convert_timm(tmp_path / "b.pth", tmp_path / "b.safetensors",
                          model="vit_base_patch16_384.augreg_in21k_ft_in1k")
    p = record.preprocess
    assert (p.size, p.resize, p.crop_pct, p.interpolation, p.mean, p.std) == (
        (384, 384), "crop", 1.0, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert record.config.num_heads == 12 and record.config.img_size == (384, 384)
    assert record.labels == "imagenet-1k"


def test_unknown_keys_are_an_error_that_names_them(tmp_path) -> None:
    state = timm_vit("vit_tiny_patch16_224", depth=1).state_dict()
    state["blocks.0.ls1.gamma"] = torch.ones(192)
    state["norm_pre.weight"] = torch.ones(192)
    torch.save(state, tmp_path / "x.pth")
    with pytest.raises(VitConvertError, match=r"keys that nothing maps: blocks\.0\.ls1\.gamma, norm_pre\.weight"):
        convert_timm(tmp_path / "x.pth", tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_missing_keys_are_an_error_that_names_them(tmp_path) -> None:
    state = timm_vit("vit_tiny_patch16_224", depth=1).state_dict()
    del state["blocks.0.attn.proj.bias"]
    torch.save(state, tmp_path / "x.pth")
    with pytest.raises(VitConvertError, match=r"missing keys: blocks\.0\.attn\.proj\.bias"):
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
    assert out["record"]["config"]["depth"] == 1 and out["record"]["version"] == 1
