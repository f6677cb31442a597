"""Embeddings: `Predictor.embed` and `vitpredict --embed` give timm's features on the same weights and
the same preprocessed image, for any model; a model whose classes mean nothing embeds, and its top-k
is refused with a message that points to --embed."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import published_layouts as pl
from helpers.vit_weights import TINY, TINY_TIMM_KWARGS, our_vit, timm_classifier, write_test_weights
from PIL import Image
from timm.data import create_transform
from timm.layers import resample_abs_pos_embed

from vitconvert import Predictor, ViTConfig, VitConvertError, convert, convert_jax
from vitconvert.inference.labels import check_top_k
from vitconvert.model.vit import token_parts

# Pooled features: measured 4.8e-7 to 7.2e-7 at 224 and 1.1e-6 at 160x224 (a class-token model's last
# block runs for the prefix tokens alone, so rounding differs). Every token: measured 0 (the same
# arithmetic as timm's forward_features); the bound leaves room for other machines' kernels.
POOLED_ATOL = 2e-6
TOKENS_ATOL = 1e-6
# DINOv3's own outputs (test_dinov3.py's bound: measured 0 through our model's forward).
DINOV3_ATOL = 1e-5
DINOV3 = Path(__file__).parents[1] / "data" / "dinov3"

# name: (timm model, its kwargs beyond TINY_TIMM_KWARGS, our config, where each prefix array is in timm's
# forward_features tokens)
KINDS = {
    "class token": ("vit_tiny_patch16_224", {}, TINY, {"class_tokens": 0}),
    "gap, fc_norm": ("vit_tiny_patch16_224", dict(class_token=False, global_pool="avg", fc_norm=True),
                     TINY.replace(pool="gap", fc_norm=True), {}),
    "distilled": ("deit_tiny_distilled_patch16_224", {}, TINY.replace(distilled=True),
                  {"class_tokens": 0, "dist_tokens": 1}),
    "registers": ("vit_tiny_patch16_224", dict(reg_tokens=4), TINY.replace(reg_tokens=4),
                  {"class_tokens": 0, "register_tokens": slice(1, 5)}),
}
PATCHES = 196  # at 224


def timm_input(image, size: tuple[int, int] = (224, 224)) -> torch.Tensor:
    """The record's preprocessing (AUGREG_224: bicubic, crop 0.9, mean = std = 0.5), as timm builds it."""
    transform = create_transform(input_size=(3, *size), interpolation="bicubic", crop_pct=0.9,
                                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return transform(Image.open(image).convert("RGB"))


def timm_features(model: torch.nn.Module, images, size=(224, 224)) -> tuple[np.ndarray, np.ndarray]:
    """timm's pooled features (forward_head(pre_logits=True)) and every token (forward_features)."""
    x = torch.stack([timm_input(image, size) for image in images])
    with torch.inference_mode():
        tokens = model.eval().forward_features(x)
        return model.forward_head(tokens, pre_logits=True).numpy(), tokens.numpy()


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


@pytest.fixture(scope="module", params=list(KINDS), ids=list(KINDS))
def kind(request, tmp_path_factory):
    name, kwargs, config, prefix = KINDS[request.param]
    model = timm_classifier(name, **TINY_TIMM_KWARGS, **kwargs)
    path = write_test_weights(tmp_path_factory.mktemp("embed") / "m.safetensors", model.state_dict(), config)
    return path, model, prefix


def timm_token_arrays(tokens: np.ndarray, prefix: dict) -> dict[str, np.ndarray]:
    """timm's forward_features tokens as `embed_tokens` names them: the patches after the prefix tokens."""
    return {"embeddings": tokens[:, -PATCHES:], **{name: tokens[:, where] for name, where in prefix.items()}}


def test_embed_is_timms_pooled_features_and_patch_tokens(kind, cat_jpg, gray_png):
    path, model, prefix = kind
    pooled, tokens = timm_features(model, [cat_jpg, gray_png])
    predictor = Predictor(path)
    ours = predictor.embed([cat_jpg, gray_png])
    assert ours.dtype == np.float32 and ours.shape == (2, 64)
    assert max_diff(ours, pooled) <= POOLED_ATOL
    ours_tokens = predictor.embed([cat_jpg, gray_png], tokens=True)
    assert ours_tokens.dtype == np.float32 and ours_tokens.shape == (2, PATCHES, 64)
    assert max_diff(ours_tokens, tokens[:, -PATCHES:]) <= TOKENS_ATOL


def test_embed_tokens_splits_timms_tokens_by_kind(kind, cat_jpg, gray_png):
    path, model, prefix = kind
    arrays = Predictor(path).embed_tokens([cat_jpg, gray_png])
    expected = timm_token_arrays(timm_features(model, [cat_jpg, gray_png])[1], prefix)
    assert sorted(arrays) == sorted([*expected, "grid"]) and arrays["grid"].tolist() == [14, 14]
    for name, array in expected.items():
        assert arrays[name].dtype == np.float32 and max_diff(arrays[name], array) <= TOKENS_ATOL, name


def test_normalize_gives_unit_rows_in_the_same_direction(kind, cat_jpg, gray_png):
    path, _, _ = kind
    predictor = Predictor(path)
    for tokens in (False, True):  # the patch tokens; the prefix ones are scaled by the same code
        raw = predictor.embed([cat_jpg, gray_png], tokens=tokens).astype(np.float64)
        unit = predictor.embed([cat_jpg, gray_png], tokens=tokens, normalize=True)
        assert unit.dtype == np.float32
        # float32 rounding of a division: measured <= 1.4e-7 from unit length, <= 4.7e-8 from raw / |raw|
        assert np.abs(np.linalg.norm(unit.astype(np.float64), axis=-1) - 1).max() <= 5e-7
        assert max_diff(unit, raw / np.linalg.norm(raw, axis=-1, keepdims=True)) <= 2e-7


def test_embed_at_another_size_is_timms_model_at_that_size(tmp_path, cat_jpg):
    name, _, config, _ = KINDS["class token"]
    model = timm_classifier(name, **TINY_TIMM_KWARGS)
    path = write_test_weights(tmp_path / "m.safetensors", model.state_dict(), config)
    theirs = timm_classifier(name, **TINY_TIMM_KWARGS, img_size=(160, 224))
    state = {**model.state_dict(), "pos_embed": resample_abs_pos_embed(
        model.pos_embed.detach(), new_size=[10, 14], old_size=[14, 14], num_prefix_tokens=1)}
    theirs.load_state_dict(state)
    pooled, tokens = timm_features(theirs, [cat_jpg], size=(160, 224))
    predictor = Predictor(path, img_size="160x224")
    assert max_diff(predictor.embed([cat_jpg]), pooled) <= POOLED_ATOL
    assert max_diff(predictor.embed([cat_jpg], tokens=True), tokens[:, 1:]) <= TOKENS_ATOL
    assert predictor.embed_tokens([cat_jpg])["grid"].tolist() == [10, 14]


def test_embed_raises_for_an_image_it_cannot_read(tiny_weights, cat_jpg, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(cat_jpg.read_bytes()[:200])
    with pytest.raises(VitConvertError, match=f"^{broken}: "):
        Predictor(tiny_weights).embed([cat_jpg, broken])
    results = list(Predictor(tiny_weights).iter_embed([cat_jpg, broken, cat_jpg], errors="report", batch_size=2))
    assert [r.error is None for r in results] == [True, False, True]
    assert results[1].embedding is None and np.array_equal(results[0].embedding, results[2].embedding)


# --- vitpredict --embed ---------------------------------------------------------------------------------

def test_cli_embed_writes_timms_features_for_the_images_it_could_read(vitpredict, kind, cat_jpg, gray_png,
                                                                      tmp_path):
    path, model, _ = kind
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    out = tmp_path / "features.npz"
    result = vitpredict(cat_jpg, bad, gray_png, "--weights", path, "--embed", out)
    assert result.code == 1  # an image failed; --skip-errors makes it 0 (below)
    assert result.err.startswith(f"error: {bad}: ")
    assert result.out == f"wrote {out}: 2 embeddings, shape (2, 64) float32 (pooled features); 1 image failed\n"
    with np.load(out) as f:  # no pickle needed
        assert sorted(f.files) == ["embeddings", "paths"]
        assert f["paths"].tolist() == [str(cat_jpg), str(gray_png)]
        assert f["embeddings"].dtype == np.float32
        assert max_diff(f["embeddings"], timm_features(model, [cat_jpg, gray_png])[0]) <= POOLED_ATOL
    assert vitpredict(cat_jpg, bad, "--weights", path, "--embed", out, "--skip-errors", "--force").code == 0


def test_cli_embed_tokens_writes_patch_tokens_and_prefix_tokens_apart(vitpredict, kind, cat_jpg, tmp_path):
    path, model, prefix = kind
    out = tmp_path / "tokens.npz"
    result = vitpredict(cat_jpg, "--weights", path, "--embed", out, "--tokens", "--normalize", "--json")
    assert result.code == 0
    tokens = timm_features(model, [cat_jpg])[1].astype(np.float64)
    expected = timm_token_arrays(tokens / np.linalg.norm(tokens, axis=-1, keepdims=True), prefix)
    assert result.json() == {"output": str(out), "images": 1, "shape": [1, PATCHES, 64], "dtype": "float32",
                             "tokens": True, "normalized": True, "grid": [14, 14],
                             "prefix_tokens": {n: list(expected[n].shape) for n in prefix}, "errors": []}
    with np.load(out) as f:  # no pickle needed
        assert sorted(f.files) == sorted(["paths", "grid", *expected])
        assert f["grid"].tolist() == [14, 14]
        for name, array in expected.items():
            assert max_diff(f[name], array) <= TOKENS_ATOL, name


def test_cli_embed_tokens_summary_names_the_grid_and_the_arrays_apart(vitpredict, cat_jpg, tmp_path):
    _, _, config, _ = KINDS["registers"]
    path = write_test_weights(tmp_path / "m.safetensors", our_vit(config).state_dict(), config)
    out = tmp_path / "tokens.npz"
    result = vitpredict(cat_jpg, "--weights", path, "--res", "160x224", "--embed", out, "--tokens")
    assert result.code == 0
    assert result.out == (f"wrote {out}: 1 embeddings, shape (1, 140, 64) float32 (patch tokens on a 10x14 grid, "
                          f"class_tokens and register_tokens apart)\n")


def test_cli_embed_writes_nothing_when_no_image_could_be_read(vitpredict, tiny_weights, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    out = tmp_path / "features.npz"
    result = vitpredict(bad, "--weights", tiny_weights, "--embed", out, "--skip-errors")
    assert result.code == 1 and result.out == ""
    assert result.err.splitlines()[-1] == f"error: no image could be embedded, so {out} was not written"
    assert list(tmp_path.iterdir()) == [bad]


def test_cli_embed_replaces_the_output_whole(vitpredict, tiny_weights, cat_jpg, tmp_path, monkeypatch):
    out = tmp_path / "features.npz"
    out.write_bytes(b"previous")
    assert vitpredict(cat_jpg, "--weights", tiny_weights, "--embed", out, "--force").code == 0
    with np.load(out) as f:
        assert f["embeddings"].shape == (1, 64)
    # A failure while writing (a full disk) leaves the previous file, and no temporary one.
    before = out.read_bytes()

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    result = vitpredict(cat_jpg, "--weights", tiny_weights, "--embed", out, "--force")
    assert result.code == 1 and "No space left on device" in result.err
    assert out.read_bytes() == before and list(tmp_path.iterdir()) == [out]


@pytest.mark.parametrize("args, message", [
    (["--tokens"], "--tokens and --normalize shape the output of --embed OUT.npz"),
    (["--normalize"], "--tokens and --normalize shape the output of --embed OUT.npz"),
    (["--embed", "--tokens", "--ray", "--output", "p.parquet"], "--tokens runs without --ray only"),
    (["--embed", "o.npz", "--top", "3"], "--embed writes features, not classes: --top cannot go with it"),
    (["--embed", "o.npz", "--labels", "imagenet-1k", "--attention-map", "a.png"],
     "--embed writes features, not classes: --labels and --attention-map cannot go with it"),
])
def test_cli_embed_options_that_do_not_fit_are_usage_errors(vitpredict, tiny_weights, cat_jpg, args, message):
    result = vitpredict(cat_jpg, "--weights", tiny_weights, *args)
    assert result.code == 2 and result.out == "" and message in result.err


def test_cli_embed_checks_the_output_before_loading(vitpredict, tiny_weights, cat_jpg, tmp_path):
    result = vitpredict(cat_jpg, "--weights", tiny_weights, "--embed", tmp_path / "missing" / "o.npz")
    assert result.code == 1 and result.err == f"error: --embed directory {tmp_path / 'missing'} does not exist\n"


# --- models whose classes mean nothing: embed yes, top-k no -----------------------------------------------

EMBED_HINT = "for its features use `vitpredict IMAGE... --embed OUT.npz` (Predictor.embed)"


def test_zero_head_embeds_and_refuses_top_k_pointing_to_embed(vitpredict, tmp_path, cat_jpg):
    model = our_vit(TINY)
    zero = {**model.state_dict(), "head.weight": torch.zeros(1000, 64), "head.bias": torch.zeros(1000)}
    path = write_test_weights(tmp_path / "zero.safetensors", zero, TINY)
    real = write_test_weights(tmp_path / "real.safetensors", model.state_dict(), TINY)
    predictor = Predictor(path)
    # The head is not part of the features: the same as the same weights with a real head, exactly.
    assert np.array_equal(predictor.embed([cat_jpg]), Predictor(real).embed([cat_jpg]))
    for top_k in (predictor.predict, predictor.probabilities):
        with pytest.raises(VitConvertError, match="all zeros: it was published for fine-tuning only") as e:
            top_k([cat_jpg])
        assert "same probability" in str(e.value) and str(e.value).endswith(EMBED_HINT)
    result = vitpredict(cat_jpg, "--weights", path)
    assert result.code == 1 and result.out == "" and EMBED_HINT in result.err
    assert vitpredict(cat_jpg, "--weights", path, "--embed", tmp_path / "f.npz").code == 0


def test_the_2020_imagenet_21k_jax_files_embed(vitpredict, tmp_path, cat_jpg):
    """The zero-head files with a representation layer: the features are timm's pooled token, which
    comes before that layer (timm drops it)."""
    model = pl.random_timm_vit("tiny", seed=1)
    pre, head = pl.random_pre_logits(model, 48, seed=2)
    pl.write_npz(model, tmp_path / "in21k.npz", "vit_jax", pre_logits=pre, head=head, zero_head=True)
    record = convert_jax(tmp_path / "in21k.npz", tmp_path / "in21k.safetensors")
    assert record.head_is_zero and record.config.representation_size == 48
    reference = pl.timm_reference(tmp_path / "in21k.npz", lambda: pl.random_timm_vit("tiny", seed=9))
    x = pl.example_input(model)
    with torch.inference_mode():
        expected = reference.forward_head(reference.forward_features(x), pre_logits=True)
    ours = Predictor(tmp_path / "in21k.safetensors").batch_embeddings(x)
    assert (ours - expected).abs().max().item() <= POOLED_ATOL
    result = vitpredict(cat_jpg, "--weights", tmp_path / "in21k.safetensors", "--embed", tmp_path / "f.npz")
    assert result.code == 0 and "shape (1, 32) float32" in result.out


def test_a_model_without_classes_refuses_top_k_pointing_to_embed():
    with pytest.raises(VitConvertError, match=r"^m\.safetensors: this model has no classification head "
                                              r"\(num_classes 0: a backbone such as DINO's\), so there are no "
                                              r"classes to rank; ") as e:
        check_top_k(0, False, "m.safetensors")
    assert str(e.value).endswith(EMBED_HINT)
    check_top_k(1000, False, "m.safetensors")  # a real head: nothing to say


def _headless_config() -> ViTConfig:
    try:
        return TINY.replace(num_classes=0)
    except VitConvertError as e:
        pytest.skip(f"ViTConfig(num_classes=0) is refused until headless models land: {e}")


def test_headless_backbone_embeds_timms_features_and_refuses_top_k(vitpredict, tmp_path, cat_jpg):
    """A timm model built with num_classes=0 (DINO, CLIP towers...): `model(x)` is its pooled features."""
    config = _headless_config()
    model = timm_classifier("vit_tiny_patch16_224", **TINY_TIMM_KWARGS, num_classes=0)
    path = write_test_weights(tmp_path / "backbone.safetensors", model.state_dict(), config)
    pooled, tokens = timm_features(model, [cat_jpg])
    with torch.inference_mode():
        assert max_diff(model(timm_input(cat_jpg)[None]).numpy(), pooled) == 0  # timm: model(x) is the features
    predictor = Predictor(path)
    assert predictor.labels is None
    assert max_diff(predictor.embed([cat_jpg]), pooled) <= POOLED_ATOL
    assert max_diff(predictor.embed([cat_jpg], tokens=True), tokens[:, 1:]) <= TOKENS_ATOL
    with pytest.raises(VitConvertError, match="no classification head"):
        predictor.predict([cat_jpg])
    refused = vitpredict(cat_jpg, "--weights", path)
    assert refused.code == 1 and EMBED_HINT in refused.err
    out = tmp_path / "f.npz"
    assert vitpredict(cat_jpg, "--weights", path, "--embed", out).code == 0
    with np.load(out) as f:
        assert max_diff(f["embeddings"], pooled) <= POOLED_ATOL


def test_record_of_a_headless_model_has_no_class_names():
    from vitconvert.formats.weights_file import check_labels

    assert check_labels(None, 0) is None
    for labels in ("imagenet-1k", ["a"], []):
        with pytest.raises(VitConvertError, match=r"this model has no classes \(num_classes 0\)"):
            check_labels(labels, 0)



# --- dense features of a DINOv3 release file, at any size -------------------------------------------------

def test_dinov3_tokens_are_dinov3s_own_at_a_non_square_size(tmp_path):
    """DINOv3's forward (tests/data/make_dinov3_reference.py) on the same input: the patch tokens, the class
    token and the storage tokens `embed_tokens` and `--embed --tokens` write."""
    sys.path.insert(0, str(DINOV3.parent))
    from make_dinov3_reference import reference_input

    convert(DINOV3 / "plus.pth", tmp_path / "d.safetensors")
    predictor = Predictor(tmp_path / "d.safetensors", img_size="160x288")
    assert predictor.grid == (10, 18)
    parts = token_parts(predictor.batch_embeddings(reference_input((160, 288)), tokens=True), predictor.config)
    expected = np.load(DINOV3 / "plus.npz")
    assert max_diff(parts.patch_tokens.numpy(), expected["160x288/patch_tokens"]) <= DINOV3_ATOL
    assert max_diff(parts.class_token.numpy(), expected["160x288/class_token"]) <= DINOV3_ATOL
    assert max_diff(parts.register_tokens.numpy(), expected["160x288/storage_tokens"]) <= DINOV3_ATOL


def test_cli_embed_tokens_of_a_dinov3_file_keeps_the_storage_tokens_apart(vitpredict, cat_jpg, tmp_path):
    convert(DINOV3 / "vits_b_l.pth", tmp_path / "d.safetensors")
    out = tmp_path / "dense.npz"
    result = vitpredict(cat_jpg, "--weights", tmp_path / "d.safetensors", "--res", "448x640", "--embed", out,
                        "--tokens", "--json")
    assert result.code == 0, result.err
    assert result.json()["prefix_tokens"] == {"class_tokens": [1, 32], "register_tokens": [1, 4, 32]}
    with np.load(out) as f:
        assert f["grid"].tolist() == [28, 40] and f["embeddings"].shape == (1, 28 * 40, 32)
