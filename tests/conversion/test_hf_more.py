"""hf2torch beyond ViT, DeiT and Dinov2: Dinov2WithRegistersModel, ViTMSN (encoder and classifier), ViTMAE's
encoder (ViTMAEModel, and ViTMAEForPreTraining without its decoder), and config.json files AutoModel reads by
their `architectures` alone; against the installed transformers' own classes, random weights, at the stored
size and at another (transformers' interpolate_pos_encoding=True).

ViTMAE masks at random in every forward; its encoder is compared with mask_ratio 0 and noise 0, 1, 2, ... so
that its shuffle keeps the patches in order, which is the encoder without masking that the file records.
"""

from __future__ import annotations

import json

import pytest

transformers = pytest.importorskip("transformers")

import torch  # noqa: E402
from helpers.hf import random_hf  # noqa: E402

from vitconvert import VitConvertError, convert, load_model  # noqa: E402

# float32 renames (and the class token's position added once, the same float32 sum transformers makes).
# Observed: <= 7.2e-7 over every case and size here.
ATOL = 1e-5
MAE_DECODER = dict(decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_intermediate_size=32,
                   decoder_num_attention_heads=2)
CASES = {  # name: (transformers class, config overrides, what our model's output is compared with)
    "Dinov2WithRegistersModel": ("Dinov2WithRegistersModel", {"num_register_tokens": 3}, "tokens"),
    "Dinov2WithRegistersModel SwiGLU": ("Dinov2WithRegistersModel", {"use_swiglu_ffn": True}, "tokens"),
    "ViTMSNModel": ("ViTMSNModel", {}, "tokens"),
    "ViTMSNForImageClassification": ("ViTMSNForImageClassification", {}, "logits"),
    "ViTMAEModel": ("ViTMAEModel", {"mask_ratio": 0.0}, "tokens"),
    "ViTMAEForPreTraining": ("ViTMAEForPreTraining", {"mask_ratio": 0.0, **MAE_DECODER}, "encoder"),
}


def model(name: str) -> torch.nn.Module:
    architecture, overrides, _ = CASES[name]
    return random_hf(architecture, **overrides)


def theirs(hf: torch.nn.Module, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """transformers' output for `x`: (logits, None), or (the class token, every token) of the encoder."""
    kwargs = {"interpolate_pos_encoding": True} if x.shape[-1] != 32 else {}
    if "MAE" in name:  # noise in order: argsort keeps the patches where they are (with mask_ratio 0, all of them)
        kwargs["noise"] = torch.arange((x.shape[-2] // 8) * (x.shape[-1] // 8), dtype=torch.float32).expand(len(x), -1)
    with torch.inference_mode():
        encoder = hf.vit if CASES[name][2] == "encoder" else hf
        out = encoder(pixel_values=x, **kwargs)
    if CASES[name][2] == "logits":
        return out.logits, None
    return out.last_hidden_state[:, 0], out.last_hidden_state


@pytest.mark.parametrize("name", list(CASES))
def test_hf2torch_gives_transformers_outputs_at_the_stored_size_and_another(tmp_path, name):
    hf = model(name)
    hf.save_pretrained(tmp_path / "hf")
    record = convert(tmp_path / "hf", tmp_path / "ours.safetensors")
    assert record.source.format == f"transformers/{CASES[name][0]}"
    ours = load_model(tmp_path / "ours.safetensors").eval()
    for size in (32, 48, 24):
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        pooled, tokens = theirs(hf, name, x)
        with torch.inference_mode():
            assert (ours(x) - pooled).abs().max().item() <= ATOL, size
            if tokens is not None:
                assert (ours.forward_features(x) - tokens).abs().max().item() <= ATOL, size


def test_dinov2_with_registers_records_its_registers_and_its_antialiased_resize(tmp_path):
    hf = model("Dinov2WithRegistersModel")
    hf.save_pretrained(tmp_path / "hf")
    record = convert(tmp_path / "hf", tmp_path / "ours.safetensors")
    assert (record.config.reg_tokens, record.config.no_embed_class, record.config.pos_resize) == (3, True, "bicubic")
    # transformers' ViT resize (no antialias) is not this model's: at another size it is far off
    convert(tmp_path / "hf", tmp_path / "other.safetensors", pos_resize="transformers")
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    other = load_model(tmp_path / "other.safetensors").eval()
    with torch.inference_mode():
        far = other(x) - theirs(hf, "Dinov2WithRegistersModel", x)[0]
    assert far.abs().max().item() > 100 * ATOL


def test_vitmae_pretraining_leaves_out_every_decoder_tensor_with_its_reason(tmp_path, vitconvert):
    hf = model("ViTMAEForPreTraining")
    hf.save_pretrained(tmp_path / "hf")
    code, out, err = vitconvert("convert", tmp_path / "hf", tmp_path / "ours.safetensors", "--json")
    assert code == 0, err
    left_out = json.loads(out)["left_out"]
    decoder = {k for k in hf.state_dict() if k.startswith("decoder.")}
    assert len(decoder) > 10 and set(left_out) >= {k for k in decoder if "decoder_layers" not in k}
    assert all(k.startswith("decoder.") and "pre-training" in why for k, why in left_out.items())


def test_a_config_with_architectures_and_no_model_type_converts_as_automodel_reads_it(tmp_path):
    hf = model("ViTMSNModel")
    hf.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    del config["model_type"]
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    record = convert(tmp_path / "hf", tmp_path / "ours.safetensors")
    assert record.source.format == "transformers/ViTMSNModel"


def test_a_vit_hybrid_config_is_refused_with_the_reason(tmp_path):
    hf = model("ViTMSNModel")
    hf.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "model_type": "vit-hybrid",
                                                             "architectures": ["ViTHybridForImageClassification"]}))
    with pytest.raises(VitConvertError, match="'vit-hybrid' is not converted: ViTHybrid .*transformers 5 no longer"):
        convert(tmp_path / "hf", tmp_path / "ours.safetensors")
    assert not (tmp_path / "ours.safetensors").exists()


def test_a_dinov2_with_registers_classifier_is_refused_and_its_encoder_named(tmp_path):
    hf = random_hf("Dinov2WithRegistersForImageClassification")
    hf.save_pretrained(tmp_path / "hf")
    with pytest.raises(VitConvertError, match="Dinov2WithRegistersForImageClassification classifies the class token "
                                              "and the mean .* converts as a Dinov2WithRegistersModel"):
        convert(tmp_path / "hf", tmp_path / "ours.safetensors")
    assert not (tmp_path / "ours.safetensors").exists()
