"""Position embeddings at another grid: by default timm's `resample_abs_pos_embed`, bit for bit; 'dino' is
facebookresearch/dino's `interpolate_pos_encoding`, bit for bit; 'flexivit' is FlexiViT's antialiased
`jax.image.resize(..., 'linear')` written out; and each method at forward, where a model runs at the input's
size as the source's own model does."""

from __future__ import annotations

import math
import typing

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.big_vision_layouts import (
    jax_resize_linear,  # jax.image.resize's 'linear', written out
    posemb_sincos_2d,  # big_vision/models/vit.py's, ported to numpy
)
from helpers.dino import dino_interpolate_pos_encoding, dinov2_interpolate_pos_encoding
from helpers.vit_weights import TINY, our_vit
from timm.layers import resample_abs_pos_embed

from vitconvert.core.config import ViTConfig
from vitconvert.core.errors import VitConvertError
from vitconvert.model.loading import at_size
from vitconvert.model.posembed import RESIZERS, resample_pos_embed


@pytest.mark.parametrize("old, new", [
    ((14, 14), (24, 24)),  # 224 -> 384, the common case
    ((24, 24), (14, 14)),  # down
    ((14, 14), (14, 20)),  # 224 -> 224x320
    ((14, 20), (20, 14)),  # rectangular to transposed
    ((14, 20), (7, 10)),   # rectangular down
    ((7, 7), (9, 30)),
])
@pytest.mark.parametrize("prefix", [0, 1, 2])
def test_equals_timm_resample_abs_pos_embed(old, new, prefix):
    pos = torch.randn(1, prefix + old[0] * old[1], 48, generator=torch.Generator().manual_seed(0))
    ours = resample_pos_embed(pos, new, old, prefix)
    theirs = resample_abs_pos_embed(pos, new_size=list(new), old_size=list(old), num_prefix_tokens=prefix)
    assert ours.shape == theirs.shape == (1, prefix + new[0] * new[1], 48)
    # Measured: 0.0 for every case (the same F.interpolate call on the same float32 input).
    assert (ours - theirs).abs().max().item() == 0.0
    assert torch.equal(ours[:, :prefix], pos[:, :prefix])  # prefix tokens are not resampled


def test_same_grid_is_returned_untouched():
    pos = torch.randn(1, 1 + 196, 8)
    assert resample_pos_embed(pos, (14, 14), (14, 14), 1) is pos


def test_at_size_resamples_only_the_position_embedding():
    state = our_vit(TINY).state_dict()
    cfg, new = at_size(TINY, state, (224, 320))
    assert cfg.img_size == (224, 320) and cfg.grid_size == (14, 20)
    assert new["pos_embed"].shape == (1, 1 + 14 * 20, 64)
    expected = resample_abs_pos_embed(state["pos_embed"], new_size=[14, 20], old_size=[14, 14])
    assert torch.equal(new["pos_embed"], expected)
    assert all(new[k] is state[k] for k in state if k != "pos_embed")


# --- 'dino': facebookresearch/dino's interpolate_pos_encoding --------------------------------------------

DINO_CASES = [  # (patch, image size (h, w)); stored at 224
    *((patch, (side, side)) for patch in (16, 8) for side in (160, 288, 480)),
    (16, (224, 320)), (16, (320, 224)), (8, (160, 480)),  # rectangular: pins which axis is which
]


def dino_config(patch: int, **changes) -> ViTConfig:
    return ViTConfig(patch_size=patch, embed_dim=48, depth=1, num_heads=1, mlp_dim=96, pos_resize="dino",
                     **changes)


@pytest.mark.parametrize("patch, size", DINO_CASES)
def test_dino_method_is_dinos_interpolate_pos_encoding(patch, size):
    cfg = dino_config(patch)
    pos = torch.randn(1, 1 + (224 // patch) ** 2, 48, generator=torch.Generator().manual_seed(patch))
    new_cfg, state = at_size(cfg, {"pos_embed": pos}, size)
    theirs = dino_interpolate_pos_encoding(pos, patch, (1, 3, *size))
    assert new_cfg.pos_resize == "dino" and new_cfg.grid_size == (size[0] // patch, size[1] // patch)
    # Measured: bit-identical in every case (the same float32 interpolation).
    assert torch.equal(state["pos_embed"], theirs)
    bicubic = at_size(cfg.replace(pos_resize="bicubic"), {"pos_embed": pos}, size)[1]["pos_embed"]
    # timm's samples elsewhere (and antialiases down): measured 0.52 to 2.4 apart on N(0, 1) entries.
    assert (bicubic - theirs).abs().max().item() > 0.1


@pytest.mark.parametrize("size", [(224, 224), (448, 448), (224, 448)])
@pytest.mark.parametrize("offset, antialias, method", [(0.1, False, "dino"), (0.0, True, "bicubic")],
                         ids=["dinov2 without registers", "dinov2 with registers"])
def test_dinov2_resizes_as_dino_without_registers_and_as_timm_with_them(size, offset, antialias, method):
    cfg = dino_config(14, img_size=(518, 518)).replace(pos_resize=method)  # DINOv2 stores a 37x37 grid
    pos = torch.randn(1, 1 + 37 * 37, 48, generator=torch.Generator().manual_seed(2))
    ours = at_size(cfg, {"pos_embed": pos}, size)[1]["pos_embed"]
    # Measured: bit-identical in every case.
    assert torch.equal(ours, dinov2_interpolate_pos_encoding(pos, 14, (1, 3, *size), offset, antialias))


def keys_bicubic_weights(new: int, old: int, scale: float) -> np.ndarray:
    """(new, old) matrix of torch's bicubic (Keys, A = -0.75, half-pixel centres, edges clamped, no
    antialias) sampling output i at (i + 0.5) / scale - 0.5, in float64."""
    A = -0.75
    near = lambda t: ((A + 2) * t - (A + 3)) * t * t + 1  # |t| <= 1  # noqa: E731
    far = lambda t: ((A * t - 5 * A) * t + 8 * A) * t - 4 * A  # 1 < |t| < 2  # noqa: E731
    weights = np.zeros((new, old))
    for i in range(new):
        x = (i + 0.5) / scale - 0.5
        x0 = math.floor(x)
        t = x - x0
        for offset, wt in zip((-1, 0, 1, 2), (far(t + 1), near(t), near(1 - t), far(2 - t)), strict=False):
            weights[i, min(max(x0 + offset, 0), old - 1)] += wt
    return weights


@pytest.mark.parametrize("old, new", [((14, 14), (10, 10)), ((14, 14), (30, 30)), ((28, 28), (36, 20))])
def test_dino_samples_at_the_given_scale_not_the_grid_ratio(old, new):
    """What the +0.1 does with the scale factor used as given: output i samples (i + 0.5) * s / (g + 0.1) - 0.5;
    a recomputed scale (torch <= 1.5) would sample at (i + 0.5) * s / g - 0.5."""
    grid = torch.randn(1, old[0] * old[1], 8, generator=torch.Generator().manual_seed(1))
    ours = resample_pos_embed(grid, new, old, 0, method="dino")[0].reshape(*new, 8).double().numpy()

    def sampled(scales):
        rows, cols = (keys_bicubic_weights(n, o, s) for n, o, s in zip(new, old, scales, strict=False))
        return np.einsum("ia,abd,jb->ijd", rows, grid[0].reshape(*old, 8).double().numpy(), cols)

    given = sampled([(n + 0.1) / o for n, o in zip(new, old, strict=False)])
    recomputed = sampled([n / o for n, o in zip(new, old, strict=False)])
    # Measured on N(0, 1) entries: 3.5e-6 to 6.0e-6 from the given scale (float32 arithmetic against
    # float64); 0.32 to 0.75 from the recomputed one.
    assert np.abs(ours - given).max() <= 1e-5
    assert np.abs(ours - recomputed).max() > 0.1


def test_methods_are_the_names_the_config_accepts():
    accepted = typing.get_args(typing.get_type_hints(ViTConfig)["pos_resize"])
    assert set(RESIZERS) == set(accepted) == {"bicubic", "dino", "flexivit", "transformers", "torchvision"}
    assert ViTConfig().pos_resize == "bicubic"  # timm's, for every file that does not say


def test_unknown_method_is_refused_by_name():
    with pytest.raises(VitConvertError,
                       match="resize must be one of 'bicubic', 'dino', 'flexivit', 'transformers', 'torchvision', "
                             "got 'nearest'"):
        resample_pos_embed(torch.zeros(1, 197, 8), (10, 10), (14, 14), 1, method="nearest")


# --- 'sincos2d': computed for the grid, never stored or resampled --------------------------------------------

SINCOS = TINY.replace(img_size=(64, 96), patch_size=16, pos_embed="sincos2d", pool="gap", num_classes=5)


@pytest.mark.parametrize("size", [(64, 96), (128, 64)])  # the stored size, then another (rows, cols swap)
def test_sincos2d_is_big_visions_table_for_the_grid_it_runs_at(size):
    model = our_vit(SINCOS.replace(img_size=size))
    img = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        added = model.embed_tokens(img) - model.patch_embed(img)
    gh, gw = size[0] // 16, size[1] // 16
    expected = torch.from_numpy(posemb_sincos_2d(gh, gw, 64)).float().expand(2, -1, -1)
    # Measured 1.8e-7 at both sizes (the table alone is within 1.1e-7 of float64's; the rest is the rounding
    # of patch + table - patch). A swapped axis or a wrong frequency moves it by ~1.
    assert (added - expected).abs().max().item() < 5e-7


def test_sincos2d_stores_nothing_and_at_size_changes_no_weight():
    state = our_vit(SINCOS).state_dict()
    assert not any("pos" in k for k in state)
    cfg, new = at_size(SINCOS, state, (128, 128))
    assert cfg.grid_size == (8, 8) and new is state


@pytest.mark.parametrize("dim", [60 + 2, 4])
def test_sincos2d_needs_four_channel_groups(dim):
    with pytest.raises(VitConvertError, match="sincos2d position embedding needs embed_dim a multiple of 4"):
        SINCOS.replace(embed_dim=dim, num_heads=1)


# --- 'flexivit': FlexiViT's jax.image.resize(..., 'linear'), antialias on -----------------------------------

def max_diff(a, b) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.mark.parametrize("new", [(4, 4), (5, 5), (3, 10), (14, 14), (9, 2)])
def test_flexivit_grid_resize_is_jaxs_antialiased_linear_resize(new) -> None:
    pos = torch.randn(1, 49, 16, generator=torch.Generator().manual_seed(1))
    ours = resample_pos_embed(pos, new, (7, 7), 0, method="flexivit")[0].reshape(*new, 16)
    expected = jax_resize_linear(pos[0].reshape(7, 7, 16).numpy(), new)
    # Measured 1.8e-7 to 5.9e-7 on N(0, 1) entries (float32 against float64).
    assert max_diff(ours, expected) <= 1e-6
    plain = F.interpolate(pos[0].reshape(1, 7, 7, 16).permute(0, 3, 1, 2), size=new, mode="bilinear",
                          align_corners=False).permute(0, 2, 3, 1)[0]
    shrinks = [n < 7 for n in new]
    if any(shrinks):  # there the antialiasing is what differs from plain bilinear: measured 1.4 to 1.7
        assert max_diff(plain, expected) > 0.1
    else:  # enlarging, jax's triangle filter is plain half-pixel bilinear (measured 1.7e-7)
        assert max_diff(plain, expected) <= 1e-6


# --- each method at forward: model(x) at any tiled size, against the source's own resizing ---------------

def images(size: tuple[int, int], n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("size", [(48, 48), (24, 24), (40, 56)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("architecture", ["ViTModel", "Dinov2Model"])
def test_transformers_files_run_at_any_size_as_interpolate_pos_encoding_does(tmp_path, architecture, size):
    from helpers.hf import largest_difference, outputs, random_hf

    from vitconvert import convert_hf, load_model

    theirs = random_hf(architecture)  # 32x32 images in 8x8 patches
    theirs.save_pretrained(tmp_path / "hf")
    assert convert_hf(tmp_path / "hf", tmp_path / "ours.safetensors").config.pos_resize == "transformers"
    ours = load_model(tmp_path / "ours.safetensors")
    x = images(size)
    # Measured <= 9.6e-7 (float32; our fused qkv).
    assert largest_difference(ours, outputs(theirs, x, interpolate_pos_encoding=True), x) <= 3e-6


@pytest.mark.parametrize("patch, size", [(16, (160, 160)), (16, (224, 320)), (8, (160, 480))])
def test_a_dino_file_runs_at_any_size_with_dinos_interpolate_pos_encoding(patch, size):
    cfg = dino_config(patch, num_classes=0)
    model = our_vit(cfg)
    # The reference: the same weights at that size, carrying the table DINO's formula makes.
    dinos = dino_interpolate_pos_encoding(model.pos_embed.detach(), patch, (1, 3, *size))
    reference = type(model)(cfg.replace(img_size=size))
    reference.load_state_dict({**model.state_dict(), "pos_embed": dinos})
    x = images(size)
    with torch.inference_mode():
        # Measured: bit-identical (the same float32 interpolation, then the same model).
        assert torch.equal(model(x), reference.eval()(x))


def test_a_big_vision_sincos2d_model_runs_at_any_size_as_big_vision_computes_it(tmp_path):
    """big_vision computes the table for the input's grid; the file does not record the training size
    (224 assumed), so the model must run at any tiled size without being told one."""
    from helpers import big_vision_layouts as bv

    from vitconvert import convert_jax, load_model

    m = bv.BigVision(patch=16, grid=(14, 14), posemb="sincos2d", pool="tok")
    params = bv.random_params(m, seed=2)
    bv.write_npz(tmp_path / "bv.npz", bv.with_prefix(params, "params/"))
    convert_jax(tmp_path / "bv.npz", tmp_path / "ours.safetensors")
    model = load_model(tmp_path / "ours.safetensors")
    assert model.config.img_size == (224, 224)
    for size in [(224, 224), (256, 256), (160, 96), (64, 384)]:
        x = images(size)
        with torch.inference_mode():
            ours = model(x).double()
        # Measured <= 1.6e-6 (float32 against big_vision's float64 forward).
        assert (ours - bv.forward(params, x, m)["out"]).abs().max().item() <= 3e-6, size


@pytest.mark.parametrize("size", [40, 88, 24], ids=["grid 5", "grid 11", "grid 3"])
def test_a_flexivit_file_runs_at_any_size_as_flexivits_forward_resizes_its_grid(tmp_path, size):
    from helpers import big_vision_layouts as bv

    from vitconvert import convert_jax, load_model

    m = bv.BigVision(pool="tok", patch=8, grid=(7, 7))  # FlexiViT's 7x7 grid, resized at every forward
    params = bv.random_params(m, seed=11)
    bv.write_npz(tmp_path / "flexi.npz", bv.with_prefix(params, "params/"))
    convert_jax(tmp_path / "flexi.npz", tmp_path / "ours.safetensors", pos_resize="flexivit")
    model = load_model(tmp_path / "ours.safetensors")
    assert model.config.img_size == (56, 56)
    x = images((size, size))
    with torch.inference_mode():
        ours = model(x)
        assert torch.equal(ours, load_model(tmp_path / "ours.safetensors", img_size=size)(x))
    # Measured <= 1.7e-6 (float32 against FlexiViT's float64 forward).
    assert (ours.double() - bv.forward(params, x, m)["out"]).abs().max().item() <= 3e-6
