"""Preprocessing is timm's eval transform, to the bit: same sizes, same crop, same floats."""

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

from vitconvert.inference.transform import crop_geometry, to_tensor
from vitconvert.formats.weights_file import Preprocess


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
    Preprocess(size=(224, 224), resize="squash", interpolation="bilinear"),  # Google's eval
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
