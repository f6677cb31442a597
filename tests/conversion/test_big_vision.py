"""jax2torch on big_vision's checkpoints: sincos2d ImageNet baselines, MAP heads, SigLIP / SigLIP 2 and LiT
image towers. Each file is written by tests/helpers/big_vision_layouts.py (random arrays in big_vision's names) and
the converted model is compared with big_vision's forward pass written out from its formulas (float64),
and, where timm can load the file, with timm's own `_load_weights`.

Tolerance: the issue's 2e-5 on float32 outputs, same (tanh) GELU on both sides, tightened to what was measured
(ATOL below; each test says its own).
"""

from __future__ import annotations

from helpers import big_vision_layouts as bv
import numpy as np
from helpers import published_layouts as pl
import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT
from timm.models.vision_transformer import _load_weights

from vitconvert import Predictor, VitConvertError, convert_jax, load_model

# The issue asks for <= 2e-5; measured at most 7.2e-7 (float32 against float64 or timm's float32, outputs of
# order 1), so the bound sits just above that. The erf GELU in place of flax's tanh form is 9e-5 to 4.7e-4 off.
ATOL = 2e-6
TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}  # BigVision()'s width, depth, heads, MLP


def images(size: tuple[int, int], n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(seed))


def converted(tmp_path, arrays, name: str = "bv.npz", **kwargs):
    bv.write_npz(tmp_path / name, arrays)
    record = convert_jax(tmp_path / name, tmp_path / "out.safetensors", **kwargs)
    return record, tmp_path / "out.safetensors"


@torch.inference_mode()
def ours(path, x: torch.Tensor, **kwargs) -> torch.Tensor:
    return load_model(path, **kwargs)(x).double()


def timm_loaded(model: torch.nn.Module, path, **kwargs) -> torch.nn.Module:
    """`model` (its parameters NaN first, so that anything the loader leaves shows) loaded by timm's npz
    loader, with flax's tanh GELU."""
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    _load_weights(model, str(path), **kwargs)
    assert all(torch.isfinite(p).all() for p in model.parameters()), "timm's loader left parameters unset"
    return pl.set_gelu(model, "tanh").eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.double() - b.double()).abs().max().item()


# --- big_vision classifiers against big_vision's forward ------------------------------------------------

CLASSIFIERS = {
    # id: (model, prefix, scanned)
    "i1k baseline: sincos2d, gap, pre_logits": (
        bv.BigVision(patch=16, grid=(14, 14), posemb="sincos2d", pool="gap", rep_size=48), "params/", False),
    "sincos2d, class token, no prefix": (bv.BigVision(patch=16, grid=(14, 14), posemb="sincos2d", pool="tok"), "", False),
    "learned, MAP head": (bv.BigVision(pool="map"), "params/", False),
    "learned, MAP head, scanned": (bv.BigVision(pool="map", rep_size=24), "params/", True),
}


@pytest.mark.parametrize("case", list(CLASSIFIERS))
def test_converted_classifier_is_big_visions_forward(tmp_path, case) -> None:
    m, prefix, scanned = CLASSIFIERS[case]
    params = bv.random_params(m, seed=1)
    record, path = converted(tmp_path, bv.with_prefix(bv.scan(params) if scanned else params, prefix))
    c = record.config
    assert (c.pool, c.fc_norm, c.representation_size, c.num_classes) == (
        {"tok": "token"}.get(m.pool, m.pool), False, m.rep_size, m.num_classes)
    # Positions for the patches alone: timm's no_embed_class, which only a class token makes a difference to.
    assert c.pos_embed == m.posemb and c.no_embed_class == (m.pool == "tok") and c.act == "gelu_tanh"
    x = images((m.grid[0] * m.patch, m.grid[1] * m.patch))
    # Measured 3.1e-7 to 6.7e-7 (float32 against float64).
    assert max_diff(ours(path, x), bv.forward(params, x, m)["out"]) <= ATOL


@pytest.mark.parametrize("size", [(160, 96), (64, 64)])
def test_sincos2d_at_another_size_is_the_table_computed_for_that_grid(tmp_path, size) -> None:
    m = bv.BigVision(patch=16, grid=(14, 14), posemb="sincos2d", pool="gap", rep_size=48)
    params = bv.random_params(m, seed=2)
    record, path = converted(tmp_path, bv.with_prefix(params, "params/"))
    # Nothing in the file shows the training size: big_vision's baselines train at 224, said in the record.
    assert record.config.img_size == (224, 224) and any("224x224 assumed" in n for n in record.notes)
    x = images(size)
    model = load_model(path, img_size=size)
    assert not any("pos" in k for k in model.state_dict())
    # Measured 2.3e-7 at 160x96, 3.6e-7 at 64x64.
    assert max_diff(ours(path, x, img_size=size), bv.forward(params, x, m)["out"]) <= ATOL


def test_gap_is_the_mean_of_the_normed_tokens_not_the_norm_of_their_mean(tmp_path) -> None:
    """big_vision's 'gap' reads `encoder_norm`'s output (every token normed), which is timm's
    fc_norm=False; timm's default (mean, then norm) is another model."""
    m = bv.BigVision(posemb="sincos2d", pool="gap", patch=16, grid=(14, 14))
    params = bv.random_params(m, seed=3)
    _, path = converted(tmp_path, bv.with_prefix(params, "params/"))
    model = load_model(path)
    x = images((224, 224))
    with torch.inference_mode():
        tokens = model.blocks(model.embed_tokens(x))
        mean_then_norm = model.head(torch.nn.functional.layer_norm(
            tokens.mean(1), (32,), model.norm.weight, model.norm.bias, eps=1e-6))
    expected = bv.forward(params, x, m)["out"]
    assert max_diff(model(x), expected) <= ATOL
    assert max_diff(mean_then_norm, expected) > 0.05  # measured 3.3


# --- MAP head, SigLIP and LiT towers against timm's npz loader ------------------------------------------

def test_map_head_becomes_timms_attn_pool(tmp_path) -> None:
    m = bv.BigVision(pool="map")
    params = bv.random_params(m, seed=4)
    record, path = converted(tmp_path, bv.with_prefix(params, "params/"))
    theirs = timm_loaded(TimmViT(img_size=32, patch_size=8, num_classes=10, class_token=False, global_pool="map",
                                 **TINY), tmp_path / "bv.npz")
    x = images((32, 32))
    with torch.inference_mode():
        expected = theirs(x)
    # Measured 3.0e-7.
    assert max_diff(ours(path, x), expected) <= ATOL
    # timm's names: the file's tensors load into timm's model as they are.
    state = load_model(path).state_dict()
    assert sorted(state) == sorted(theirs.state_dict())
    assert record.config.pool == "map" and record.config.num_classes == 10


SIGLIP = {"SigLIP (per-layer blocks)": False, "SigLIP 2 (scanned blocks)": True}


def siglip_file(tmp_path, scanned: bool, seed: int = 5):
    m = bv.BigVision(pool="map", num_classes=0)
    params = bv.random_params(m, seed=seed)
    bv.write_npz(tmp_path / "siglip.npz", bv.two_tower(bv.scan(params) if scanned else params, "params/"))
    return m, params, tmp_path / "siglip.npz"


@pytest.mark.parametrize("case", list(SIGLIP))
def test_siglip_image_tower_is_timms_and_outputs_the_image_embedding(tmp_path, case) -> None:
    m, params, npz = siglip_file(tmp_path, SIGLIP[case])
    record = convert_jax(npz, tmp_path / "siglip.safetensors")
    c = record.config
    assert (c.num_classes, c.pool, c.has_class_token, record.head_is_embedding, record.labels) == (0, "map", False,
                                                                                                   False, None)
    assert record.source.format == "jax-npz/big_vision" + ("-scanned" if SIGLIP[case] else "")
    assert any("text tower" in n and "params/txt/" in n for n in record.notes)
    theirs = timm_loaded(timm.create_model("vit_base_patch16_siglip_224", pretrained=False, img_size=32,
                                           patch_size=8, num_classes=0, **TINY), npz)
    x = images((32, 32))
    with torch.inference_mode():
        expected = theirs(x)
    got = ours(tmp_path / "siglip.safetensors", x)
    # Measured 1.5e-7 to 1.8e-7 against timm, 2.0e-7 against big_vision's forward (zimg before its L2 norm).
    assert max_diff(got, expected) <= ATOL
    assert max_diff(got, bv.forward(params, x, m)["out"]) <= ATOL


def test_vitpredict_embed_writes_a_siglip_towers_image_embedding(tmp_path, vitpredict, cat_jpg) -> None:
    _, _, npz = siglip_file(tmp_path, scanned=True)
    convert_jax(npz, tmp_path / "siglip.safetensors")
    result = vitpredict(cat_jpg, "--weights", tmp_path / "siglip.safetensors", "--embed", tmp_path / "e.npz")
    assert result.code == 0, result.err
    theirs = timm_loaded(timm.create_model("vit_base_patch16_siglip_224", pretrained=False, img_size=32,
                                           patch_size=8, num_classes=0, **TINY), npz)
    with torch.inference_mode():  # the same input: the file's preprocessing (Google's, at 32 px)
        expected = theirs(Predictor(tmp_path / "siglip.safetensors").transform(cat_jpg)[None])
    with np.load(tmp_path / "e.npz") as f:
        assert f["embeddings"].shape == (1, 32)
        # Measured 0 (the same float32 arithmetic as timm's on this input).
        assert np.abs(f["embeddings"] - expected.numpy()).max() <= ATOL
    refused = vitpredict(cat_jpg, "--weights", tmp_path / "siglip.safetensors")
    assert refused.code == 1 and "no classification head" in refused.err


LIT = {"LiT-B16B (image head to the embedding)": 24, "LiT-L16L (no image head)": 0}


@pytest.mark.parametrize("case", list(LIT))
def test_lit_image_tower_output_is_zimg(tmp_path, case, cat_jpg) -> None:
    """vit_jax's LiT (models_lit.py): `img` is a vit_jax VisionTransformer with num_classes=out_dim[0],
    so zimg is the class token after encoder_norm, through `img/head` where out_dim[0] is set."""
    out_dim = LIT[case]
    source = pl.random_timm_vit("tiny", seed=6, num_classes=out_dim or 10)
    tower = {k: v for k, v in pl.npz_arrays(source, "vit_jax").items() if out_dim or not k.startswith("head/")}
    bv.write_npz(tmp_path / "lit.npz", bv.two_tower(tower, outer=""))
    record = convert_jax(tmp_path / "lit.npz", tmp_path / "lit.safetensors")
    assert record.source.format == "jax-npz/vit_jax"
    assert (record.config.num_classes, record.head_is_embedding, record.labels) == (out_dim, bool(out_dim), None)
    theirs = timm_loaded(pl.random_timm_vit("tiny", seed=7, num_classes=out_dim), tmp_path / "lit.npz", prefix="img/")
    x = images((32, 32))
    with torch.inference_mode():
        expected = theirs(x)
    assert max_diff(ours(tmp_path / "lit.safetensors", x), expected) <= ATOL  # measured 3.0e-7, 7.2e-7
    predictor = Predictor(tmp_path / "lit.safetensors")
    with torch.inference_mode():
        assert max_diff(predictor.batch_embeddings(x), expected) <= ATOL  # --embed gives zimg, head or not
    if out_dim:
        with pytest.raises(VitConvertError, match="projects into an image-text embedding .* not a classifier"):
            predictor.predict([cat_jpg])


def test_a_two_tower_file_leaves_out_only_the_text_tower_and_the_loss_scalars(tmp_path) -> None:
    _, params, _ = siglip_file(tmp_path, scanned=False)
    arrays = bv.two_tower(params, "params/") | {"params/unknown/kernel": np.ones(3, np.float32)}
    bv.write_npz(tmp_path / "x.npz", arrays)
    with pytest.raises(VitConvertError, match=r"keys that nothing maps: params/unknown/kernel$"):
        convert_jax(tmp_path / "x.npz", tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_map_head_with_other_heads_than_the_blocks_is_refused(tmp_path) -> None:
    params = bv.random_params(bv.BigVision(pool="map"), seed=8)
    for which in ("query", "key", "value"):
        params[f"MAPHead_0/MultiHeadDotProductAttention_0/{which}/kernel"] = np.ones((32, 4, 8), np.float32)
    bv.write_npz(tmp_path / "m.npz", bv.with_prefix(params, "params/"))
    with pytest.raises(VitConvertError, match="the attention pooling has 4 heads, the blocks 2"):
        convert_jax(tmp_path / "m.npz", tmp_path / "m.safetensors")


def test_a_vit_jax_file_without_its_position_table_is_an_error_not_sincos2d(tmp_path) -> None:
    """Only big_vision (Linen numbering) computes its table; an old-numbered file missing it is broken."""
    arrays = dict(pl.npz_arrays(pl.random_timm_vit("tiny"), "vit_jax"))
    del arrays["Transformer/posembed_input/pos_embedding"]
    bv.write_npz(tmp_path / "v.npz", arrays)
    with pytest.raises(VitConvertError, match="missing key Transformer/posembed_input/pos_embedding"):
        convert_jax(tmp_path / "v.npz", tmp_path / "v.safetensors")


def test_verify_loads_either_tower_with_timms_own_loader(tmp_path) -> None:
    """`vitconvert verify --source` runs timm's _load_weights on the original: it finds params/img/ itself,
    and is told img/ (LiT), which it would not look for."""
    from vitconvert import verify

    _, _, siglip = siglip_file(tmp_path, scanned=True)
    convert_jax(siglip, tmp_path / "siglip.safetensors")
    report = verify(tmp_path / "siglip.safetensors", "vit_base_patch16_siglip_224", source=siglip,
                    timm_kwargs=dict(TINY, img_size=32, patch_size=8, num_classes=0))
    assert report.ok and report.max_abs_diff <= ATOL and report.timm_weights.endswith("npz loader"), report
    source = pl.random_timm_vit("tiny", seed=9, num_classes=24)
    bv.write_npz(tmp_path / "lit.npz", bv.two_tower(pl.npz_arrays(source, "vit_jax"), outer=""))
    convert_jax(tmp_path / "lit.npz", tmp_path / "lit.safetensors")
    report = verify(tmp_path / "lit.safetensors", "vit_base_patch16_224", source=tmp_path / "lit.npz",
                    timm_kwargs=dict(TINY, img_size=32, patch_size=8, num_classes=24))
    # Measured 1.8e-7 (SigLIP) and 0 (LiT: the same float32 arithmetic on both sides).
    assert report.ok and report.max_abs_diff <= ATOL, report
