"""The hf-dinov3 source format (conversion/hf_dinov3.py) and `export --to hf` of DINOv3 models: transformers'
DINOv3ViTModel directories from random weights convert to a model that gives transformers' own outputs at 224
and at a non-square size; DINOv3's release files, exported, are DINOv3ViTModel directories that give DINOv3's
own outputs, and convert back to the same tensors (so release files, HF directories and timm's Eva names, see
test_dinov3.py, all make one model); a config.json whose rope_theta the weights contradict is refused."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import vitconvert_cli as vitconvert
from helpers.vit_weights import our_vit, write_test_weights
from safetensors.torch import load_file, save_file
from transformers import DINOv3ViTConfig, DINOv3ViTImageProcessor, DINOv3ViTModel

import vitconvert as vc
from vitconvert import ViTConfig, VitConvertError
from vitconvert.export.hf import export_hf
from vitconvert.model.loading import load_model, load_state_dict

DATA = Path(__file__).parent.parent / "data"
sys.path.insert(0, str(DATA))
from make_dinov3_reference import SIZES, reference_input  # noqa: E402 (the generator's own inputs)

# float32; transformers' attention (its sdpa call, its RoPE in the input's dtype) rounds differently from
# ours: measured <= 1.2e-6 against transformers' forward, <= 1.5e-6 against DINOv3's through an export.
ATOL = 1e-5
# id: DINOv3ViTConfig kwargs beyond the small size
VARIANTS = {
    "GELU MLP, registers": dict(num_register_tokens=4),
    "SwiGLU, registers": dict(num_register_tokens=4, use_gated_mlp=True, hidden_act="silu"),
    "key bias, no registers": dict(key_bias=True, rope_theta=1000.0),
    "no biases": dict(query_bias=False, value_bias=False, num_register_tokens=2),
}
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, layerscale_value=0.7)


def hf_model(**kwargs) -> DINOv3ViTModel:
    torch.manual_seed(0)
    model = DINOv3ViTModel(DINOv3ViTConfig(**SMALL, **kwargs)).eval()
    with torch.no_grad():  # every tensor away from its initial value (zero biases, ones in norms)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def saved(model: DINOv3ViTModel, path: Path) -> Path:
    model.save_pretrained(path)
    DINOv3ViTImageProcessor().save_pretrained(path)
    return path


def max_diff(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


@pytest.mark.parametrize("size", [(224, 224), (160, 288)], ids=["224", "160x288"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_dinov3vitmodel_directory_gives_transformers_outputs(tmp_path, variant, size):
    theirs = hf_model(**VARIANTS[variant])
    record = vc.convert(saved(theirs, tmp_path / "hf"), tmp_path / "o.safetensors")
    assert record.source.format == "transformers/DINOv3ViTModel"
    ours = load_model(tmp_path / "o.safetensors").eval()
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = theirs(pixel_values=x)
        assert max_diff(ours.forward_features(x), out.last_hidden_state) <= ATOL
        assert max_diff(ours(x), out.pooler_output) <= ATOL


def test_module_names_convert_to_the_same_tensors(tmp_path):
    theirs = hf_model(num_register_tokens=4)
    vc.convert(saved(theirs, tmp_path / "hf"), tmp_path / "a.safetensors")
    (tmp_path / "modular").mkdir()
    (tmp_path / "modular" / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, tmp_path / "modular" / "model.safetensors")
    assert any(k.startswith("model.layer.") for k in theirs.state_dict())  # transformers 5's module names
    record = vc.convert(tmp_path / "modular", tmp_path / "b.safetensors")
    assert "tensors named as transformers 5's modules" in " ".join(record.notes)
    a, b = load_state_dict(tmp_path / "a.safetensors")[1], load_state_dict(tmp_path / "b.safetensors")[1]
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_the_preprocessing_is_the_processors(tmp_path):
    record = vc.convert(saved(hf_model(), tmp_path / "hf"), tmp_path / "o.safetensors")
    pre = record.preprocess
    assert (pre.size, pre.resize, pre.interpolation, pre.mean, pre.std) == (
        (224, 224), "squash", "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def with_inv_freq(src: Path, theta: float, head_dim: int = 16) -> None:
    """The weights as a transformers that kept RoPE's inverse frequencies would save them."""
    state = load_file(src / "model.safetensors")
    state["rope_embeddings.inv_freq"] = 1 / theta ** torch.arange(0, 1, 4 / head_dim, dtype=torch.float32)
    save_file(state, src / "model.safetensors")


def test_a_rope_theta_the_weights_contradict_is_refused(tmp_path, capsys):
    src = saved(hf_model(rope_theta=100.0), tmp_path / "hf")
    with_inv_freq(src, 100.0)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "rope_theta": 1000.0}))
    code, out, err = vitconvert(capsys, "convert", src, tmp_path / "o.safetensors")
    assert code == 1 and out == "" and not (tmp_path / "o.safetensors").exists()
    assert err == (f"error: {src / 'model.safetensors'}: config.json's rope_theta 1000 is not the one the weights "
                   "imply: rope_embeddings.inv_freq holds the inverse frequencies of rope_theta 100\n")


def test_inverse_frequencies_that_agree_are_left_out_with_the_reason(tmp_path):
    src = saved(hf_model(rope_theta=100.0), tmp_path / "hf")
    with_inv_freq(src, 100.0)
    record = vc.convert(src, tmp_path / "o.safetensors")
    assert "rope_embeddings.inv_freq (RoPE's inverse frequencies, which our model computes from rope_theta: " \
           "checked equal)" in " ".join(record.notes)


def test_vitconvert_convert_recognises_the_directory(tmp_path, capsys):
    code, out, err = vitconvert(capsys, "convert", saved(hf_model(), tmp_path / "hf"), tmp_path / "o.safetensors",
                                "--json")
    assert code == 0, err
    assert '"format": "transformers/DINOv3ViTModel"' in out


# --- export --to hf: DINOv3's release files as DINOv3ViTModel directories ----------------------------------

@pytest.mark.parametrize("family", ["vits_b_l", "plus", "7b"])
def test_an_exported_release_file_is_a_dinov3vitmodel_with_dinov3s_outputs_and_converts_back(tmp_path, family,
                                                                                              capsys):
    vc.convert(DATA / "dinov3" / f"{family}.pth", tmp_path / "ours.safetensors")
    code, _, err = vitconvert(capsys, "export", tmp_path / "ours.safetensors", "--to", "hf", tmp_path / "hf")
    assert code == 0, err
    theirs = DINOv3ViTModel.from_pretrained(tmp_path / "hf").eval()
    expected = np.load(DATA / "dinov3" / f"{family}.npz")
    for name, size in SIZES.items():
        with torch.inference_mode():
            tokens = theirs(pixel_values=reference_input(size)).last_hidden_state.numpy()
        assert max_diff(tokens[:, 0], expected[f"{name}/class_token"]) <= ATOL
        assert max_diff(tokens[:, 1:5], expected[f"{name}/storage_tokens"]) <= ATOL
        assert max_diff(tokens[:, 5:], expected[f"{name}/patch_tokens"]) <= ATOL
    vc.convert(tmp_path / "hf", tmp_path / "back.safetensors")
    a, b = load_state_dict(tmp_path / "ours.safetensors")[1], load_state_dict(tmp_path / "back.safetensors")[1]
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert vc.read_record(tmp_path / "back.safetensors").config == vc.read_record(tmp_path / "ours.safetensors").config


def test_export_refuses_a_dinov3_model_transformers_cannot_express(tmp_path):
    cfg = ViTConfig(embed_dim=32, depth=1, num_heads=2, mlp_dim=64, pos_embed="none", rope="dinov3",
                    rope_temperature=100.0, rope_rotate_half=True, layer_scale=True, pool="gap", class_token=True,
                    num_classes=0)
    src = write_test_weights(tmp_path / "m.safetensors", our_vit(cfg).state_dict(), cfg)
    with pytest.raises(VitConvertError, match=r"transformers' DINOv3ViTModel cannot express this model: pooling "
                                              r"'gap': DINOv3ViTModel's pooler_output is the class token; nothing "
                                              r"was written$"):
        export_hf(src, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
