"""RoPE (model/rope.py) and the attention context (model/attn_context.py): the tables of each variant against
timm's own rotary modules (timm/layers/pos_embed_sincos.py) at square and non-square grids, the rotation's
defining property written out, the prefix tokens left alone, the tables made once per grid, attention maps with
RoPE against timm's softmax weights, and the configs that cannot be built."""

from __future__ import annotations

import pytest
import torch
from helpers.published_layouts import fill_random_
from helpers.timm_eva import reduced_eva, timm_eva
from timm.layers.pos_embed_sincos import RotaryEmbeddingCat, RotaryEmbeddingDinoV3, RotaryEmbeddingMixed

from vitconvert import VitConvertError
from vitconvert.conversion.timm_eva import to_our_names
from vitconvert.conversion.timm_models import timm_config
from vitconvert.core.config import SINCE_ROPE, ViTConfig
from vitconvert.model import rope as rope_module
from vitconvert.model.attn_context import AttnContext, rotate_qk
from vitconvert.model.rope import Rope
from vitconvert.model.vit import VisionTransformer

HEAD_DIM = 32
BASE = ViTConfig(embed_dim=2 * HEAD_DIM, depth=2, num_heads=2, mlp_dim=64, num_classes=0)
GRIDS = [(4, 4), (3, 7)]
# Our tables against timm's: the same float32 operations in the same order. Observed: 0 (to the bit).
TABLE_ATOL = 1e-6


def ours(cfg: ViTConfig, grid: tuple[int, int]) -> torch.Tensor:
    """Our [sin, cos] rows of the patch tokens, timm's concatenated layout."""
    sin, cos = Rope(cfg).tables(grid, torch.device("cpu"))
    p = cfg.num_prefix_tokens
    return torch.cat([sin[..., p:, :], cos[..., p:, :]], dim=-1)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("ref", [None, (16, 16)])
@pytest.mark.parametrize("offset", [0.0, 1.0])
@pytest.mark.parametrize("indexing", ["ij", "xy"])
@pytest.mark.parametrize("half", [False, True])
def test_cat_tables_are_timms_rotary_embedding_cat(grid, ref, offset, indexing, half) -> None:
    cfg = BASE.replace(rope="cat", rope_temperature=10000.0, rope_ref_grid=ref, rope_grid_offset=offset,
                       rope_grid_indexing=indexing, rope_rotate_half=half)
    theirs = RotaryEmbeddingCat(HEAD_DIM, temperature=10000.0, in_pixels=False, ref_feat_shape=ref,
                                grid_offset=offset, grid_indexing=indexing, rotate_half=half).get_embed(list(grid))
    assert torch.allclose(ours(cfg, grid), theirs, atol=TABLE_ATOL, rtol=0)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("normalize", ["separate", "min", "max"])
@pytest.mark.parametrize("indexing", ["ij", "xy"])
@pytest.mark.parametrize("half", [False, True])
def test_dinov3_tables_are_timms_rotary_embedding_dinov3(grid, normalize, indexing, half) -> None:
    cfg = BASE.replace(rope="dinov3", rope_temperature=100.0, rope_normalize_coords=normalize,
                       rope_grid_indexing=indexing, rope_rotate_half=half, rope_grid_offset=0.25)
    theirs = RotaryEmbeddingDinoV3(HEAD_DIM, temperature=100.0, normalize_coords=normalize, grid_offset=0.25,
                                   grid_indexing=indexing, rotate_half=half).get_embed(list(grid))
    assert torch.allclose(ours(cfg, grid), theirs, atol=TABLE_ATOL, rtol=0)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("indexing", ["xy", "ij"])
def test_mixed_tables_are_timms_rotary_embedding_mixed_with_its_learned_frequencies(grid, indexing) -> None:
    cfg = BASE.replace(rope="mixed", rope_temperature=10.0, rope_grid_indexing=indexing)
    theirs = RotaryEmbeddingMixed(BASE.embed_dim, depth=2, num_heads=2, temperature=10.0, grid_indexing=indexing)
    with torch.no_grad():
        theirs.freqs.normal_(generator=torch.Generator().manual_seed(0))
    rope = Rope(cfg)
    with torch.no_grad():
        rope.freqs.copy_(theirs.freqs)
        sin, cos = rope.tables(grid, torch.device("cpu"))
        expected = theirs.get_embed(list(grid))  # (depth, heads, N, 2 * head_dim)
    got = torch.cat([sin[..., 1:, :], cos[..., 1:, :]], dim=-1)  # past the class token
    assert torch.allclose(got, expected, atol=TABLE_ATOL, rtol=0)


def test_the_attention_logit_between_two_rotated_tokens_depends_only_on_their_offset() -> None:
    """RoPE's defining property, from the rotation alone: q at position a and k at b give q . k a function of
    a - b (cat on plain patch indices), the same whatever a and b are."""
    cfg = BASE.replace(rope="cat", rope_temperature=100.0, class_token=False, pool="gap")
    sin, cos = Rope(cfg).tables((5, 5), torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, HEAD_DIM, generator=g), torch.randn(1, 1, 1, HEAD_DIM, generator=g)
    Q, K = rotate_qk(q.expand(1, 1, 25, HEAD_DIM), k.expand(1, 1, 25, HEAD_DIM), AttnContext((sin, cos)))
    logits = (Q[0, 0] @ K[0, 0].T).reshape(5, 5, 5, 5)  # (row a, col a, row b, col b)
    # Offset (+1, +2) from (0, 0) -> (1, 2) and from (2, 1) -> (3, 3): equal; another offset: not.
    assert torch.allclose(logits[1, 2, 0, 0], logits[3, 3, 2, 1], atol=1e-5)
    assert not torch.allclose(logits[1, 2, 0, 0], logits[3, 3, 0, 0], atol=1e-3)


def test_the_prefix_tokens_are_not_rotated() -> None:
    cfg = BASE.replace(rope="dinov3", reg_tokens=4)
    sin, cos = Rope(cfg).tables((3, 7), torch.device("cpu"))
    assert sin.shape == (5 + 21, HEAD_DIM)
    assert torch.equal(sin[:5], torch.zeros(5, HEAD_DIM)) and torch.equal(cos[:5], torch.ones(5, HEAD_DIM))
    q = torch.randn(1, 2, 26, HEAD_DIM)
    rotated, _ = rotate_qk(q, q, AttnContext((sin, cos), True))
    assert torch.equal(rotated[:, :, :5], q[:, :, :5]) and not torch.allclose(rotated[:, :, 5:], q[:, :, 5:])


def test_rope_tables_are_made_once_per_grid_not_per_block_or_call(monkeypatch) -> None:
    calls = []
    real = rope_module.fixed_angles
    monkeypatch.setattr(rope_module, "fixed_angles", lambda cfg, grid: calls.append(grid) or real(cfg, grid))
    model = VisionTransformer(BASE.replace(rope="cat", img_size=(64, 64), patch_size=16)).eval()
    with torch.inference_mode():
        for size in [(64, 64), (64, 64), (48, 80), (64, 64), (48, 80)]:
            model(torch.randn(1, 3, *size))
        model.attention_maps(torch.randn(1, 3, 64, 64))
    assert calls == [(4, 4), (3, 5)]


def test_learned_frequencies_are_tabled_once_until_they_change(monkeypatch) -> None:
    calls = []
    real = rope_module.mixed_angles
    monkeypatch.setattr(rope_module, "mixed_angles", lambda f, cfg, grid: calls.append(grid) or real(f, cfg, grid))
    model = fill_random_(VisionTransformer(BASE.replace(rope="mixed", img_size=(64, 64))), 0).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        model(x)
        model.rope.freqs.add_(0.5)  # an optimizer step or a load: new tables
        after = model(x)
    assert calls == [(4, 4), (4, 4)] and not torch.allclose(before, after)
    # With a gradient the tables are in the graph: the frequencies learn.
    model.train()
    model(x).sum().backward()
    assert model.rope.freqs.grad is not None and model.rope.freqs.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["vit_small_patch16_rope_mixed_224", "vit_small_patch16_dinov3",
                                  "eva02_small_patch14_224", "vit_base_patch16_sapiens2"])
def test_attention_maps_of_rope_models_are_timms_softmax_weights(name: str) -> None:
    """timm's unfused attention passes its softmax weights to attn_drop: hooked there, they are the reference."""
    kwargs = reduced_eva(name)
    reference = timm_eva(name, **kwargs)
    model = VisionTransformer(timm_config(reference, name)).eval()
    model.load_state_dict(to_our_names(reference.state_dict(), torch.cat))
    probs = []
    for block in reference.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda _m, inputs, _out: probs.append(inputs[0]))
    s = kwargs["img_size"]
    x = torch.randn(2, 3, *((s, s) if isinstance(s, int) else s))
    with torch.inference_mode():
        reference(x)
        maps = model.attention_maps(x)
    assert len(maps) == len(probs) == 2
    for ours_map, theirs in zip(maps, probs, strict=True):
        assert (ours_map - theirs).abs().max().item() <= 1e-6  # observed: <= 2e-7


def test_the_rope_fields_are_left_out_of_the_json_of_models_without_them() -> None:
    assert not set(SINCE_ROPE) & set(BASE.to_dict())
    cfg = BASE.replace(rope="cat", rope_ref_grid=(16, 16), kv_heads=(2, 1), k_bias=False)
    assert ViTConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["rope_ref_grid"] == [16, 16]


@pytest.mark.parametrize("changes, message", [
    (dict(rope="cat", embed_dim=60, num_heads=2), "head_dim 30 must be a multiple of 4"),
    (dict(k_bias=False, qkv_bias=False), "k_bias=false"),
    (dict(kv_heads=(2,)), "kv_heads needs one count per block"),
    (dict(kv_heads=(2, 3), num_heads=4, embed_dim=64), "kv_heads must divide num_heads 4"),
    (dict(rope="mixed", rope_rotate_half=True), "rope='mixed' rotates interleaved pairs"),
    (dict(rope_ref_grid=(16, 16)), "rope_ref_grid scales the positions of rope='cat' only"),
    (dict(rope="cat", block="parallel"), "RoPE is built in pre-norm and res-post blocks"),
    (dict(rope="spiral"), "rope must be"),
])
def test_a_rope_config_that_cannot_be_built_is_refused(changes, message) -> None:
    with pytest.raises(VitConvertError, match=message):
        BASE.replace(**changes)
