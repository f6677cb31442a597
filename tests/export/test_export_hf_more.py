"""`export --to hf` for the classes beyond ViT, DeiT and Dinov2: Dinov2WithRegisters (layer scale and register
tokens without positions, as timm's DINOv2-with-registers files are), ViTMSN (what ViT computes without a
pooler: written where the file came from one, or asked for with --architecture); transformers' Auto classes
load the directory and compute what our model does, at the stored size and another; hf2torch reads it back to
the bit; a class that computes something else is refused.
"""

from __future__ import annotations

import json

import pytest

transformers = pytest.importorskip("transformers")

import torch  # noqa: E402
from helpers.hf import load_hf, outputs, random_hf  # noqa: E402
from helpers.vit_weights import our_vit, write_test_weights  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from vitconvert import ViTConfig, VitConvertError, convert, convert_hf, export_hf, load_model  # noqa: E402

# float32: transformers runs q, k, v apart where we fuse them. Observed: <= 4.8e-7 (0 with a plain MLP).
ATOL = 1e-5
SMALL = ViTConfig(img_size=(32, 32), patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_dim=64, num_classes=5)
REGISTERS = SMALL.replace(num_classes=0, layer_scale=True, ln_eps=1e-6, reg_tokens=4, no_embed_class=True)


def batch(size: int) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))


@pytest.mark.parametrize("cfg", [REGISTERS, REGISTERS.replace(mlp="swiglu_packed", act="silu", mlp_dim=176)],
                         ids=["mlp", "swiglu"])
def test_layer_scale_with_registers_is_a_dinov2_with_registers_model(tmp_path, cfg):
    src = write_test_weights(tmp_path / "ours.safetensors", our_vit(cfg).state_dict(), cfg)
    done = export_hf(src, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (done.architecture, config["num_register_tokens"]) == ("Dinov2WithRegistersModel", 4)
    theirs, ours = load_hf(tmp_path / "hf"), load_model(src).eval()
    for size in (32, 48):  # at 48, Dinov2WithRegisters' own resize, which the file records too ('bicubic')
        x = batch(size)
        kwargs = {"interpolate_pos_encoding": True} if size != 32 else {}
        with torch.inference_mode():
            tokens = outputs(theirs, x, **kwargs)["last_hidden_state"]
            assert (ours.forward_features(x) - tokens).abs().max().item() <= ATOL
    back = convert_hf(tmp_path / "hf", tmp_path / "back.safetensors")
    assert back.config == cfg
    before, after = load_file(src), load_file(tmp_path / "back.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("architecture", ["ViTMSNModel", "ViTMSNForImageClassification"])
def test_a_vitmsn_file_goes_back_to_its_class_and_computes_the_same(tmp_path, architecture):
    hf = random_hf(architecture)
    hf.save_pretrained(tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "ours.safetensors")
    done = export_hf(tmp_path / "ours.safetensors", tmp_path / "out")
    theirs = load_hf(tmp_path / "out")
    assert done.architecture == architecture == type(theirs).__name__ and done.model_type == "vit_msn"
    x = batch(32)
    key = "logits" if "For" in architecture else "last_hidden_state"
    with torch.inference_mode():
        assert (outputs(theirs, x)[key] - outputs(hf, x)[key]).abs().max().item() <= ATOL


def test_a_plain_vit_file_is_written_as_vitmsn_when_asked_and_refused_as_another_class(tmp_path, vitconvert):
    cfg = SMALL.replace(num_classes=0)
    src = write_test_weights(tmp_path / "ours.safetensors", our_vit(cfg).state_dict(), cfg)
    assert export_hf(src, tmp_path / "plain").architecture == "ViTModel"
    code, _, err = vitconvert("export", src, "--to", "hf", tmp_path / "msn", "--architecture", "ViTMSNModel")
    assert code == 0, err
    x = batch(32)
    with torch.inference_mode():
        ours = load_model(src).eval().forward_features(x)
        assert (outputs(load_hf(tmp_path / "msn"), x)["last_hidden_state"] - ours).abs().max().item() <= ATOL
    with pytest.raises(VitConvertError, match="Dinov2Model does not compute this model; ViTModel or ViTMSNModel"):
        export_hf(src, tmp_path / "other", architecture="Dinov2Model")
    assert not (tmp_path / "other").exists()
    code, _, err = vitconvert("export", src, "--to", "onnx", tmp_path / "m.onnx", "--architecture", "ViTMSNModel")
    assert code == 2 and "--architecture: an hf option" in err


def test_registers_with_positions_of_their_own_are_still_refused(tmp_path):
    cfg = REGISTERS.replace(no_embed_class=False)
    src = write_test_weights(tmp_path / "ours.safetensors", our_vit(cfg).state_dict(), cfg)
    with pytest.raises(VitConvertError, match="4 register token.*Dinov2WithRegisters has them"):
        export_hf(src, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
