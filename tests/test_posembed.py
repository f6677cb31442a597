"""Position embeddings at another grid are timm's `resample_abs_pos_embed`, bit for bit."""

from __future__ import annotations

import pytest
import torch
from helpers.vit_weights import TINY, our_vit
from timm.layers import resample_abs_pos_embed

from vitconvert.model.loading import at_size
from vitconvert.model.posembed import resample_pos_embed


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
