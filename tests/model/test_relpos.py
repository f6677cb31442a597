"""BEiT's relative position bias (model/relpos.py): the index is the one timm and transformers compute, each
resampling rule is its source's own (timm's resize_rel_pos_bias_table, transformers' BeitRelativePositionBias),
and our ViT with the tables runs at any input size as it does at that size loaded for it."""

from __future__ import annotations

import typing

import pytest
import torch

from vitconvert.core.config import REL_POS_RESIZES, RelPosResize, ViTConfig
from vitconvert.core.errors import VitConvertError
from vitconvert.core.param_shapes import param_shapes, rel_pos_table_rows
from vitconvert.model.loading import at_size, build_with_weights
from vitconvert.model.relpos import RESIZERS, bias_from_table, relative_position_index, resize_table
from vitconvert.model.vit import VisionTransformer

# Observed: timm's rule computes the same interpolation in float32 (ours in float64 from its float32 positions):
# at most 4.8e-7 apart on N(0, 1) tables. transformers' is the same float32 call: 0.
TIMM_RULE_ATOL = 1e-6
# Our model at another size, resampling at forward, against the same model loaded for that size: one function
# makes both tables, so only the float rounding of two runs differs. Observed 0.
SAME_PATH_ATOL = 1e-6

GRIDS = [(1, 1), (2, 3), (4, 4), (14, 14), (5, 2)]
# (stored grid, new grid): enlarging, shrinking, to an oblong grid, a tiny grid.
RESIZES = [((14, 14), (24, 24)), ((14, 14), (7, 7)), ((4, 4), (6, 9)), ((24, 24), (14, 14)), ((2, 2), (3, 3))]


def table(grid: tuple[int, int], heads: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(rel_pos_table_rows(grid), heads, generator=torch.Generator().manual_seed(seed))


def test_every_rule_a_config_can_name_is_implemented() -> None:
    assert set(RESIZERS) == set(REL_POS_RESIZES) == set(typing.get_args(RelPosResize))


@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_the_index_is_the_one_timm_and_transformers_compute(grid: tuple[int, int]) -> None:
    from timm.models.beit import gen_relative_position_index
    from transformers.models.beit.modeling_beit import BeitRelativePositionBias

    ours = relative_position_index(grid)
    assert torch.equal(ours, gen_relative_position_index(grid))
    assert torch.equal(ours, BeitRelativePositionBias.generate_relative_position_index(grid))
    assert ours.max().item() == rel_pos_table_rows(grid) - 1  # the last row: the class token on itself


@pytest.mark.parametrize("old, new", RESIZES, ids=str)
def test_timms_rule_is_its_resize_rel_pos_bias_table(old: tuple[int, int], new: tuple[int, int]) -> None:
    from timm.layers import resize_rel_pos_bias_table

    stored = table(old)
    theirs = resize_rel_pos_bias_table(stored, new_window_size=new, new_bias_shape=(rel_pos_table_rows(new), 4),
                                       old_window_size=old)
    ours = resize_table(stored, old, new, "timm")
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= TIMM_RULE_ATOL


@pytest.mark.parametrize("old, new", [(o, n) for o, n in RESIZES if o[0] == o[1]], ids=str)
def test_transformers_rule_is_its_beit_relative_position_bias(old: tuple[int, int], new: tuple[int, int]) -> None:
    from transformers import BeitConfig
    from transformers.models.beit.modeling_beit import BeitRelativePositionBias

    module = BeitRelativePositionBias(BeitConfig(image_size=old[0] * 8, patch_size=8, num_attention_heads=4))
    with torch.no_grad():
        module.relative_position_bias_table.copy_(table(old))
        theirs = module(new, interpolate_pos_encoding=True, dim_size=new[0] * new[1] + 1)
    ours = bias_from_table(resize_table(module.relative_position_bias_table.detach(), old, new, "transformers"), new)
    assert torch.equal(ours, theirs)


def test_the_two_rules_differ_where_timms_keeps_the_near_offsets() -> None:
    # timm's progression starts with a step of 1: the offsets next to a patch keep their stored biases, and the
    # far ones are stretched; transformers' bilinear resize scales every offset alike. Both keep the class rows.
    old, new = (14, 14), (24, 24)
    stored = table(old)

    def row(grid: tuple[int, int], dy: int, dx: int) -> int:
        return (dy + grid[0] - 1) * (2 * grid[1] - 1) + dx + grid[1] - 1

    timm_rule, hf_rule = (resize_table(stored, old, new, rule) for rule in REL_POS_RESIZES)
    for dy, dx in ((0, 1), (1, 0), (-1, -1), (0, 0)):
        assert torch.allclose(timm_rule[row(new, dy, dx)], stored[row(old, dy, dx)], atol=1e-6)
    assert not torch.allclose(hf_rule[row(new, 0, 1)], stored[row(old, 0, 1)], atol=1e-3)
    assert (timm_rule - hf_rule).abs().max().item() > 0.1
    for resized in (timm_rule, hf_rule):
        assert torch.equal(resized[-3:], stored[-3:])


def test_a_table_of_the_wrong_size_is_one_clear_error() -> None:
    with pytest.raises(VitConvertError, match=r"for a 14x14 grid has 732 rows, got shape \(700, 4\)") as e:
        resize_table(torch.zeros(700, 4), (14, 14), (16, 16), "timm")
    assert "\n" not in str(e.value)
    with pytest.raises(VitConvertError, match="must be one of 'timm', 'transformers'"):
        resize_table(table((2, 2)), (2, 2), (3, 3), "bicubic")


BEIT_CFG = ViTConfig(img_size=(64, 64), patch_size=16, embed_dim=32, depth=2, num_heads=4, mlp_dim=64, num_classes=5,
                     pool="gap", fc_norm=True, class_token=True, k_bias=False, layer_scale=True, pos_embed="none",
                     rel_pos_bias=True, shared_rel_pos_bias=True)


def random_beit(cfg: ViTConfig, seed: int = 0) -> VisionTransformer:
    from helpers.beit import beit_numbers_

    return beit_numbers_(VisionTransformer(cfg), seed).eval()


def test_the_tables_are_parameters_where_param_shapes_says() -> None:
    model = VisionTransformer(BEIT_CFG)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == param_shapes(BEIT_CFG)
    assert shapes["rel_pos_bias.relative_position_bias_table"] == (7 * 7 + 3, 4)
    assert shapes["blocks.1.attn.relative_position_bias_table"] == (7 * 7 + 3, 4)
    assert "blocks.0.attn.relative_position_index" not in shapes  # computed from the grid, never stored


@pytest.mark.parametrize("rule", REL_POS_RESIZES)
@pytest.mark.parametrize("size", [(96, 96), (48, 80)], ids=str)
def test_the_model_at_another_size_is_the_model_loaded_for_it(rule: str, size: tuple[int, int]) -> None:
    cfg = BEIT_CFG.replace(rel_pos_resize=rule)
    model = random_beit(cfg)
    fixed = build_with_weights(*at_size(cfg, model.state_dict(), size))
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        moving, loaded = model(x), fixed(x)
        again = model(x)  # the resampled tables are kept per grid
    assert (moving - loaded).abs().max().item() <= SAME_PATH_ATOL
    assert torch.equal(moving, again)


def test_a_gradient_reaches_the_stored_tables_at_another_size() -> None:
    model = random_beit(BEIT_CFG).train()
    model(torch.randn(1, 3, 96, 96)).sum().backward()
    for name in ("rel_pos_bias.relative_position_bias_table", "blocks.0.attn.relative_position_bias_table"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad[:-3].abs().sum() > 0 and grad[-3:].abs().sum() > 0


@pytest.mark.parametrize("bad, message", [
    (dict(class_token=False, pool="gap"), "needs the class token"),
    (dict(reg_tokens=1), "no register or distillation token"),
])
def test_a_table_needs_exactly_the_class_token(bad: dict, message: str) -> None:
    with pytest.raises(VitConvertError, match=message):
        BEIT_CFG.replace(**bad)
