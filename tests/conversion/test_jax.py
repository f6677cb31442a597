"""jax2torch: every published JAX layout converts onto our ViT and reproduces the model that timm's own
npz loader builds from the same file (with the JAX numerics: tanh GELU, JAX weight standardization)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile

import numpy as np
from helpers import published_layouts as pl
import pytest
import torch
from helpers.numerics import logits_with_eps, shrink_embeddings_
from safetensors.torch import load_file

from vitconvert import VitConvertError, convert_jax, load_model, read_record

# float32, same activation on both sides. Measured: 0 for gap models, <= 2.9e-6 for class-token ViTs,
# <= 3.7e-6 for hybrids (the ResNet's convolutions round differently in timm's StdConv2dSame).
ATOL = 1e-5

CASES = {
    # id: (arch for pl.random_timm_vit, layout, write_npz kwargs)
    "Ti/16 vit_jax": ("vit_tiny_patch16_224", "vit_jax", {}),
    "B/16 vit_jax (2 blocks)": (("vit_base_patch16_224", {"depth": 2}), "vit_jax", {}),
    "opt/target": ("tiny", "opt_target", {}),
    "linen numbering": ("tiny", "linen", {}),
    "gap": ("tiny_gap", "vit_jax", {}),
    "big_vision gap": ("tiny_big_vision", "big_vision", {}),
    "big_vision scanned gap": ("tiny_big_vision", "big_vision_scanned", {}),
    "big_vision scanned token": ("tiny_big_vision_token", "big_vision_scanned", {}),
    "hybrid R+Ti/16 (timm's stem)": ("timm_r_ti16", "vit_jax", {}),
    "hybrid R26+S/32 (timm's backbone)": ("timm_r26_s32", "vit_jax", {}),
    "hybrid tiny stages, GroupNorm (1,1,1,C)": ("tiny_hybrid_stages", "vit_jax", dict(gn_4d="all")),
    "hybrid gap, big_vision scanned": ("tiny_hybrid_stages_gap", "big_vision_scanned", {}),
    "bfloat16 arrays": ("tiny", "vit_jax", dict(bfloat16=True)),
}


def converted_and_reference(tmp_path, arch, layout, kwargs, gelu="tanh"):
    model = pl.random_timm_vit(arch, seed=3)
    npz = tmp_path / "ckpt.npz"
    pl.write_npz(model, npz, layout, **kwargs)
    record = convert_jax(npz, tmp_path / "out.safetensors", gelu=gelu)
    if layout == "linen":  # timm's loader reads Linen numbering only with a params/ prefix
        npz = tmp_path / "same-model-vit_jax.npz"
        pl.write_npz(model, npz, "vit_jax", **kwargs)
    x = pl.example_input(model)
    expected = pl.reference_logits(npz, model, x, gelu=gelu)
    with torch.inference_mode():
        got = load_model(tmp_path / "out.safetensors")(x)
    return record, got, expected


@pytest.mark.parametrize("case", list(CASES))
def test_converted_model_reproduces_timm_loading_the_same_npz(tmp_path, case: str) -> None:
    record, got, expected = converted_and_reference(tmp_path, *CASES[case])
    diff = (got - expected).abs().max().item()
    assert diff <= ATOL, f"max abs logit difference {diff:.3e}"
    assert got.argmax(1).tolist() == expected.argmax(1).tolist()
    assert record.config.act == "gelu_tanh"


@pytest.mark.parametrize("case", ["Ti/16 vit_jax", "hybrid R+Ti/16 (timm's stem)", "big_vision scanned token"])
def test_gelu_erf_reproduces_stock_timm_activation(tmp_path, case: str) -> None:
    record, got, expected = converted_and_reference(tmp_path, *CASES[case], gelu="erf")
    assert (got - expected).abs().max().item() <= ATOL
    assert record.config.act == "gelu"


# --- the JAX numerics' constants: each epsilon shows only on activations as small as itself --------

def converted_pair(tmp_path, model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(our model converted from `model` written as a vit_jax npz, timm's model from the same file with
    the JAX numerics: tanh GELU, weight standardization (w - mean) / (std + 1e-5), GroupNorm eps 1e-6)."""
    pl.write_npz(model, tmp_path / "m.npz", "vit_jax")
    convert_jax(tmp_path / "m.npz", tmp_path / "m.safetensors")
    return load_model(tmp_path / "m.safetensors"), pl.timm_reference(tmp_path / "m.npz", model)


@torch.inference_mode()
def test_groupnorm_epsilon_is_flaxs_1e_6_on_a_low_contrast_image(tmp_path) -> None:
    # The stem's GroupNorm sees the standardized 7x7x3 convolution of the image: variance about
    # 147 * var(x). At x * 1e-4 that is ~1.5e-6, the size of the epsilon.
    ours, theirs = converted_pair(tmp_path, pl.random_timm_vit("tiny_hybrid_stem", seed=3))
    x = pl.example_input(theirs) * 1e-4
    expected = logits_with_eps(theirs, torch.nn.GroupNorm, 1e-6, x)
    assert (ours(x) - expected).abs().max().item() <= ATOL  # measured: 3.3e-7
    # timm's own 1e-5 is another model here (measured: 0.17 apart)
    assert (logits_with_eps(theirs, torch.nn.GroupNorm, 1e-5, x) - expected).abs().max().item() > 100 * ATOL


@torch.inference_mode()
def test_layernorm_epsilon_is_jaxs_1e_6_on_small_tokens(tmp_path) -> None:
    # Embeddings 1000x smaller than usual: the first LayerNorm sees tokens of variance ~1e-6.
    ours, theirs = converted_pair(tmp_path, shrink_embeddings_(pl.random_timm_vit("tiny", seed=3)))
    assert ours.config.ln_eps == 1e-6  # what the record says: no layout stores the epsilon
    x = pl.example_input(theirs)
    expected = logits_with_eps(theirs, torch.nn.LayerNorm, 1e-6, x)
    assert (ours(x) - expected).abs().max().item() <= ATOL  # measured: 2.4e-7
    # as timm's other ViTs (1e-5) it is another model (measured: 0.54 apart)
    assert (logits_with_eps(theirs, torch.nn.LayerNorm, 1e-5, x) - expected).abs().max().item() > 100 * ATOL


def test_hybrid_kernels_are_stored_standardized_with_jaxs_formula(tmp_path) -> None:
    # vit_jax's StdConv: (w - mean) / (std + 1e-5), biased std over (H, W, Cin). Output channels
    # scaled from 1e-8 to 1e-3 put the kernels' std on both sides of the epsilon.
    model = pl.random_timm_vit("tiny_hybrid_stem", seed=3)
    conv = model.patch_embed.backbone.conv.weight
    with torch.no_grad():
        conv.mul_(torch.logspace(-8, -3, conv.shape[0]).view(-1, 1, 1, 1))
    values = pl.write_npz(model, tmp_path / "h.npz", "vit_jax")
    convert_jax(tmp_path / "h.npz", tmp_path / "h.safetensors")
    w = values["conv_root/kernel"].astype(np.float64)  # HWIO, as stored in the npz
    w = w - w.mean(axis=(0, 1, 2), keepdims=True)
    std = np.sqrt((w ** 2).mean(axis=(0, 1, 2), keepdims=True))
    expected = (w / (std + 1e-5)).transpose(3, 2, 0, 1)
    stored = load_file(str(tmp_path / "h.safetensors"))["patch_embed.backbone.conv.weight"].double().numpy()
    assert np.abs(stored - expected).max() <= 1e-6  # measured: 1.2e-7 (float32 storage of values up to 3)
    # another epsilon is another kernel here (measured: 1.4 apart with 1e-6)
    assert np.abs((w / (std + 1e-6)).transpose(3, 2, 0, 1) - expected).max() > 0.1


def test_layout_and_architecture_are_read_from_the_file(tmp_path) -> None:
    model = pl.random_timm_vit("timm_r26_s32", no_embed_class=True)
    pl.write_npz(model, tmp_path / "h.npz", "big_vision_scanned")
    record = convert_jax(tmp_path / "h.npz", tmp_path / "h.safetensors")
    c = record.config
    assert record.source.format == "jax-npz/big_vision-scanned"
    assert (c.hybrid_layers, c.hybrid_width, c.patch_size, c.img_size) == ((2, 2, 2, 2), 64, 1, (64, 64))
    assert (c.embed_dim, c.depth, c.num_heads, c.pool, c.no_embed_class) == (
        model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads, "token", True)


@pytest.mark.parametrize("size", [None, 48], ids=["R = D", "R != D"])
def test_pre_logits_layer_is_kept_and_matches_timms_features_through_it_by_hand(tmp_path, size) -> None:
    model = pl.random_timm_vit("tiny", seed=1)
    pre, head = pl.random_pre_logits(model, size, seed=2)
    pl.write_npz(model, tmp_path / "p.npz", "vit_jax", pre_logits=pre, head=head)
    record = convert_jax(tmp_path / "p.npz", tmp_path / "p.safetensors")
    assert record.config.representation_size == pre[1].shape[0]
    x = pl.example_input(model)
    reference = pl.timm_reference(tmp_path / "p.npz", lambda: pl.random_timm_vit("tiny", seed=9))
    with torch.inference_mode():
        features = reference.forward_head(reference.forward_features(x), pre_logits=True)  # timm's pooled token
        by_hand = torch.tanh(features @ torch.from_numpy(pre[0]) + torch.from_numpy(pre[1]))
        kernel = head[0] if head is not None else model.head.weight.detach().numpy().T
        bias = head[1] if head is not None else model.head.bias.detach().numpy()
        expected = by_hand @ torch.from_numpy(kernel) + torch.from_numpy(bias)
        ours = load_model(tmp_path / "p.safetensors")
        assert (ours(x) - expected).abs().max().item() <= ATOL
        assert (ours.pre_logits(ours.forward_pooled(x)) - by_hand).abs().max().item() <= ATOL


def test_zero_head_is_recorded(tmp_path) -> None:
    pl.write_npz(pl.random_timm_vit("tiny"), tmp_path / "z.npz", "vit_jax", zero_head=True)
    assert convert_jax(tmp_path / "z.npz", tmp_path / "z.safetensors").head_is_zero
    assert read_record(tmp_path / "z.safetensors").head_is_zero


def test_record_carries_source_hash_labels_and_googles_preprocessing(tmp_path) -> None:
    pl.write_npz(pl.random_timm_vit("vit_tiny_patch16_224", depth=1), tmp_path / "t.npz", "vit_jax")
    record = convert_jax(tmp_path / "t.npz", tmp_path / "t.safetensors")
    assert record.source.sha256 == hashlib.sha256((tmp_path / "t.npz").read_bytes()).hexdigest()
    assert read_record(tmp_path / "t.safetensors").source == record.source
    assert record.labels == "imagenet-1k"
    p = record.preprocess  # vit_jax's evaluation: tf.image.resize to the training size, (x - 127.5) / 127.5
    assert (p.size, p.resize, p.interpolation, p.mean, p.std) == ((224, 224), "squash", "bilinear_tf",
                                                                  (0.5,) * 3, (0.5,) * 3)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_stored_dtype_equals_torchs_rounding_of_the_float32_conversion(tmp_path, dtype: str) -> None:
    pl.write_npz(pl.random_timm_vit("tiny"), tmp_path / "t.npz", "vit_jax")
    convert_jax(tmp_path / "t.npz", tmp_path / "f32.safetensors")
    convert_jax(tmp_path / "t.npz", tmp_path / "low.safetensors", dtype=dtype)
    full, low = load_file(str(tmp_path / "f32.safetensors")), load_file(str(tmp_path / "low.safetensors"))
    for k, v in full.items():
        assert torch.equal(low[k], v.to(getattr(torch, dtype))), k


# --- errors: each names what is wrong, and no output is left behind ---------------------------------

def arrays_of(tmp_path, arch="tiny", layout="vit_jax") -> dict[str, np.ndarray]:
    return dict(pl.npz_arrays(pl.random_timm_vit(arch), layout))


def expect_error(tmp_path, arrays: dict, pattern: str, **kwargs) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    out = tmp_path / "out.safetensors"
    with pytest.raises(VitConvertError, match=pattern):
        convert_jax(tmp_path / "bad.npz", out, **kwargs)
    assert not out.exists()
    assert not list(tmp_path.glob(".out.safetensors.*")), "temporary file left behind"


def test_missing_key_is_named(tmp_path) -> None:
    arrays = arrays_of(tmp_path)
    del arrays["Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias"]
    expect_error(tmp_path, arrays, r"missing keys: Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias")


def test_leftover_key_is_named(tmp_path) -> None:
    arrays = arrays_of(tmp_path) | {"Transformer/encoderblock_0/LayerScale/scale": np.ones(32, np.float32)}
    expect_error(tmp_path, arrays, r"keys that nothing maps: Transformer/encoderblock_0/LayerScale/scale")


def test_inconsistent_shape_is_named(tmp_path) -> None:
    arrays = arrays_of(tmp_path)
    arrays["Transformer/encoderblock_0/MultiHeadDotProductAttention_1/key/kernel"] = np.ones((32, 4, 8), np.float32)
    expect_error(tmp_path, arrays, r"inconsistent shapes: .*key/kernel.*query, key and value shapes differ")


def test_unknown_layout_is_refused_with_its_keys(tmp_path) -> None:
    resnet = {"conv1/kernel": np.ones((7, 7, 3, 64), np.float32), "bn1/scale": np.ones(64, np.float32)}
    expect_error(tmp_path, resnet, r"not a JAX ViT checkpoint .* its keys begin: bn1/scale, conv1/kernel")


def test_object_arrays_are_refused_without_unpickling(tmp_path) -> None:
    arrays = arrays_of(tmp_path) | {"config": np.array([{"evil": 1}], dtype=object)}
    np.savez(tmp_path / "bad.npz", **arrays)  # np.savez pickles object arrays
    with pytest.raises(VitConvertError, match="holds Python objects; refusing to unpickle"):
        convert_jax(tmp_path / "bad.npz", tmp_path / "out.safetensors")


def test_nonfinite_weights_are_refused_unless_allowed(tmp_path) -> None:
    arrays = arrays_of(tmp_path)
    arrays["head/bias"][3] = np.nan
    expect_error(tmp_path, arrays, r"tensor head\.bias holds NaN or Inf values; pass --allow-nonfinite")
    convert_jax(tmp_path / "bad.npz", tmp_path / "out.safetensors", allow_nonfinite=True)
    assert torch.isnan(load_file(str(tmp_path / "out.safetensors"))["head.bias"][3])


def test_not_a_zip_is_a_clear_error(tmp_path) -> None:
    (tmp_path / "x.npz").write_bytes(b"definitely not a zip archive")
    with pytest.raises(VitConvertError, match=r"not a readable \.npz \(zip\) file"):
        convert_jax(tmp_path / "x.npz", tmp_path / "out.safetensors")


def test_existing_output_is_not_replaced_without_force(tmp_path) -> None:
    pl.write_npz(pl.random_timm_vit("tiny"), tmp_path / "t.npz", "vit_jax")
    (tmp_path / "out.safetensors").write_bytes(b"keep me")
    with pytest.raises(VitConvertError, match="exists; pass --force"):
        convert_jax(tmp_path / "t.npz", tmp_path / "out.safetensors")
    assert (tmp_path / "out.safetensors").read_bytes() == b"keep me"


def test_a_write_failing_midway_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch) -> None:
    from helpers.faults import disk_full_after

    pl.write_npz(pl.random_timm_vit("tiny"), tmp_path / "t.npz", "vit_jax")
    (tmp_path / "out.safetensors").write_bytes(b"old")
    disk_full_after(monkeypatch, tensors=5)
    with pytest.raises(OSError, match="No space left"):
        convert_jax(tmp_path / "t.npz", tmp_path / "out.safetensors", force=True)
    assert (tmp_path / "out.safetensors").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors", "t.npz"]


# --- the command -----------------------------------------------------------------------------------

def test_cli_converts_without_importing_torch_or_timm(tmp_path) -> None:
    pl.write_npz(pl.random_timm_vit("tiny"), tmp_path / "t.npz", "vit_jax")
    code = ("import sys; from vitconvert.cli.errors import run; from vitconvert.cli import cli\n"
            "try:\n    run(cli, sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(json.dumps(sorted(m for m in ('torch', 'timm') if m in sys.modules)))")
    result = subprocess.run([sys.executable, "-c", "import json\n" + code, "jax2torch", str(tmp_path / "t.npz"),
                             str(tmp_path / "t.safetensors"), "--quiet"], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
    assert (tmp_path / "t.safetensors").exists()


def test_cli_reports_the_model_and_exits_1_with_one_error_line(tmp_path) -> None:
    pl.write_npz(pl.random_timm_vit("tiny"), tmp_path / "t.npz", "vit_jax", zero_head=True)
    ok = subprocess.run([sys.executable, "-m", "vitconvert", "jax2torch", str(tmp_path / "t.npz"),
                         str(tmp_path / "t.safetensors")], capture_output=True, text=True)
    assert ok.returncode == 0 and "pool token; 10 classes; act gelu_tanh" in ok.stdout
    assert "head is all zeros" in ok.stdout
    again = subprocess.run([sys.executable, "-m", "vitconvert", "jax2torch", str(tmp_path / "t.npz"),
                            str(tmp_path / "t.safetensors")], capture_output=True, text=True)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [f"error: output {tmp_path / 't.safetensors'} exists; pass --force "
                                                 "to replace it"]
    usage = subprocess.run([sys.executable, "-m", "vitconvert", "jax2torch", "--gelu", "relu", "a", "b"],
                           capture_output=True, text=True)
    assert usage.returncode == 2 and usage.stderr.startswith("error: ") and len(usage.stderr.splitlines()) == 1


def test_corrupt_member_is_a_clear_error(tmp_path) -> None:
    pl.write_npz(pl.random_timm_vit("tiny"), tmp_path / "t.npz", "vit_jax")
    raw = bytearray((tmp_path / "t.npz").read_bytes())
    (tmp_path / "cut.npz").write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(VitConvertError, match="truncated or damaged: it begins as a zip archive"):
        convert_jax(tmp_path / "cut.npz", tmp_path / "out.safetensors")
    assert zipfile.is_zipfile(tmp_path / "t.npz")


def test_a_published_file_gets_its_checkpoints_preprocessing_and_labels(tmp_path) -> None:
    from helpers.manifest import tiny_entry, tiny_npz_bytes, write_manifest

    from vitconvert import load_manifest

    data = tiny_npz_bytes()
    manifest = load_manifest(write_manifest(tmp_path / "m.json", tiny_entry(data)))
    (tmp_path / "tiny.npz").write_bytes(data)  # the published file name
    assert convert_jax(tmp_path / "tiny.npz", tmp_path / "plain.safetensors").preprocess.resize == "squash"
    record = convert_jax(tmp_path / "tiny.npz", tmp_path / "t.safetensors", catalog=manifest)
    assert (record.preprocess.resize, record.preprocess.crop_pct, record.preprocess.interpolation) == (
        "crop", 0.9, "bicubic")
    assert any("tiny-test-B16" in note for note in record.notes)
    (tmp_path / "renamed.npz").write_bytes(data)  # unknown name: Google's evaluation pipeline
    other = convert_jax(tmp_path / "renamed.npz", tmp_path / "r.safetensors", catalog=manifest)
    assert (other.preprocess.resize, other.preprocess.interpolation) == ("squash", "bilinear_tf")


def test_the_cli_recognises_published_files_through_the_manifest(tmp_path, monkeypatch, capsys) -> None:
    """The converter itself knows no manifest (layers); `vitconvert jax2torch` passes it in."""
    from helpers.manifest import tiny_entry, tiny_npz_bytes, write_manifest

    from vitconvert.cli import cli
    from vitconvert.cli.errors import run

    data = tiny_npz_bytes()
    monkeypatch.setenv("VITCONVERT_MANIFEST", str(write_manifest(tmp_path / "m.json", tiny_entry(data))))
    (tmp_path / "tiny.npz").write_bytes(data)
    run(cli, ["jax2torch", str(tmp_path / "tiny.npz"), str(tmp_path / "t.safetensors"), "--json"])
    record = json.loads(capsys.readouterr().out)["record"]
    assert (record["preprocess"]["resize"], record["preprocess"]["crop_pct"]) == ("crop", 0.9)


def test_pos_resize_is_recorded_and_used_at_other_sizes(tmp_path) -> None:
    from helpers.dino import dino_interpolate_pos_encoding

    pl.write_npz(pl.random_timm_vit("tiny"), tmp_path / "t.npz", "vit_jax")
    convert_jax(tmp_path / "t.npz", tmp_path / "t.safetensors", pos_resize="dino")
    native = load_model(tmp_path / "t.safetensors")
    assert native.config.pos_resize == "dino"
    expected = dino_interpolate_pos_encoding(native.pos_embed.detach(), 8, (1, 3, 48, 64))
    assert torch.equal(load_model(tmp_path / "t.safetensors", img_size="48x64").pos_embed.detach(), expected)
    convert_jax(tmp_path / "t.npz", tmp_path / "default.safetensors")
    assert read_record(tmp_path / "default.safetensors").config.pos_resize == "bicubic"


def test_an_unknown_pos_resize_is_refused_before_writing(tmp_path) -> None:
    expect_error(tmp_path, arrays_of(tmp_path),
                 "pos_resize must be 'bicubic' or 'dino' or 'flexivit' or 'transformers', got 'nearest'",
                 pos_resize="nearest")
