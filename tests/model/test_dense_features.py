"""Dense features of every model: `forward_features` is timm's (every token after the final norm, in the
order [class, registers, patches]), `get_intermediate_layers` is DINOv2's and DINOv3's (the patch tokens of
the last n blocks or of the blocks listed, normed, reshaped when asked) and agrees with timm's, at the
trained size and at a non-square one."""

from __future__ import annotations

import pytest
import torch
from helpers.dino import dinov2_get_intermediate_layers, dinov3_get_intermediate_layers
from helpers.timm_reference import timm_vit

from vitconvert import VitConvertError
from vitconvert.conversion.timm_models import timm_config
from vitconvert.model.loading import build_with_weights

# float32, the same operations in the same order as timm's blocks: measured 0 at both sizes for every
# variant; the bound leaves room for other machines' kernels.
ATOL = 1e-6
SMALL = dict(embed_dim=64, depth=3, num_heads=4)

# id: (timm name, timm kwargs beyond SMALL)
VARIANTS = {
    "class token": ("vit_tiny_patch16_224", {}),
    "registers": ("vit_tiny_patch16_224", dict(reg_tokens=4)),
    "no class token, fc_norm": ("vit_tiny_patch16_224", dict(class_token=False, global_pool="avg", fc_norm=True)),
    "DeiT distilled": ("deit_tiny_distilled_patch16_224", {}),
    "DINOv2 with registers, patch 14": ("vit_small_patch14_reg4_dinov2", dict(img_size=70)),
}
SIZES = {"trained": None, "non-square": (3, 5)}  # patches per side, or the trained size


@pytest.fixture(scope="module", params=list(VARIANTS), ids=list(VARIANTS))
def pair(request):
    name, kwargs = VARIANTS[request.param]
    theirs = timm_vit(name, **SMALL, **kwargs, dynamic_img_size=True).eval()
    ours = build_with_weights(timm_config(theirs, name), theirs.state_dict()).eval()
    return theirs, ours


def image(model, size: tuple[int, int] | None, batch: int = 2) -> torch.Tensor:
    """A seeded batch at `size` patches per side (None: the trained size)."""
    ph, pw = model.patch_embed.patch_size
    hw = model.patch_embed.img_size if size is None else (size[0] * ph, size[1] * pw)
    return torch.randn(batch, 3, *hw, generator=torch.Generator().manual_seed(3))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item() if a.numel() else 0.0


@pytest.mark.parametrize("size", list(SIZES.values()), ids=list(SIZES))
def test_forward_features_is_timms_every_token_after_the_final_norm(pair, size):
    theirs, ours = pair
    x = image(theirs, size)
    with torch.inference_mode():
        expected = theirs.forward_features(x)
        got = ours.forward_features(x)
    assert max_diff(got, expected) <= ATOL
    grid = x.shape[-2] // theirs.patch_embed.patch_size[0], x.shape[-1] // theirs.patch_embed.patch_size[1]
    assert got.shape[1] == theirs.num_prefix_tokens + grid[0] * grid[1]


OUTPUTS = {"normed tokens": (False, True), "raw, reshaped": (True, False)}  # (reshape, norm)


@pytest.mark.parametrize("size", list(SIZES.values()), ids=list(SIZES))
@pytest.mark.parametrize("n", [2, [0, 2], [-1, 0]], ids=["last 2", "listed", "negative"])
@pytest.mark.parametrize("output", list(OUTPUTS.values()), ids=list(OUTPUTS))
def test_intermediate_layers_are_timms(pair, size, n, output):
    reshape, norm = output
    theirs, ours = pair
    x = image(theirs, size)
    with torch.inference_mode():
        expected = theirs.get_intermediate_layers(x, n, reshape=reshape, norm=norm, return_prefix_tokens=True)
        got = ours.get_intermediate_layers(x, n, reshape, norm=norm)
        extra = ours.get_intermediate_layers(x, n, reshape, norm=norm, return_extra_tokens=True)
    if not theirs.num_prefix_tokens:  # timm then gives the patch tokens alone
        expected = [(patches, x.new_zeros(x.shape[0], 0, ours.config.embed_dim)) for patches in expected]
    assert len(got) == len(expected)
    has_class = ours.config.has_class_token
    for ours_patches, (patches, prefix), (same_patches, ours_extra) in zip(got, expected, extra, strict=True):
        assert max_diff(ours_patches, patches) <= ATOL and torch.equal(same_patches, ours_patches)
        assert max_diff(ours_extra, prefix[:, int(has_class):]) <= ATOL  # the prefix tokens after the class token
    if reshape:
        ph, pw = theirs.patch_embed.patch_size
        assert got[0].shape == (x.shape[0], ours.config.embed_dim, x.shape[-2] // ph, x.shape[-1] // pw)


@pytest.mark.parametrize("size", list(SIZES.values()), ids=list(SIZES))
@pytest.mark.parametrize("n", [1, 3, [0, 2]], ids=["last", "all", "listed"])
@pytest.mark.parametrize("output", list(OUTPUTS.values()), ids=list(OUTPUTS))
def test_intermediate_layers_follow_dinov2_and_dinov3(pair, size, n, output):
    """DINO's code (written out in helpers/dino.py) on timm's layers: patch tokens, class tokens and
    DINOv3's extra (register/storage) tokens, in DINO's tuple order, with DINO's defaults (norm=True)."""
    (reshape, norm), (theirs, ours) = output, pair
    if not ours.config.has_class_token or ours.config.distilled:
        pytest.skip("DINO's models have a class token, then registers, then patches")
    x = image(theirs, size)
    regs, patch = ours.config.reg_tokens, theirs.patch_embed.patch_size[0]
    with torch.inference_mode():
        v2 = dinov2_get_intermediate_layers(theirs, x, n, reshape, True, norm, num_register_tokens=regs,
                                            patch_size=patch)
        v3 = dinov3_get_intermediate_layers(theirs, x, n=n, reshape=reshape, return_class_token=True,
                                            return_extra_tokens=True, norm=norm, n_storage_tokens=regs,
                                            patch_size=patch)
        got_v2 = ours.get_intermediate_layers(x, n, reshape, True, norm)
        got_v3 = ours.get_intermediate_layers(x, n=n, reshape=reshape, return_class_token=True,
                                              return_extra_tokens=True, norm=norm)
        defaults = ours.get_intermediate_layers(x, n)
        plain = dinov2_get_intermediate_layers(theirs, x, n, num_register_tokens=regs, patch_size=patch)
    for ours_entry, entry in zip(got_v2, v2, strict=True):
        assert len(ours_entry) == 2 and all(max_diff(a, b) <= ATOL for a, b in zip(ours_entry, entry, strict=True))
    for ours_entry, entry in zip(got_v3, v3, strict=True):
        assert len(ours_entry) == 3 and all(max_diff(a, b) <= ATOL for a, b in zip(ours_entry, entry, strict=True))
    assert len(defaults) == len(plain) and all(max_diff(a, b) <= ATOL for a, b in zip(defaults, plain, strict=True))


def test_listed_blocks_come_in_block_order_as_dinos(pair):
    theirs, ours = pair
    x = image(theirs, None, batch=1)
    with torch.inference_mode():
        listed = ours.get_intermediate_layers(x, [2, 0])
        ordered = ours.get_intermediate_layers(x, [0, 2])
    assert all(torch.equal(a, b) for a, b in zip(listed, ordered, strict=True))


@pytest.mark.parametrize("n, message", [
    (0, "n=0: this model has 3 blocks, so the last 1 to 3 can be taken"),
    (4, "n=4: this model has 3 blocks, so the last 1 to 3 can be taken"),
    ([3], r"blocks \[3\]: give distinct indices from -3 to 2 \(this model has 3 blocks\)"),
    ([1, -2], r"blocks \[1, -2\]: give distinct indices from -3 to 2"),
    ([], r"blocks \[\]: give distinct indices"),
])
def test_blocks_that_do_not_exist_are_refused(pair, n, message):
    theirs, ours = pair
    with pytest.raises(VitConvertError, match=message):
        ours.get_intermediate_layers(image(theirs, None, batch=1), n)


def test_a_class_token_asked_of_a_model_without_one_is_refused():
    theirs = timm_vit("vit_tiny_patch16_224", **SMALL, class_token=False, global_pool="avg").eval()
    ours = build_with_weights(timm_config(theirs, "vit_tiny_patch16_224"), theirs.state_dict()).eval()
    with pytest.raises(VitConvertError, match="return_class_token: this model has no class token"):
        ours.get_intermediate_layers(image(theirs, None, batch=1), return_class_token=True)
