"""FlexiViT, and any file at another patch size: the patch kernel PI-resized (big_vision's
`resample_patchemb`, timm's `resample_patch_embed`), FlexiViT's position grid resized with
`jax.image.resize(..., 'linear')` (antialiased), checked against those formulas written out in
tests/helpers/big_vision_layouts.py, against timm, and end to end against FlexiViT's forward."""

from __future__ import annotations

from helpers import big_vision_layouts as bv
import numpy as np
from helpers import published_layouts as pl
import pytest
import torch
import torch.nn.functional as F
from helpers.manifest import tiny_entry, write_manifest
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from timm.models.vision_transformer import VisionTransformer as TimmViT
from timm.models.vision_transformer import _load_weights

from vitconvert import Predictor, VitConvertError, convert_jax, load_manifest, load_model, read_record
from vitconvert.model.patch_resize import resample_patch_kernel
from vitconvert.model.posembed import resample_pos_embed

# The 2e-5, tightened to a little above what was measured (at most 1.2e-6; each test says its own).
ATOL = 3e-6
# FlexiViT's releases store a 32x32 kernel and a 7x7 grid; here a kernel of 8 on the same 7x7 grid (56 px).
FLEXI = bv.BigVision(pool="tok", patch=8, grid=(7, 7))
TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}


@pytest.fixture(scope="module")
def flexivit(tmp_path_factory):
    """(big_vision params, the npz, our file converted with --pos-resize flexivit)."""
    tmp = tmp_path_factory.mktemp("flexivit")
    params = bv.random_params(FLEXI, seed=11)
    bv.write_npz(tmp / "flexivit.npz", bv.with_prefix(params, "params/"))
    convert_jax(tmp / "flexivit.npz", tmp / "flexivit.safetensors", pos_resize="flexivit")
    return params, tmp / "flexivit.npz", tmp / "flexivit.safetensors"


def images(size: int, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def max_diff(a, b) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


# --- the position grid: jax.image.resize(..., 'linear'), antialias on ------------------------------------

@pytest.mark.parametrize("new", [(4, 4), (5, 5), (3, 10), (14, 14), (9, 2)])
def test_flexivit_grid_resize_is_jaxs_antialiased_linear_resize(new) -> None:
    pos = torch.randn(1, 49, 16, generator=torch.Generator().manual_seed(1))
    ours = resample_pos_embed(pos, new, (7, 7), 0, method="flexivit")[0].reshape(*new, 16)
    expected = bv.jax_resize_linear(pos[0].reshape(7, 7, 16).numpy(), new)
    # Measured 1.8e-7 to 5.9e-7 on N(0, 1) entries (float32 against float64).
    assert max_diff(ours, expected) <= 1e-6
    plain = F.interpolate(pos[0].reshape(1, 7, 7, 16).permute(0, 3, 1, 2), size=new, mode="bilinear",
                          align_corners=False).permute(0, 2, 3, 1)[0]
    shrinks = [n < 7 for n in new]
    if any(shrinks):  # there the antialiasing is what differs from plain bilinear: measured 1.4 to 1.7
        assert max_diff(plain, expected) > 0.1
    else:  # enlarging, jax's triangle filter is plain half-pixel bilinear (measured 1.7e-7)
        assert max_diff(plain, expected) <= 1e-6


# --- FlexiViT at its stored size (timm can load it there) and at other patch sizes -----------------------

def test_flexivit_at_its_stored_size_is_timms_and_flexivits(flexivit) -> None:
    params, npz, path = flexivit
    record = read_record(path)
    assert (record.config.patch_size, record.config.img_size, record.config.pos_resize) == (8, (56, 56), "flexivit")
    theirs = TimmViT(img_size=56, patch_size=8, num_classes=10, no_embed_class=True, **TINY)
    _load_weights(theirs, str(npz))
    pl.set_gelu(theirs, "tanh").eval()
    x = images(56)
    with torch.inference_mode():
        ours = load_model(path)(x)
        # Measured 6.0e-7 against timm, 8.3e-7 against FlexiViT's forward (float64).
        assert max_diff(ours, theirs(x)) <= ATOL
    assert max_diff(ours, bv.forward(params, x, FLEXI)["out"]) <= ATOL


@pytest.mark.parametrize("patch, size", [(4, 56), (14, 56), (12, 48)],
                         ids=["patch 4: kernel shrinks, grid 14", "patch 14: kernel grows, grid 4",
                              "patch 12 at 48: grid 4"])
def test_flexivit_at_another_patch_size_is_flexivits_forward(flexivit, patch, size) -> None:
    params, _, path = flexivit
    x = images(size)
    with torch.inference_mode():
        model = load_model(path, img_size=size, patch_size=patch)
        ours = model(x)
    assert model.config.patch_size == patch and model.config.grid_size == (size // patch,) * 2
    # Measured 7.5e-7 to 1.2e-6 (float32 against float64).
    assert max_diff(ours, bv.forward(params, x, FLEXI, patch=patch)["out"]) <= ATOL


@pytest.mark.parametrize("new", [(4, 4), (14, 14), (6, 12)])
def test_pi_resized_kernel_is_the_formula(flexivit, new) -> None:
    params, _, path = flexivit
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


# --- where 'flexivit' comes from: the option, or the manifest for the files it knows ---------------------

def test_the_manifest_gives_flexivit_files_their_resizing(flexivit, tmp_path) -> None:
    _, npz, path = flexivit
    config = read_record(path).config.to_dict()  # the architecture jax2torch reads from the file
    data = npz.read_bytes()
    (tmp_path / "flexivit_tiny_i1k.npz").write_bytes(data)
    manifest = load_manifest(write_manifest(tmp_path / "m.json", tiny_entry(
        data, name="flexivit-tiny-test", url="https://storage.googleapis.com/big_vision/flexivit/flexivit_tiny_i1k.npz",
        format="jax-npz/big_vision", config=config, train_resolution=56,
        preprocess={"size": [56, 56], "resize": "crop", "crop_pct": 0.95, "interpolation": "bilinear",
                    "mean": [0.5] * 3, "std": [0.5] * 3})))
    known = convert_jax(tmp_path / "flexivit_tiny_i1k.npz", tmp_path / "a.safetensors", catalog=manifest)
    assert known.config.pos_resize == "flexivit"
    assert "position embeddings resized 'flexivit' at other sizes, as the published checkpoint " \
           "'flexivit-tiny-test' is run" in known.notes
    given = convert_jax(tmp_path / "flexivit_tiny_i1k.npz", tmp_path / "b.safetensors", catalog=manifest,
                        pos_resize="bicubic")
    assert given.config.pos_resize == "bicubic"  # the option wins
    (tmp_path / "renamed.npz").write_bytes(data)
    assert convert_jax(tmp_path / "renamed.npz", tmp_path / "c.safetensors", catalog=manifest).config.pos_resize == \
        "bicubic"


def test_jax2torch_pos_resize_flexivit_on_the_command_line(flexivit, tmp_path, capsys) -> None:
    from vitconvert.cli import cli
    from vitconvert.cli.errors import run

    _, npz, _ = flexivit
    run(cli, ["jax2torch", str(npz), str(tmp_path / "f.safetensors"), "--pos-resize", "flexivit"])
    assert "pos resize  flexivit" in capsys.readouterr().out
    assert read_record(tmp_path / "f.safetensors").config.pos_resize == "flexivit"
