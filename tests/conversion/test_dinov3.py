"""The dinov3 source format (conversion/dinov3.py): DINOv3's own ViT release files convert to a model that gives
DINOv3's own outputs (class token, storage tokens, patch tokens, intermediate layers) at 224 and at a non-square
size; the same weights in timm's Eva layout (timm's own filter from the release file) convert to the same
tensors; bad files are refused in one line with nothing written.

DINOv3's outputs come from its own code (facebookresearch/dinov3, DINOv3 License: not in this repository), run by
tests/data/make_dinov3_reference.py on small random files of each release family: tests/data/dinov3/.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import vitconvert_cli as vitconvert

import vitconvert as vc
from vitconvert.model.loading import load_model, load_state_dict

DATA = Path(__file__).parent.parent / "data"
sys.path.insert(0, str(DATA))
from make_dinov3_reference import SIZES, reference_input  # noqa: E402 (the generator's own inputs)

# float32, DINOv3's operations in its order (RoPE tables in float32, as the hub's pos_embed_rope_dtype='fp32'):
# measured 0 for every token of every family at both sizes; the bound leaves room for other machines' kernels.
ATOL = 1e-5
FAMILIES = ("vits_b_l", "plus", "7b")  # ViT-S/B/L (GELU MLP), S+/L+/H+ (SwiGLU), 7B (SwiGLU, no qkv bias)
STORAGE = 4
# timm's Eva architecture for each family, and the kwargs that make it the generator's small model.
TIMM_NAMES = {"vits_b_l": ("vit_small_patch16_dinov3_qkvb", {}),
              "plus": ("vit_small_plus_patch16_dinov3_qkvb", dict(mlp_ratio=4)),
              "7b": ("vit_7b_patch16_dinov3", dict(mlp_ratio=2))}
SMALL = dict(embed_dim=32, depth=2, num_heads=2, global_pool="token")


def release(family: str) -> Path:
    return DATA / "dinov3" / f"{family}.pth"


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dinov3")
    return {family: vc.convert(release(family), out / f"{family}.safetensors") and out / f"{family}.safetensors"
            for family in FAMILIES}


def max_diff(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


@pytest.mark.parametrize("size", list(SIZES), ids=list(SIZES))
@pytest.mark.parametrize("family", FAMILIES)
def test_a_release_file_gives_dinov3s_class_storage_and_patch_tokens(converted, family, size):
    expected = np.load(DATA / "dinov3" / f"{family}.npz")
    x = reference_input(SIZES[size])
    assert x.double().sum().item() == pytest.approx(float(expected[f"{size}/input_sum"]), abs=1e-9)  # the same input
    model = load_model(converted[family]).eval()
    with torch.inference_mode():
        tokens = model.forward_features(x).numpy()
        pooled = model(x).numpy()
    assert max_diff(tokens[:, 0], expected[f"{size}/class_token"]) <= ATOL
    assert max_diff(tokens[:, 1:1 + STORAGE], expected[f"{size}/storage_tokens"]) <= ATOL
    assert max_diff(tokens[:, 1 + STORAGE:], expected[f"{size}/patch_tokens"]) <= ATOL
    assert max_diff(pooled, expected[f"{size}/class_token"]) <= ATOL  # DINOv3's forward: the class token


@pytest.mark.parametrize("family", FAMILIES)
def test_intermediate_layers_are_dinov3s(converted, family):
    expected = np.load(DATA / "dinov3" / f"{family}.npz")
    model = load_model(converted[family]).eval()
    with torch.inference_mode():
        layers = model.get_intermediate_layers(reference_input(SIZES["224"]), n=2, reshape=True,
                                               return_class_token=True, return_extra_tokens=True)
    assert len(layers) == 2
    for i, (patches, cls, extra) in enumerate(layers):
        assert max_diff(patches, expected[f"layers/{i}/patches"]) <= ATOL
        assert max_diff(cls, expected[f"layers/{i}/class_token"]) <= ATOL
        assert max_diff(extra, expected[f"layers/{i}/extra_tokens"]) <= ATOL


def test_the_record_says_what_was_left_out_and_why(converted):
    record = vc.read_record(converted["7b"])
    notes = " ".join(record.notes)
    assert record.source.format == "dinov3/DinoVisionTransformer" and record.config.num_classes == 0
    assert "mask_token (iBOT's masked-patch token, pre-training only" in notes
    assert "rope_embed.periods (the RoPE periods, which our model computes from the base: checked equal)" in notes
    assert "local_cls_norm.bias, local_cls_norm.weight (the local crops' class-token norm, used in training" in notes
    assert "bias_mask" in " ".join(vc.read_record(converted["vits_b_l"]).notes)
    cfg = record.config
    assert (cfg.rope, cfg.rope_temperature, cfg.rope_rotate_half, cfg.reg_tokens, cfg.pool) == \
        ("dinov3", 100.0, True, STORAGE, "token")


@pytest.mark.parametrize("family", FAMILIES)
def test_timms_eva_layout_of_the_same_weights_converts_to_the_same_tensors(converted, family, tmp_path):
    """timm's own checkpoint filter turns the release file into its Eva names (storage_tokens -> reg_token,
    ls -> gamma, the masked qkv bias -> q_bias/v_bias); the timm-eva format reads those back."""
    import timm
    from timm.models.eva import checkpoint_filter_fn

    name, kwargs = TIMM_NAMES[family]
    eva = timm.create_model(name, pretrained=False, **SMALL, **kwargs)
    state = checkpoint_filter_fn(torch.load(release(family), weights_only=True), eva)
    eva.load_state_dict(state, strict=True)  # timm's model takes every tensor
    torch.save(state, tmp_path / "eva.pth")
    vc.convert(tmp_path / "eva.pth", tmp_path / "eva.safetensors", model=name, timm_kwargs={**SMALL, **kwargs})
    ours, theirs = load_state_dict(converted[family])[1], load_state_dict(tmp_path / "eva.safetensors")[1]
    assert sorted(ours) == sorted(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    eva.eval()
    x = reference_input(SIZES["160x288"])
    with torch.inference_mode():  # and timm's Eva forward is DINOv3's too
        expected = np.load(DATA / "dinov3" / f"{family}.npz")
        assert max_diff(eva.forward_features(x)[:, 1 + STORAGE:], expected["160x288/patch_tokens"]) <= ATOL
        # Our intermediate layers are timm's Eva's (forward_intermediates: normed, NCHW), at this size too.
        theirs_layers = eva.forward_intermediates(x, indices=2, norm=True, output_fmt="NCHW", intermediates_only=True)
        ours_layers = load_model(converted[family]).eval().get_intermediate_layers(x, 2, reshape=True)
        assert len(ours_layers) == len(theirs_layers) == 2
        assert all(max_diff(a, b) <= ATOL for a, b in zip(ours_layers, theirs_layers, strict=True))


def test_vitconvert_convert_recognises_a_release_file(capsys, tmp_path):
    code, out, err = vitconvert(capsys, "convert", release("plus"), tmp_path / "o.safetensors", "--json")
    assert code == 0, err
    assert '"format": "dinov3/DinoVisionTransformer"' in out


# --- bad files: one line each, nothing written ----------------------------------------------------------

def edited(tmp_path: Path, family: str, edit) -> Path:
    state = torch.load(release(family), weights_only=True)
    edit(state)
    torch.save(state, tmp_path / "edited.pth")
    return tmp_path / "edited.pth"


def refused(capsys, tmp_path: Path, src: Path) -> str:
    code, out, err = vitconvert(capsys, "convert", src, tmp_path / "o.safetensors")
    assert code == 1 and out == "" and len(err.splitlines()) == 1, err
    assert sorted(tmp_path.iterdir()) == ([src] if src.parent == tmp_path else [])
    return err


def test_periods_that_are_no_bases_periods_are_refused(capsys, tmp_path):
    def bend(state):
        state["rope_embed.periods"][1] *= 1.01

    err = refused(capsys, tmp_path, edited(tmp_path, "vits_b_l", bend))
    assert err.endswith("rope_embed.periods [1, 3.1939, 10, 31.6228] disagree with the periods of base 100 for heads "
                        "of 16 ([1, 3.16228, 10, 31.6228]): not periods our model computes (DINOv3's min/max-period "
                        "RoPE is not converted)\n")


def test_periods_of_another_base_make_that_models_rope(tmp_path):
    def base_1000(state):
        state["rope_embed.periods"] = 1000.0 ** (2 * torch.arange(4, dtype=torch.float32) / 8)

    record = vc.convert(edited(tmp_path, "vits_b_l", base_1000), tmp_path / "o.safetensors")
    assert record.config.rope_temperature == 1000.0
    assert any("RoPE base 1000, not the hub's 100" in note for note in record.notes)


def test_missing_storage_tokens_are_refused(capsys, tmp_path):
    err = refused(capsys, tmp_path, edited(tmp_path, "plus", lambda s: s.pop("storage_tokens")))
    assert err.endswith("no storage_tokens: every DINOv3 release holds its 4 storage (register) tokens; this file "
                        "is cut or not a DINOv3 release\n")


def test_a_key_bias_mask_other_than_dinov3s_is_refused(capsys, tmp_path):
    def unmask(state):
        state["blocks.1.attn.qkv.bias_mask"].fill_(1)

    err = refused(capsys, tmp_path, edited(tmp_path, "vits_b_l", unmask))
    assert "blocks.1.attn.qkv.bias_mask not 1 on the query and value rows and 0 on the keys'" in err


def test_untied_class_and_patch_norms_are_refused(capsys, tmp_path):
    def untie(state):
        state["cls_norm.weight"], state["cls_norm.bias"] = state["norm.weight"], state["norm.bias"]

    err = refused(capsys, tmp_path, edited(tmp_path, "plus", untie))
    assert "cls_norm: a DINOv3 model with separate norms for the class and patch tokens" in err


def test_a_file_larger_than_the_free_memory_is_refused_saying_what_it_needs(capsys, tmp_path, monkeypatch):
    from vitconvert.formats import memory

    monkeypatch.setattr(memory, "available_memory", lambda: 100_000)
    err = refused(capsys, tmp_path, release("7b"))
    # Its largest tensor, the patch kernel (32, 3, 16, 16) = 24576 values, twice in float32: 196608 bytes.
    assert err == (f"error: converting {release('7b')} (this DINOv3 model) needs about 192 KiB of memory and 97.7 KiB "
                   "is available: free some, or convert on a larger machine\n")
