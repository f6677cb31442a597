"""Preprocessing is each record's reference pipeline: timm's eval transform to the bit (Pillow's
'bicubic' and 'bilinear'), and vit_jax's `tf.image.resize` then (x - 127.5) / 127.5 ('bilinear_tf')."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from helpers.vit_weights import AUGREG_224, AUGREG_384
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from timm.data import create_transform, resolve_data_config

from vitconvert.formats.weights_file import Preprocess
from vitconvert.inference.transform import crop_geometry, to_tensor


def timm_transform(pre: Preprocess):
    """timm's eval transform for the same settings (what resolve_data_config would hand it)."""
    return create_transform(input_size=(3, *pre.size), crop_pct=pre.crop_pct,
                            crop_mode="squash" if pre.resize == "squash" else "center",
                            interpolation=pre.interpolation, mean=pre.mean, std=pre.std)


@pytest.mark.parametrize("tag, pre", [
    ("vit_base_patch16_224.augreg_in21k_ft_in1k", AUGREG_224),
    ("vit_base_patch16_384.augreg_in21k_ft_in1k", AUGREG_384),
])
def test_cat_matches_timm_pretrained_cfg_exactly(cat_jpg, tag, pre):
    # The transform timm users get for the published model, from its pretrained cfg.
    model = timm.create_model(tag, pretrained=False, depth=1)
    theirs = create_transform(**resolve_data_config({}, model=model))
    image = Image.open(cat_jpg).convert("RGB")
    expected = theirs(image)
    got = to_tensor(image, pre)
    assert got.dtype == torch.float32 and got.shape == expected.shape == (3, *pre.size)
    assert (got - expected).abs().max().item() == 0.0


PIPELINES = [
    AUGREG_224,
    AUGREG_384,
    Preprocess(size=(224, 320), resize="crop", crop_pct=0.9, interpolation="bicubic"),  # timm ResizeKeepRatio
    Preprocess(size=(320, 224), resize="crop", crop_pct=0.875, interpolation="bilinear",
               mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    Preprocess(size=(224, 224), resize="squash", interpolation="bilinear"),  # Hugging Face's ViTImageProcessor
    Preprocess(size=(160, 288), resize="squash", interpolation="bicubic"),
    Preprocess(size=(96, 64), resize="squash", crop_pct=0.9, interpolation="bicubic"),
]


@settings(max_examples=60, deadline=None)
@given(height=st.integers(1, 300), width=st.integers(1, 300), seed=st.integers(0, 2**16),
       pre=st.sampled_from(PIPELINES))
def test_any_image_size_matches_timm_exactly(height, width, seed, pre):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    expected = timm_transform(pre)(image)
    got = to_tensor(image, pre)
    assert got.shape == expected.shape == (3, *pre.size)
    assert torch.equal(got, expected)


def test_crop_geometry_follows_torchvision_rules():
    # 451x300 landscape, crop_pct 0.9 at 224: short side to floor(224 / 0.9) = 248,
    # long side int(248 * 451 / 300) = 372, then the middle 224: left round(74.0) = 74, top 12.
    g = crop_geometry((300, 451), AUGREG_224)
    assert (g.resized, g.top, g.left, g.size) == ((248, 372), 12, 74, (224, 224))
    # Portrait: the short side is the width.
    assert crop_geometry((451, 300), AUGREG_224).resized == (372, 248)
    # A 1x1 image is stretched to the resize target like any other.
    assert crop_geometry((1, 1), AUGREG_224).resized == (248, 248)


def test_squash_ignores_aspect_and_fills_the_target():
    pre = Preprocess(size=(160, 288), resize="squash")
    g = crop_geometry((300, 451), pre)
    assert (g.resized, g.top, g.left) == ((160, 288), 0, 0)
    assert to_tensor(Image.new("RGB", (451, 300)), pre).shape == (3, 160, 288)


def test_box_in_original_coordinates():
    # Squash: the model saw the whole image.
    full = crop_geometry((300, 451), Preprocess(size=(224, 224), resize="squash"))
    assert full.box_in((300, 451)) == pytest.approx((0, 0, 451, 300))
    # Crop 0.9: the middle of the short side, 224/248 of it.
    left, top, right, bottom = crop_geometry((300, 451), AUGREG_224).box_in((300, 451))
    assert bottom - top == pytest.approx(300 * 224 / 248)
    assert (left + right) / 2 == pytest.approx(451 / 2, abs=1)


def test_normalization_uses_the_record_mean_and_std():
    white = Image.new("RGB", (224, 224), (255, 255, 255))
    pre = Preprocess(size=(224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    x = to_tensor(white, pre)
    expected = (1 - torch.tensor(pre.mean)) / torch.tensor(pre.std)
    assert torch.allclose(x[:, 0, 0], expected, atol=0, rtol=1e-7)


# --- Google's evaluation: tf.image.resize, not Pillow ------------------------------------------------

def tf_resize_bilinear(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`tf.image.resize(pixels, size)` (bilinear, antialias off) on an (H, W, C) uint8 array, written
    out: float pixels, output pixel i samples the input at (i + 0.5) * in / out - 0.5 (half-pixel
    centres), clamped to [0, in - 1], weighted linearly between its two neighbours. TensorFlow's
    kernel computes that source coordinate in float32, so this does too; the rest is float64."""
    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * np.float32(n_in / n_out) - np.float32(0.5)
        src = np.clip(src.astype(np.float64), 0, n_in - 1)
        low = np.floor(src).astype(int)
        return low, np.minimum(low + 1, n_in - 1), src - low

    (y0, y1, wy), (x0, x1, wx) = axis(pixels.shape[0], size[0]), axis(pixels.shape[1], size[1])
    p = pixels.astype(np.float64)
    wy, wx = wy[:, None, None], wx[None, :, None]
    top = p[y0][:, x0] * (1 - wx) + p[y0][:, x1] * wx
    bottom = p[y1][:, x0] * (1 - wx) + p[y1][:, x1] * wx
    return top * (1 - wy) + bottom * wy


def google_reference(pixels: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """vit_jax's input_pipeline for evaluation: tf.image.resize, then (x - 127.5) / 127.5, as (C, H, W)."""
    return torch.from_numpy((tf_resize_bilinear(pixels, size) - 127.5) / 127.5).permute(2, 0, 1)


@pytest.mark.parametrize("size", [(224, 224), (384, 384)], ids=["224", "384"])
def test_google_preprocessing_is_tf_image_resize_not_pillow(cat_jpg, size):
    image = Image.open(cat_jpg).convert("RGB")
    got = to_tensor(image, Preprocess.google(size))
    assert got.dtype == torch.float32 and got.shape == (3, *size)
    # Measured: <= 1.5e-7 here and on the photos of /work/shared/images, at 224, 384 and 160x288
    # (float32 rounding); torch 2.14's F.interpolate was 5.8e-6 away, the source coordinate in float64 1.1e-5.
    assert (got.double() - google_reference(np.asarray(image), size)).abs().max().item() <= 3e-7
    # Pillow's bilinear antialiases when shrinking: 0.22 (224) and 0.12 (384) away on this photo.
    pillow = to_tensor(image, Preprocess(size=size, interpolation="bilinear"))
    assert (pillow - got).abs().max().item() > 0.1


@settings(max_examples=60, deadline=None)
@given(height=st.integers(1, 300), width=st.integers(1, 300), out_h=st.integers(1, 300),
       out_w=st.integers(1, 300), seed=st.integers(0, 2**16))
def test_tf_resize_matches_the_formula_up_and_down_at_any_size(height, width, out_h, out_w, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    got = to_tensor(Image.fromarray(pixels), Preprocess.google((out_h, out_w)))
    assert got.shape == (3, out_h, out_w)
    # The source coordinates are TensorFlow's float32 ones exactly; what is left is the float32
    # rounding of the interpolation itself. Measured: 2.7e-7 at most over 1500 random cases.
    # (torch's F.interpolate, which rounds the coordinate once, was up to 1.4e-5 away.)
    assert (got.double() - google_reference(pixels, (out_h, out_w))).abs().max().item() <= 4e-7


def test_tf_resize_with_a_crop_and_another_mean_and_std(cat_jpg):
    # A record may combine the TF resize with timm's crop rule and any normalization: resize to
    # the crop geometry's size (tested against torchvision above), cut the middle, normalize.
    pre = Preprocess(size=(224, 224), resize="crop", crop_pct=0.875, interpolation="bilinear_tf",
                     mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    image = Image.open(cat_jpg).convert("RGB")
    g = crop_geometry((image.height, image.width), pre)
    resized = tf_resize_bilinear(np.asarray(image), g.resized)[g.top:g.top + 224, g.left:g.left + 224]
    expected = (resized / 255 - np.array(pre.mean)) / np.array(pre.std)
    got = to_tensor(image, pre)
    # Measured: 4.1e-7 (a std of 0.224 scales float32 rounding up).
    assert (got.double() - torch.from_numpy(expected).permute(2, 0, 1)).abs().max().item() <= 1e-6
