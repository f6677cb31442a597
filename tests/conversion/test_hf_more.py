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
from safetensors.torch import load_file  # noqa: E402

from vitconvert import VitConvertError, convert, load_model  # noqa: E402

# float32 renames (and the class token's position added once, the same float32 sum transformers makes).
# Observed: <= 7.2e-7 over every case and size here.
ATOL = 1e-5
# ViTHybrid: a ResNet before the ViT amplifies the rounding of the convolutions (ours run the stored
# standardized kernels, transformers standardizes at every forward). Observed: <= 1.4e-6 at 64, 96 and 32 px.
HYBRID_ATOL = 1e-5
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


def test_a_dinov2_with_registers_classifier_is_refused_and_its_encoder_named(tmp_path):
    hf = random_hf("Dinov2WithRegistersForImageClassification")
    hf.save_pretrained(tmp_path / "hf")
    with pytest.raises(VitConvertError, match="Dinov2WithRegistersForImageClassification classifies the class token "
                                              "and the mean .* converts as a Dinov2WithRegistersModel"):
        convert(tmp_path / "hf", tmp_path / "ours.safetensors")
    assert not (tmp_path / "ours.safetensors").exists()


# --- ViTHybrid ------------------------------------------------------------------------------------------------
# transformers 5 has no ViTHybrid; its forward (transformers 4.45, deprecated/vit_hybrid) is ViT's on the last
# feature map of a BitBackbone: `features = backbone(pixel_values).feature_maps[-1]`, then ViT's patch
# `projection` (a 1x1 convolution) and ViT's encoder. The reference is those two installed classes, run so, and
# the checkpoint their tensors under ViTHybrid's names (vit.embeddings.patch_embeddings.backbone.*).
BIT_CONFIG = dict(layer_type="bottleneck", global_padding="same", depths=[1, 2], hidden_sizes=[128, 256],
                  embedding_size=32, out_features=["stage2"], embedding_dynamic_padding=True)


class HybridReference(torch.nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        from helpers.published_layouts import fill_random_

        self.backbone = fill_random_(transformers.BitBackbone(transformers.BitConfig(**BIT_CONFIG)), seed).eval()
        # The BiT's stride is 8 (two stages): 64 px inputs give an 8x8 grid of 256-channel features.
        self.vit = random_hf("ViTForImageClassification", seed=seed + 1, num_channels=256, image_size=8,
                             patch_size=1)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.vit(pixel_values=self.backbone(x).feature_maps[-1], **kwargs).logits


def save_hybrid(reference: HybridReference, folder) -> None:
    from safetensors.torch import save_file

    reference.vit.save_pretrained(folder)
    state = load_file(folder / "model.safetensors")
    state |= {f"vit.embeddings.patch_embeddings.backbone.{k}": v.contiguous()
              for k, v in reference.backbone.state_dict().items()}
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config |= {"model_type": "vit-hybrid", "architectures": ["ViTHybridForImageClassification"], "image_size": 64,
               "num_channels": 3, "backbone_config": BIT_CONFIG, "backbone_featmap_shape": [1, 256, 8, 8]}
    (folder / "config.json").write_text(json.dumps(config))


def test_a_vit_hybrid_converts_to_its_bit_backbone_and_vit_logits(tmp_path):
    reference = HybridReference()
    save_hybrid(reference, tmp_path / "hf")
    record = convert(tmp_path / "hf", tmp_path / "ours.safetensors")
    cfg = record.config
    assert (cfg.hybrid_layers, cfg.hybrid_width, cfg.hybrid_gn_eps, cfg.img_size) == ((1, 2), 32, 1e-5, (64, 64))
    assert record.source.format == "transformers/ViTHybridForImageClassification"
    ours = load_model(tmp_path / "ours.safetensors").eval()
    for size in (64, 96, 32):  # at other sizes, ViT's interpolate_pos_encoding on the feature grid
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        kwargs = {"interpolate_pos_encoding": True} if size != 64 else {}
        with torch.inference_mode():
            assert (ours(x) - reference(x, **kwargs)).abs().max().item() <= HYBRID_ATOL, size


def test_vit_hybrid_defaults_are_transformers_4_vithybridconfigs():
    """ViTHybridConfig.__init__'s defaults as transformers 4.45's deprecated/vit_hybrid/configuration_vit_hybrid.py
    writes them (transformers 5 has no such class to ask)."""
    from vitconvert.conversion.hf_layouts import DEFAULTS

    assert DEFAULTS["vit-hybrid"] == dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                          intermediate_size=3072, hidden_act="gelu", layer_norm_eps=1e-12,
                                          image_size=224, patch_size=1, num_channels=3, qkv_bias=True)


def test_a_vit_hybrid_backbone_other_than_bits_bottleneck_is_refused(tmp_path):
    reference = HybridReference()
    save_hybrid(reference, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["backbone_config"] = {**BIT_CONFIG, "layer_type": "preactivation"}
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(VitConvertError, match="a ViTHybrid backbone with layer_type 'preactivation'"):
        convert(tmp_path / "hf", tmp_path / "ours.safetensors")
    assert not (tmp_path / "ours.safetensors").exists()
