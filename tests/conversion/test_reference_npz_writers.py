"""The reference writers are faithful: the .npz files tests/helpers/published_layouts.py generates are the
published JAX layouts (their exact key sets and shapes), and timm's own npz loader
(``timm.models.vision_transformer._load_weights``) reads each back into a fresh timm model that
reproduces the source model exactly; the helper's reference numerics (JAX's) and random models are
checked here too. This specifies a test helper, not a package module: test_jax.py's parity cases rest on it."""
import copy
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import published_layouts as pl
from timm.layers import StdConv2dSame
from timm.layers.padding import pad_same
from timm.models.vision_transformer import _load_weights
from torch import nn

OLD = ('MultiHeadDotProductAttention_1', 'LayerNorm_2', 'MlpBlock_3')
LINEN = ('MultiHeadDotProductAttention_0', 'LayerNorm_1', 'MlpBlock_0')


def logits(model, x):
    with torch.no_grad():
        return model(x).float()


def assert_same_state(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def timm_load(arch, path, seed=1, **overrides):
    """A freshly built timm model of ``arch`` (other random init) loaded by timm's npz loader."""
    fresh = pl.random_timm_vit(arch, seed=seed, **overrides)
    _load_weights(fresh, str(path))
    return fresh


# ------------------------------------------------------------------------------------------
# every layout x model kind: timm's loader reproduces the source model
# ------------------------------------------------------------------------------------------
ROUND_TRIP = [
    ('vit_jax', 'tiny'),
    ('opt_target', 'tiny'),
    ('vit_jax', 'tiny_gap'),
    ('big_vision', 'tiny_big_vision'),
    ('big_vision', 'tiny_big_vision_token'),
    ('big_vision_scanned', 'tiny_big_vision'),
    ('big_vision_scanned', 'tiny_big_vision_token'),
    ('vit_jax', 'tiny_hybrid_stem'),
    ('vit_jax', 'tiny_hybrid_stages'),
    ('opt_target', 'tiny_hybrid_stages'),
    ('vit_jax', 'timm_r_ti16'),
    ('vit_jax', 'timm_r26_s32'),
]


@pytest.mark.parametrize('layout,arch', ROUND_TRIP, ids=[f'{a}-{b}' for a, b in ROUND_TRIP])
def test_timm_loader_reads_the_file_back_into_the_source_model(layout, arch, tmp_path):
    src = pl.random_timm_vit(arch, seed=0)
    path = tmp_path / 'w.npz'
    pl.write_npz(src, path, layout)
    fresh = timm_load(arch, path)
    assert_same_state(fresh, src)          # every tensor, bit for bit
    x = pl.example_input(src)
    want = logits(src, x)
    assert (logits(fresh, x) - want).abs().max() <= 1e-6
    # the reference helper (NaN-filled template, so every parameter must come from the file)
    got = pl.reference_logits(path, src, x, gelu=None, jax=None)
    assert (got - want).abs().max() <= 1e-6


def test_random_init_differs_so_the_round_trip_is_not_vacuous():
    a, b = pl.random_timm_vit('tiny_hybrid_stem', seed=0), pl.random_timm_vit('tiny_hybrid_stem', seed=1)
    for (n, pa), pb in zip(a.named_parameters(), b.parameters(), strict=False):
        assert not torch.equal(pa, pb), n


# ------------------------------------------------------------------------------------------
# exact key sets and shapes
# ------------------------------------------------------------------------------------------
def expected_vit(layout, *, d=32, h=2, m=64, n=16, k=10, depth=2, p=8, cin=3, cls=True):
    prefix = {'vit_jax': '', 'opt_target': 'opt/target/', 'linen': '',
              'big_vision': 'params/', 'big_vision_scanned': 'params/'}[layout]
    mha, ln2, mlp = OLD if layout in ('vit_jax', 'opt_target') else LINEN
    bv = layout.startswith('big_vision')
    e = {'embedding/kernel': (p, p, cin, d), 'embedding/bias': (d,),
         'Transformer/encoder_norm/scale': (d,), 'Transformer/encoder_norm/bias': (d,),
         'head/kernel': (d, k), 'head/bias': (k,)}
    if cls:
        e['cls'] = (1, 1, d)
    if bv:
        e['pos_embedding'] = (1, n, d)
    else:
        e['Transformer/posembed_input/pos_embedding'] = (1, n + cls, d)
    blk = {'LayerNorm_0/scale': (d,), 'LayerNorm_0/bias': (d,),
           f'{ln2}/scale': (d,), f'{ln2}/bias': (d,),
           f'{mha}/out/kernel': (h, d // h, d), f'{mha}/out/bias': (d,),
           f'{mlp}/Dense_0/kernel': (d, m), f'{mlp}/Dense_0/bias': (m,),
           f'{mlp}/Dense_1/kernel': (m, d), f'{mlp}/Dense_1/bias': (d,)}
    for q in ('query', 'key', 'value'):
        blk[f'{mha}/{q}/kernel'] = (d, h, d // h)
        blk[f'{mha}/{q}/bias'] = (h, d // h)
    if layout == 'big_vision_scanned':
        e.update({f'Transformer/encoderblock/{kk}': (depth,) + s for kk, s in blk.items()})
    else:
        e.update({f'Transformer/encoderblock_{i}/{kk}': s for i in range(depth) for kk, s in blk.items()})
    return {prefix + kk: s for kk, s in e.items()}


def shapes_in(path):
    with np.load(path, allow_pickle=False) as f:
        return {kk: f[kk].shape for kk in f.files}


KEYSETS = [('vit_jax', 'tiny'), ('opt_target', 'tiny'), ('linen', 'tiny'), ('vit_jax', 'tiny_gap'),
           ('big_vision', 'tiny_big_vision_token'), ('big_vision', 'tiny_big_vision'),
           ('big_vision_scanned', 'tiny_big_vision')]


@pytest.mark.parametrize('layout,arch', KEYSETS, ids=[f'{a}-{b}' for a, b in KEYSETS])
def test_key_set_and_shapes_are_exactly_the_published_ones(layout, arch, tmp_path):
    src = pl.random_timm_vit(arch)
    pl.write_npz(src, tmp_path / 'w.npz', layout)
    assert shapes_in(tmp_path / 'w.npz') == expected_vit(layout, cls=src.cls_token is not None)


def test_file_is_an_uncompressed_savez_with_slash_keys_and_c_order_float32(tmp_path):
    path = tmp_path / 'w.npz'
    pl.write_npz(pl.random_timm_vit('tiny'), path, 'vit_jax')
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
    assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
    assert 'Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel.npy' in {i.filename for i in infos}
    with np.load(path, allow_pickle=False) as f:
        for kk in f.files:
            assert f[kk].dtype == np.float32 and f[kk].flags['C_CONTIGUOUS'], kk


def hybrid_stages_expected():
    """tiny_hybrid_stages: stem 32 ch, stage widths 4F = 128, 256 (F = 32, 64), units (2, 1)."""
    e = {'conv_root/kernel': (7, 7, 3, 32), 'gn_root/scale': (1, 1, 1, 32), 'gn_root/bias': (1, 1, 1, 32)}

    def unit(name, cin, f, proj, four_d):
        gshape = (lambda c: (1, 1, 1, c)) if four_d else (lambda c: (c,))
        e.update({f'{name}/conv1/kernel': (1, 1, cin, f), f'{name}/conv2/kernel': (3, 3, f, f),
                  f'{name}/conv3/kernel': (1, 1, f, 4 * f)})
        for r, c in ((1, f), (2, f), (3, 4 * f)):
            e[f'{name}/gn{r}/scale'] = e[f'{name}/gn{r}/bias'] = gshape(c)
        if proj:
            e[f'{name}/conv_proj/kernel'] = (1, 1, cin, 4 * f)
            e[f'{name}/gn_proj/scale'] = e[f'{name}/gn_proj/bias'] = gshape(4 * f)

    unit('block1/unit1', 32, 32, True, True)
    unit('block1/unit2', 128, 32, False, False)
    unit('block2/unit1', 128, 64, True, True)
    return e


def test_hybrid_file_has_resnet_keys_raw_hwio_kernels_and_some_1x1x1xC_groupnorms(tmp_path):
    src = pl.random_timm_vit('tiny_hybrid_stages')
    values = pl.write_npz(src, tmp_path / 'w.npz', 'vit_jax')
    want = expected_vit('vit_jax', p=1, cin=256)
    want.update(hybrid_stages_expected())
    assert shapes_in(tmp_path / 'w.npz') == want
    # kernels are stored raw (not standardized): HWIO of timm's weight as-is
    w = src.patch_embed.backbone.stages[1].blocks[0].conv2.weight.detach().numpy()
    np.testing.assert_array_equal(values['block2/unit1/conv2/kernel'], w.transpose(2, 3, 1, 0))


def test_hybrid_stem_only_file_has_root_keys_and_no_blocks(tmp_path):
    pl.write_npz(pl.random_timm_vit('tiny_hybrid_stem'), tmp_path / 'w.npz', 'vit_jax')
    want = expected_vit('vit_jax', p=2, cin=32)
    want.update({'conv_root/kernel': (7, 7, 3, 32), 'gn_root/scale': (1, 1, 1, 32),
                 'gn_root/bias': (1, 1, 1, 32)})
    assert shapes_in(tmp_path / 'w.npz') == want


@pytest.mark.parametrize('gn_4d', ['none', 'all'])
def test_groupnorm_storage_shape_does_not_change_what_timm_loads(gn_4d, tmp_path):
    src = pl.random_timm_vit('tiny_hybrid_stages')
    values = pl.write_npz(src, tmp_path / 'w.npz', 'vit_jax', gn_4d=gn_4d)
    gn_shapes = {v.ndim for kk, v in values.items() if '/gn' in kk}
    assert gn_shapes == ({1} if gn_4d == 'none' else {4})
    assert_same_state(timm_load('tiny_hybrid_stages', tmp_path / 'w.npz'), src)


def test_scanned_layout_stacks_the_unscanned_layers_on_a_leading_depth_axis(tmp_path):
    src = pl.random_timm_vit('tiny_big_vision', depth=3)
    flat = pl.write_npz(src, tmp_path / 'a.npz', 'big_vision')
    scanned = pl.write_npz(src, tmp_path / 'b.npz', 'big_vision_scanned')
    p = 'params/Transformer/encoderblock'
    block_keys = [kk for kk in scanned if kk.startswith(p + '/')]
    assert len(block_keys) == 16
    for kk in block_keys:
        assert scanned[kk].shape[0] == 3
        for i in range(3):
            np.testing.assert_array_equal(scanned[kk][i], flat[kk.replace(p, f'{p}_{i}')])
    rest = {kk for kk in scanned if not kk.startswith(p + '/')}
    assert rest == {kk for kk in flat if not kk.startswith(p + '_')}
    assert_same_state(timm_load('tiny_big_vision', tmp_path / 'b.npz', depth=3), src)


def test_linen_is_vit_jax_with_renamed_block_submodules(tmp_path):
    # timm's loader only switches to the Linen numbering for params/ or top-level pos_embedding
    # files, so linen is checked against vit_jax and then loaded by timm after renaming back.
    src = pl.random_timm_vit('tiny')
    old = pl.write_npz(src, tmp_path / 'old.npz', 'vit_jax')
    linen = pl.write_npz(src, tmp_path / 'linen.npz', 'linen')

    def to_old(key):
        for a, b in zip(LINEN, OLD, strict=False):
            key = key.replace(f'/{a}/', f'/{b}/')
        return key

    assert all('_3/' not in kk and 'MultiHeadDotProductAttention_1' not in kk for kk in linen)
    renamed = {to_old(kk): v for kk, v in linen.items()}
    assert renamed.keys() == old.keys()
    for kk in old:
        np.testing.assert_array_equal(renamed[kk], old[kk])
    with open(tmp_path / 'back.npz', 'wb') as f:
        np.savez(f, **renamed)
    assert_same_state(timm_load('tiny', tmp_path / 'back.npz'), src)


# ------------------------------------------------------------------------------------------
# pre_logits, zero head, bfloat16
# ------------------------------------------------------------------------------------------
def manual_pre_logits_logits(src, x, pre, head):
    with torch.no_grad():
        feats = src.forward_head(src.forward_features(x), pre_logits=True)
        h = torch.tanh(feats @ torch.from_numpy(pre[0]) + torch.from_numpy(pre[1]))
        if head is None:
            return src.head(h)
        return h @ torch.from_numpy(head[0]) + torch.from_numpy(head[1])


def test_pre_logits_file_timm_drops_the_representation_and_reference_applies_it(tmp_path):
    src = pl.random_timm_vit('tiny')
    pre, head = pl.random_pre_logits(src, seed=3)
    assert head is None
    path = tmp_path / 'w.npz'
    pl.write_npz(src, path, 'vit_jax', pre_logits=pre)
    shapes = shapes_in(path)
    assert shapes['pre_logits/kernel'] == (32, 32) and shapes['pre_logits/bias'] == (32,)
    assert shapes['head/kernel'] == (32, 10)
    assert_same_state(timm_load('tiny', path), src)        # timm ignores pre_logits
    x = pl.example_input(src)
    want = manual_pre_logits_logits(src, x, pre, None)
    got = pl.reference_logits(path, src, x, gelu=None, jax=None)
    assert (got - want).abs().max() <= 1e-6
    assert (got - logits(src, x)).abs().max() > 1e-2        # the representation layer matters


def test_pre_logits_of_another_size_gives_head_kernel_r_by_k(tmp_path):
    src = pl.random_timm_vit('tiny_gap')
    pre, head = pl.random_pre_logits(src, 48, seed=3)
    path = tmp_path / 'w.npz'
    pl.write_npz(src, path, 'vit_jax', pre_logits=pre, head=head)
    shapes = shapes_in(path)
    assert shapes['pre_logits/kernel'] == (32, 48) and shapes['head/kernel'] == (48, 10)
    x = pl.example_input(src)
    got = pl.reference_logits(path, src, x, gelu=None, jax=None)
    assert (got - manual_pre_logits_logits(src, x, pre, head)).abs().max() <= 1e-6
    with pytest.raises(ValueError, match='head'):
        pl.write_npz(src, tmp_path / 'x.npz', 'vit_jax', pre_logits=pre)


def test_zero_head_file_has_all_zero_head_and_zero_logits(tmp_path):
    src = pl.random_timm_vit('tiny')
    normal = pl.write_npz(src, tmp_path / 'a.npz', 'vit_jax')
    zero = pl.write_npz(src, tmp_path / 'b.npz', 'vit_jax', zero_head=True)
    assert normal.keys() == zero.keys()
    for kk in zero:
        if kk.startswith('head/'):
            assert zero[kk].shape == normal[kk].shape and not zero[kk].any()
        else:
            np.testing.assert_array_equal(zero[kk], normal[kk])
    got = pl.reference_logits(tmp_path / 'b.npz', src, pl.example_input(src))
    assert got.shape == (2, 10) and not got.any()


def torch_bf16_bits(a: np.ndarray) -> np.ndarray:
    return torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(torch.bfloat16).view(torch.int16).numpy()


def test_bfloat16_conversion_rounds_to_nearest_even_like_torch():
    special = np.array([0x3F808000, 0x3F818000, 0x3F808001, 0x3F807FFF, 0x7F7FFFFF, 0xFF7FFFFF,
                        0x80000000, 0x00000000, 0x7F800000, 0xFF800000, 0x00000001, 0x807FFFFF,
                        0x0000FFFF, 0x00018000], dtype=np.uint32)
    rnd = np.random.default_rng(0).integers(0, 2 ** 32, 20000, dtype=np.uint64).astype(np.uint32)
    f = np.concatenate([special, rnd]).view(np.float32)
    f = f[~np.isnan(f)]
    bits = pl.float32_to_bfloat16_bits(f)
    assert bits.dtype.str == '|V2'
    np.testing.assert_array_equal(bits.view(np.int16), torch_bf16_bits(f))
    assert pl.float32_to_bfloat16_bits(np.float32([1.0 + 2 ** -8])).view('<u2')[0] == 0x3F80   # tie -> even
    back = pl.bfloat16_bits_to_float32(bits)
    np.testing.assert_array_equal(back, torch.from_numpy(f).to(torch.bfloat16).float().numpy())
    nan = pl.bfloat16_bits_to_float32(pl.float32_to_bfloat16_bits(np.float32([np.nan, -np.nan])))
    assert np.isnan(nan).all()


@pytest.mark.parametrize('arch', ['tiny', 'tiny_hybrid_stem'])
def test_bfloat16_file_stores_v2_bits_and_reference_uses_their_float32_values(arch, tmp_path):
    src = pl.random_timm_vit(arch)
    f32 = pl.write_npz(src, tmp_path / 'f32.npz', 'vit_jax')
    values = pl.write_npz(src, tmp_path / 'bf16.npz', 'vit_jax', bfloat16=True)
    with np.load(tmp_path / 'bf16.npz', allow_pickle=False) as f:
        assert f.files == list(f32)
        for kk in f.files:
            raw = f[kk]
            assert raw.dtype.str == '|V2' and raw.shape == f32[kk].shape, kk
            np.testing.assert_array_equal(raw.view(np.int16), torch_bf16_bits(f32[kk]))
            np.testing.assert_array_equal(values[kk], pl.bfloat16_bits_to_float32(raw))
    # independent reference: the source model with its parameters rounded by torch
    rounded = copy.deepcopy(src)
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    x = pl.example_input(src)
    want = logits(rounded, x)
    got = pl.reference_logits(tmp_path / 'bf16.npz', src, x, gelu=None, jax=None)
    assert (got - want).abs().max() <= 1e-6
    assert (got - logits(src, x)).abs().max() > 1e-5      # rounding really happened


# ------------------------------------------------------------------------------------------
# numerics helpers and the default (JAX) reference
# ------------------------------------------------------------------------------------------
def test_jax_std_conv_is_mean_centred_over_std_plus_1e_5():
    torch.manual_seed(0)
    conv = StdConv2dSame(8, 16, 3, stride=2, eps=1e-8)
    with torch.no_grad():
        conv.weight.mul_(1e-3)            # tiny std: eps placement matters
    x = torch.randn(2, 8, 9, 9)
    timm_out = conv(x)
    pl.jax_numerics(conv)
    assert type(conv) is pl.JaxStdConv2dSame
    w = conv.weight.detach().double().numpy()
    w = w - w.mean(axis=(1, 2, 3), keepdims=True)
    w = w / (w.std(axis=(1, 2, 3), keepdims=True) + 1e-5)
    want = F.conv2d(pad_same(x, (3, 3), (2, 2)), torch.from_numpy(w).float(), None, 2)
    with torch.no_grad():
        got = conv(x)
    assert (got - want).abs().max() <= 1e-5
    assert (got - timm_out).abs().max() > 1e-3


def test_jax_numerics_and_gelu_tanh_patch_every_module_and_are_undone_by_timm_numerics():
    m = pl.random_timm_vit('tiny_hybrid_stages')
    convs = [mm for mm in m.modules() if isinstance(mm, StdConv2dSame)]
    gns = [mm for mm in m.modules() if isinstance(mm, nn.GroupNorm)]
    assert len(convs) == 12 and len(gns) == 12
    pl.jax_numerics(m)
    assert all(type(c) is pl.JaxStdConv2dSame for c in convs) and all(g.eps == 1e-6 for g in gns)
    pl.gelu_tanh(m)
    acts = [b.mlp.act for b in m.blocks]
    assert all(isinstance(a, nn.GELU) and a.approximate == 'tanh' for a in acts)
    pl.timm_numerics(m)
    assert all(type(c) is StdConv2dSame for c in convs) and all(g.eps == 1e-5 for g in gns)


def test_default_reference_uses_jax_numerics_and_tanh_gelu(tmp_path):
    src = pl.random_timm_vit('tiny_hybrid_stages')
    pl.write_npz(src, tmp_path / 'w.npz', 'vit_jax')
    x = pl.example_input(src)
    jax_src = pl.gelu_tanh(pl.jax_numerics(copy.deepcopy(src)))
    got = pl.reference_logits(tmp_path / 'w.npz', src, x)
    assert (got - logits(jax_src, x)).abs().max() <= 1e-6
    assert (got - logits(src, x)).abs().max() > 1e-6
    assert type(src.patch_embed.backbone.stem.conv) is StdConv2dSame     # template untouched


# ------------------------------------------------------------------------------------------
# the random models and refusals
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize('arch', ['tiny', 'tiny_gap', 'tiny_hybrid_stages'])
def test_random_models_have_every_parameter_nonzero_and_non_degenerate_logits(arch):
    m = pl.random_timm_vit(arch, seed=5)
    for n, p in m.named_parameters():
        assert (p != 0).all(), n
    for mm in m.modules():
        if isinstance(mm, (nn.LayerNorm, nn.GroupNorm)):
            assert mm.weight.min() > 0.5 and mm.weight.max() < 1.5
            assert 0.9 < mm.weight.mean() < 1.1
    out = logits(m, pl.example_input(m))
    assert torch.isfinite(out).all() and out.std() > 0.1
    assert (out[0] - out[1]).abs().max() > 1e-2
    assert_same_state(m, pl.random_timm_vit(arch, seed=5))


@pytest.mark.parametrize('arch,layout,match', [
    ('tiny', 'big_vision', 'class-token row'),
    ('tiny_big_vision_token', 'vit_jax', 'class-token row'),
    (dict(pl.PRESETS['tiny'], class_token=False, global_pool='avg'), 'vit_jax', 'fc_norm'),
    ('tiny', 'nope', 'unknown layout'),
])
def test_unfaithful_model_layout_combinations_are_refused(arch, layout, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        pl.write_npz(pl.random_timm_vit(arch), tmp_path / 'w.npz', layout)
