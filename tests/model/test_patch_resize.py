"""A model at another patch size: the patch kernel PI-resized (model/patch_resize.py: big_vision's
`resample_patchemb`, timm's `resample_patch_embed`), checked against that formula written out in
tests/helpers/big_vision_layouts.py and against timm's resampling of the same file, at the kernel and
end to end. (FlexiViT's files at other patch sizes against FlexiViT's forward: tests/conversion/test_jax.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import big_vision_layouts as bv
from helpers import published_layouts as pl
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from timm.models.vision_transformer import VisionTransformer as TimmViT

from vitconvert import Predictor, VitConvertError, convert_jax, load_model
from vitconvert.model.patch_resize import resample_patch_kernel

# The 2e-5, tightened to a little above what was measured (each test says its own).
ATOL = 3e-6
TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}


@pytest.fixture(scope="module")
def flexivit(tmp_path_factory):
    """(big_vision params, our file converted from them): FlexiViT's 7x7 grid, with a kernel of 8 (56 px)."""
    tmp = tmp_path_factory.mktemp("flexivit")
    params = bv.random_params(bv.BigVision(pool="tok", patch=8, grid=(7, 7)), seed=11)
    bv.write_npz(tmp / "flexivit.npz", bv.with_prefix(params, "params/"))
    convert_jax(tmp / "flexivit.npz", tmp / "flexivit.safetensors", pos_resize="flexivit")
    return params, tmp / "flexivit.safetensors"


def max_diff(a, b) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


# --- the kernel: pinv(B^T) w, B the bilinear resize matrix ----------------------------------------------

@pytest.mark.parametrize("new", [(4, 4), (14, 14), (6, 12)])
def test_pi_resized_kernel_is_the_formula(flexivit, new) -> None:
    params, path = flexivit
    hwio = params["embedding/kernel"]
    expected = bv.pi_resize_kernel(hwio, new).transpose(3, 2, 0, 1)  # float64, as OIHW
    oihw = torch.from_numpy(hwio.transpose(3, 2, 0, 1).copy())
    # In float64 the two computations of pinv(B^T) w agree to rounding: measured 0 to 8.6e-16.
    assert max_diff(resample_patch_kernel(oihw.double(), new), expected) <= 1e-13
    # Stored in float32: the float64 result rounded once, within half an ulp of the formula's.
    ours = load_model(path, img_size=(new[0] * 7, new[1] * 7), patch_size=new).patch_embed.proj.weight.detach()
    assert ours.dtype == torch.float32
    assert np.all(np.abs(ours.double().numpy() - expected) <= np.abs(expected) * 2.0 ** -24 + 1e-30)
    # timm's resample_patch_embed, in FlexiViT's bilinear without antialias, takes the pseudo-inverse in
    # float32: measured 1.1e-7 to 3.2e-7 from the formula.
    timm_kernel = resample_patch_embed(oihw, list(new), interpolation="bilinear", antialias=False)
    assert max_diff(timm_kernel, expected) <= 2e-6


# --- any file at another patch size ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def plain_vit(tmp_path_factory):
    """A vit_jax file (patch 8, 32 px, class token, timm's bicubic position resizing) and its timm model."""
    tmp = tmp_path_factory.mktemp("plain")
    model = pl.random_timm_vit("tiny", seed=12, gelu="tanh")
    pl.write_npz(model, tmp / "t.npz", "vit_jax")
    convert_jax(tmp / "t.npz", tmp / "t.safetensors")
    return model, tmp / "t.safetensors"


def timm_at_patch(model: torch.nn.Module, patch: int) -> torch.nn.Module:
    """timm's model at `patch` (same 32 px input) with the kernel and position table resized by timm's own
    functions: resample_patch_embed (FlexiViT's bilinear, no antialias), resample_abs_pos_embed."""
    state = dict(model.state_dict())
    state["patch_embed.proj.weight"] = resample_patch_embed(state["patch_embed.proj.weight"], [patch, patch],
                                                            interpolation="bilinear", antialias=False)
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], [32 // patch] * 2, num_prefix_tokens=1)
    theirs = pl.set_gelu(TimmViT(img_size=32, patch_size=patch, num_classes=10, **TINY), "tanh")
    theirs.load_state_dict(state)
    return theirs.eval()


def test_any_file_runs_at_another_patch_size_as_timms_resampling_makes_it(plain_vit, vitpredict, cat_jpg) -> None:
    model, path = plain_vit
    theirs = timm_at_patch(model, 4)
    ours = load_model(path, patch_size=4)
    assert ours.config.grid_size == (8, 8) and ours.config.img_size == (32, 32)
    # Position table: the file's method (timm's bicubic), the same call: measured 0.
    assert torch.equal(ours.pos_embed.detach(), theirs.pos_embed.detach())
    x = pl.example_input(model)
    with torch.inference_mode():
        assert max_diff(ours(x), theirs(x)) <= ATOL  # measured 3.9e-7 (timm's float32 pinv)
    result = vitpredict(cat_jpg, "--weights", path, "--patch-size", "4", "--top", "10", "--json")
    assert result.code == 0, result.err
    with torch.inference_mode():
        probs = theirs(Predictor(path).transform(cat_jpg)[None]).softmax(-1)[0]
    got = {p["index"]: p["probability"] for p in result.json()[0]["predictions"]}
    assert max(abs(got[i] - probs[i].item()) for i in range(10)) <= 1e-6  # measured 1.2e-7


def test_a_patch_size_the_input_does_not_tile_is_refused(plain_vit, vitpredict, cat_jpg) -> None:
    _, path = plain_vit
    with pytest.raises(VitConvertError, match="image size 32x32 is not a multiple of the patch stride 5"):
        load_model(path, patch_size=5)
    result = vitpredict(cat_jpg, "--weights", path, "--patch-size", "5", "--res", "32")
    assert result.code == 1 and "not a multiple of the patch stride 5" in result.err
    assert load_model(path, img_size=40, patch_size=5).config.grid_size == (8, 8)
