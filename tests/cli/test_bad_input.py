"""Bad input never hurts: no code runs, no traceback, no half-written or silently wrong file.

Each case checks the message names the problem and that nothing is left where the output would go.
(Behaviours already covered elsewhere are not repeated: torch.save'd malicious pickles, npz object
arrays, NaN in npz weights, tampered JSON, metadata that disagrees with tensors, --force, a failed
jax2torch write: see test_jax.py, test_timm.py and test_weights_file.py.)
"""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from helpers import published_layouts as pl
from helpers.cli import cli_error
from safetensors.torch import load_file, save_file

from vitconvert import VitConvertError, convert_jax, convert_timm, load_model, read_record
from vitconvert.cli.errors import run
from vitconvert.formats.weights_file import META_KEY

# --- helpers ----------------------------------------------------------------------------------------

# The "tiny" ViT is 32 wide, not a standard width: timm2torch is told its 2 heads.
TINY_HEADS = 2


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    return pl.random_timm_vit("tiny", seed=1).state_dict()


@pytest.fixture(scope="module")
def tiny_npz_arrays() -> dict[str, np.ndarray]:
    return dict(pl.npz_arrays(pl.random_timm_vit("tiny", seed=1), "vit_jax"))


@pytest.fixture
def npz(tmp_path, tiny_npz_arrays) -> Path:
    path = tmp_path / "in" / "t.npz"
    path.parent.mkdir()
    np.savez(path, **tiny_npz_arrays)
    return path


@pytest.fixture
def pth(tmp_path, tiny_state) -> Path:
    path = tmp_path / "in" / "t.pth"
    path.parent.mkdir(exist_ok=True)
    torch.save(tiny_state, path)
    return path


@pytest.fixture
def weights(tmp_path, pth) -> Path:
    out = tmp_path / "in" / "w.safetensors"
    convert_timm(pth, out, num_heads=TINY_HEADS)
    return out


@pytest.fixture
def out_dir(tmp_path) -> Path:
    path = tmp_path / "out"
    path.mkdir()
    return path


def assert_nothing_written(out_dir: Path) -> None:
    assert list(out_dir.iterdir()) == [], "an output or temporary file was left behind"


def convert(src: Path, dst: Path, **kwargs):
    if src.suffix == ".npz":
        return convert_jax(src, dst, **kwargs)
    return convert_timm(src, dst, num_heads=TINY_HEADS, **kwargs)


# --- pickles: nothing in them runs --------------------------------------------------------------------

class Evil:
    """Unpickling this would create the marker file."""

    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on raw pickles
@pytest.mark.parametrize("form", ["raw pickle .pth", "raw pickle .bin", "legacy torch format"])
def test_a_pickle_that_would_run_code_is_refused_in_every_form(tmp_path, out_dir, form: str) -> None:
    Evil.marker = str(tmp_path / "pwned")
    src = tmp_path / ("evil.bin" if form.endswith(".bin") else "evil.pth")
    payload = {"state_dict": {"x": Evil()}}
    if form == "legacy torch format":
        torch.save(payload, src, _use_new_zipfile_serialization=False)
    else:
        with open(src, "wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(VitConvertError, match=r"refused: the pickle asks to run code .*weights_only=True") as e:
        convert_timm(src, out_dir / "out.safetensors")
    assert not (tmp_path / "pwned").exists(), "the pickle's code ran"
    assert "\n" not in str(e.value) and len(str(e.value)) < 400  # torch's page-long text is summarised
    assert_nothing_written(out_dir)


def test_a_legacy_format_state_dict_still_converts(tmp_path, out_dir, tiny_state) -> None:
    torch.save(tiny_state, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    convert_timm(tmp_path / "old.pth", out_dir / "w.safetensors", num_heads=TINY_HEADS)
    assert load_model(out_dir / "w.safetensors").config.depth == 2


# --- corrupt input --------------------------------------------------------------------------------------

@pytest.mark.parametrize("keep", [0.02, 0.3, 0.6, 0.95, -1], ids=["2%", "30%", "60%", "95%", "all but 1 byte"])
def test_truncated_npz_is_a_clear_error(npz, out_dir, keep: float) -> None:
    raw = npz.read_bytes()
    npz.write_bytes(raw[:keep] if keep == -1 else raw[: int(len(raw) * keep)])
    with pytest.raises(VitConvertError, match=r"t\.npz: truncated or damaged: it begins as a zip archive"):
        convert_jax(npz, out_dir / "out.safetensors")
    assert_nothing_written(out_dir)


def member_offsets(path: Path, name: str) -> tuple[int, int, int]:
    """(where the member's local header begins, where its stored bytes begin, how many) in the zip file."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name)
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26: info.header_offset + 30])
    return info.header_offset, info.header_offset + 30 + name_len + extra_len, info.compress_size


@pytest.mark.parametrize("where", ["array data", "npy header", "npy magic", "name in the local zip header"])
@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "deflated"])
def test_a_flipped_byte_in_a_member_is_a_clear_error(tmp_path, out_dir, tiny_npz_arrays, where, compressed) -> None:
    src = tmp_path / "t.npz"
    (np.savez_compressed if compressed else np.savez)(src, **tiny_npz_arrays)
    member = "Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel.npy"
    local, start, size = member_offsets(src, member)
    offset = {"array data": start + size // 2, "npy header": start + 20, "npy magic": start + 1,
              "name in the local zip header": local + 30 + 3}[where]
    raw = bytearray(src.read_bytes())
    raw[offset] ^= 0x5A
    src.write_bytes(bytes(raw))
    with pytest.raises(VitConvertError, match=r"t\.npz: .*(corrupt|cannot read|not a readable)"):
        convert_jax(src, out_dir / "out.safetensors")
    assert_nothing_written(out_dir)


def test_a_flipped_data_byte_fails_the_conversion_whichever_array_it_is_in(tmp_path, out_dir) -> None:
    """Each array's CRC-32 is checked on a second thread while the next one is converted: the last array
    read (the head's bias, over 4 KiB with 1100 classes) must still stop the write. (zipfile itself checks
    members under 4 KiB, the size of its first read, when their headers are read.)"""
    arrays = dict(pl.npz_arrays(pl.random_timm_vit("tiny", seed=1, num_classes=1100), "vit_jax"))
    clean = tmp_path / "clean.npz"
    np.savez(clean, **arrays)
    checked_alongside = 0
    for key in arrays:
        src = tmp_path / "t.npz"
        _, start, size = member_offsets(clean, key + ".npy")
        raw = bytearray(clean.read_bytes())
        raw[start + size - 1] ^= 0x01  # the last byte of the array: a bit of one weight
        src.write_bytes(bytes(raw))
        with pytest.raises(VitConvertError, match=r"t\.npz: .*Bad CRC-32") as caught:
            convert_jax(src, out_dir / "out.safetensors")
        assert_nothing_written(out_dir)
        if size > 4096:
            assert f"cannot read array '{key}' (Bad CRC-32" in str(caught.value)
            checked_alongside += 1
    assert checked_alongside >= 10


def test_an_npy_header_that_promises_more_than_the_member_holds_allocates_nothing(tmp_path, out_dir) -> None:
    """A 100-byte member declaring a terabyte must be refused from its header, not met by numpy's allocation."""
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.float32)) | {"shape": (2 ** 38,)}
    member = bytearray()

    class Sink:
        def write(self, b):
            member.extend(b)

    np.lib.format.write_array_header_1_0(Sink(), header)
    with zipfile.ZipFile(tmp_path / "liar.npz", "w") as z:
        z.writestr("embedding/kernel.npy", bytes(member) + b"\0" * 64)
    with pytest.raises(VitConvertError, match=r"embedding/kernel\.npy' is truncated or corrupt .* 1099511627776 bytes"):
        convert_jax(tmp_path / "liar.npz", out_dir / "out.safetensors")


def test_empty_arrays_are_refused(tmp_path, out_dir, tiny_npz_arrays) -> None:
    # An empty scanned block array declares a depth for no bytes at all.
    arrays = dict(pl.npz_arrays(pl.random_timm_vit("tiny_big_vision"), "big_vision_scanned"))
    arrays["params/Transformer/encoderblock/LayerNorm_0/scale"] = np.zeros((10 ** 9, 0), np.float32)
    np.savez(tmp_path / "e.npz", **arrays)
    with pytest.raises(VitConvertError, match=r"LayerNorm_0/scale\.npy' is empty \(shape \(1000000000, 0\)\)"):
        convert_jax(tmp_path / "e.npz", out_dir / "out.safetensors")
    assert_nothing_written(out_dir)


@pytest.mark.parametrize("keep", [4, 8, 100, -1], ids=["inside the length", "length only", "inside the header",
                                                       "all but 1 byte"])
def test_truncated_safetensors_is_a_clear_error(weights, tmp_path, out_dir, keep: int) -> None:
    cut = tmp_path / "in" / "cut.safetensors"
    cut.write_bytes(weights.read_bytes()[:keep])
    pattern = r"cut\.safetensors: (not a safetensors file|truncated)"
    with pytest.raises(VitConvertError, match=pattern):
        load_model(cut)
    with pytest.raises(VitConvertError, match=pattern):
        convert_timm(cut, out_dir / "out.safetensors")  # a truncated state dict, for timm2torch
    assert_nothing_written(out_dir)


@pytest.mark.parametrize("name", ["x.npz", "x.pth", "x.bin", "x.safetensors"])
def test_zero_byte_inputs_are_named_empty(tmp_path, out_dir, name: str) -> None:
    (tmp_path / name).touch()
    with pytest.raises(VitConvertError, match=rf"{name} is empty \(0 bytes\)"):
        convert(tmp_path / name, out_dir / "out.safetensors")
    assert_nothing_written(out_dir)


def test_zero_byte_weights_file_is_named_empty(tmp_path) -> None:
    (tmp_path / "w.safetensors").touch()
    for load in (load_model, read_record):
        with pytest.raises(VitConvertError, match=r"w\.safetensors is empty \(0 bytes\), not a safetensors file"):
            load(tmp_path / "w.safetensors")


@pytest.mark.parametrize("name", ["d.npz", "d.pth", "d.safetensors", "weights"])
def test_a_directory_given_as_a_file(tmp_path, out_dir, name: str) -> None:
    (tmp_path / name).mkdir()
    with pytest.raises(VitConvertError, match=rf"{name} is a directory, not a"):
        if name == "weights":
            load_model(tmp_path / name)
        else:
            convert(tmp_path / name, out_dir / "out.safetensors")
    assert_nothing_written(out_dir)


def test_a_fifo_is_refused_instead_of_blocking(tmp_path, out_dir) -> None:
    os.mkfifo(tmp_path / "pipe.npz")
    with pytest.raises(VitConvertError, match=r"pipe\.npz is not a regular file"):
        convert_jax(tmp_path / "pipe.npz", out_dir / "out.safetensors")


def _root_can_read(path: Path) -> bool:
    try:
        path.read_bytes()
        return True
    except PermissionError:
        return False


@pytest.mark.parametrize("which", ["npz", "pth", "weights"])
def test_unreadable_input_is_a_clear_error(request, out_dir, which: str) -> None:
    path = request.getfixturevalue("weights" if which == "weights" else which)
    path.chmod(0)
    try:
        if _root_can_read(path):
            pytest.skip("running as root (or with CAP_DAC_OVERRIDE): mode 000 does not stop reading")
        with pytest.raises(VitConvertError, match=r"cannot read .*: Permission denied"):
            load_model(path) if which == "weights" else convert(path, out_dir / "out.safetensors")
        assert_nothing_written(out_dir)
    finally:
        path.chmod(0o644)


@pytest.mark.parametrize("which", ["npz", "pth", "weights"])
def test_unreadable_input_is_a_clear_error_even_as_root(request, out_dir, monkeypatch, which: str) -> None:
    """The same check with the refusal simulated, so it also runs where tests run as root."""
    import vitconvert.formats.paths

    path = request.getfixturevalue("weights" if which == "weights" else which)

    def denied(file, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(vitconvert.formats.paths, "open", denied, raising=False)  # found before the builtin
    with pytest.raises(VitConvertError, match=rf"cannot read .*{path.name}: Permission denied"):
        load_model(path) if which == "weights" else convert(path, out_dir / "out.safetensors")
    assert_nothing_written(out_dir)


def test_nonfinite_timm_weights_are_refused_unless_allowed(tmp_path, out_dir, tiny_state) -> None:
    state = dict(tiny_state)
    state["blocks.1.mlp.fc2.weight"] = state["blocks.1.mlp.fc2.weight"].clone()
    state["blocks.1.mlp.fc2.weight"][0, 3] = float("inf")
    torch.save(state, tmp_path / "inf.pth")
    with pytest.raises(VitConvertError, match=r"inf\.pth: tensor blocks\.1\.mlp\.fc2\.weight holds NaN or Inf "
                                              r"values; pass --allow-nonfinite"):
        convert_timm(tmp_path / "inf.pth", out_dir / "out.safetensors", num_heads=TINY_HEADS)
    assert_nothing_written(out_dir)
    convert_timm(tmp_path / "inf.pth", out_dir / "out.safetensors", num_heads=TINY_HEADS, allow_nonfinite=True)
    assert torch.isinf(load_file(str(out_dir / "out.safetensors"))["blocks.1.mlp.fc2.weight"][0, 3])


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["NaN", "Inf", "-Inf"])
def test_one_nonfinite_value_anywhere_in_a_tensor_is_refused(tmp_path, out_dir, tiny_npz_arrays, value) -> None:
    """One value, neither the first nor the last, in a kernel among finite ones (the check reduces to the
    tensor's minimum and maximum, so each kind of non-finite value must show there)."""
    key = "Transformer/encoderblock_1/MlpBlock_3/Dense_1/kernel"
    kernel = tiny_npz_arrays[key].copy()
    kernel[1, 2] = value
    np.savez(tmp_path / "bad.npz", **tiny_npz_arrays | {key: kernel})
    with pytest.raises(VitConvertError, match=r"tensor blocks\.1\.mlp\.fc2\.weight holds NaN or Inf values"):
        convert_jax(tmp_path / "bad.npz", out_dir / "out.safetensors")
    assert_nothing_written(out_dir)


@pytest.mark.parametrize("command", ["jax2torch", "timm2torch"])
def test_cli_allow_nonfinite_flag(tmp_path, out_dir, capsys, tiny_npz_arrays, tiny_state, command) -> None:
    if command == "jax2torch":
        src, heads = tmp_path / "nan.npz", []
        np.savez(src, **tiny_npz_arrays | {"head/bias": np.full(10, np.nan, np.float32)})
    else:
        src, heads = tmp_path / "nan.pth", ["--heads", str(TINY_HEADS)]
        torch.save(tiny_state | {"head.bias": torch.full((10,), float("nan"))}, src)
    dst = str(out_dir / "out.safetensors")
    code, err = cli_error(capsys, command, str(src), dst, "--quiet", *heads)
    assert code == 1 and err.splitlines() == [(f"error: {src}: tensor head.bias holds NaN or Inf values; "
                                               "pass --allow-nonfinite to convert anyway")]
    assert_nothing_written(out_dir)
    run_ok = subprocess.run([sys.executable, "-m", "vitconvert", command, str(src), dst, "--allow-nonfinite",
                             "--quiet", *heads], capture_output=True, text=True, check=False)
    assert run_ok.returncode == 0, run_ok.stderr
    assert torch.isnan(load_file(dst)["head.bias"]).all()


# --- wrong input ----------------------------------------------------------------------------------------

def test_a_resnet_state_dict_is_not_a_vit(tmp_path, out_dir) -> None:
    import timm

    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), tmp_path / "r.pth")
    with pytest.raises(VitConvertError, match=r"not a timm ViT state dict \(no patch_embed\.proj\.weight\); "
                                              r"its keys begin: bn1\.bias"):
        convert_timm(tmp_path / "r.pth", out_dir / "out.safetensors")
    assert_nothing_written(out_dir)


def test_a_clip_text_tower_is_not_a_vit(tmp_path, out_dir) -> None:
    clip = {"token_embedding.weight": torch.zeros(100, 32), "positional_embedding": torch.zeros(77, 32),
            "transformer.resblocks.0.attn.in_proj_weight": torch.zeros(96, 32),
            "transformer.resblocks.0.attn.in_proj_bias": torch.zeros(96), "ln_final.weight": torch.ones(32),
            "text_projection": torch.zeros(32, 16)}
    save_file(clip, str(tmp_path / "clip.safetensors"))
    with pytest.raises(VitConvertError, match=r"not a timm ViT state dict .* its keys begin: ln_final\.weight, "
                                              r"positional_embedding"):
        convert_timm(tmp_path / "clip.safetensors", out_dir / "out.safetensors")
    assert_nothing_written(out_dir)


def test_a_zip_of_other_files_is_not_an_npz(tmp_path, out_dir) -> None:
    with zipfile.ZipFile(tmp_path / "a.npz", "w") as z:
        z.writestr("README.txt", "hello")
        z.writestr("model.onnx", b"\x08\x07")
    with pytest.raises(VitConvertError, match=r"member 'README\.txt' is not a \.npy array"):
        convert_jax(tmp_path / "a.npz", out_dir / "out.safetensors")
    assert_nothing_written(out_dir)


@pytest.mark.parametrize("key, shape, pattern", [
    ("patch_embed.proj.weight", (32, 3, 8), r"patch_embed\.proj\.weight has shape \(32, 3, 8\), expected 4 dimensions"),
    ("pos_embed", (17,), r"pos_embed has shape \(17,\), expected 3 dimensions"),
    ("head.weight", (), r"head\.weight has shape \(\), expected 2 dimensions"),
    ("patch_embed.proj.weight", (32, 0, 8, 8), r"invalid ViT config: in_chans must be a positive integer, got 0"),
    ("patch_embed.proj.weight", (32, 3, 0, 0), r"invalid ViT config: .*patch_size must be a positive integer"),
    ("blocks.0.attn.qkv.weight", (96, 31), (r"inconsistent shapes: blocks\.0\.attn\.qkv\.weight \(96, 31\) "
                                           r"\(expected \(96, 32\)\)")),
])
def test_inconsistent_timm_shapes_are_named(tmp_path, out_dir, tiny_state, key, shape, pattern) -> None:
    torch.save(tiny_state | {key: torch.zeros(shape)}, tmp_path / "s.pth")
    with pytest.raises(VitConvertError, match=rf"s\.pth: {pattern}"):
        convert_timm(tmp_path / "s.pth", out_dir / "out.safetensors", num_heads=TINY_HEADS)
    assert_nothing_written(out_dir)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64])
def test_non_float_timm_tensors_are_refused(tmp_path, out_dir, tiny_state, dtype) -> None:
    torch.save(tiny_state | {"norm.weight": tiny_state["norm.weight"].to(dtype)}, tmp_path / "i.pth")
    with pytest.raises(VitConvertError, match=rf"tensor norm\.weight is {dtype}; expected dense floating point"):
        convert_timm(tmp_path / "i.pth", out_dir / "out.safetensors", num_heads=TINY_HEADS)
    assert_nothing_written(out_dir)


def test_a_state_dict_key_that_is_not_a_string(tmp_path, out_dir, tiny_state) -> None:
    torch.save({**tiny_state, 7: torch.zeros(3)}, tmp_path / "k.pth")
    with pytest.raises(VitConvertError, match="has a key that is not a string: 7"):
        convert_timm(tmp_path / "k.pth", out_dir / "out.safetensors")


@pytest.mark.parametrize("key, shape", [
    ("Transformer/encoder_norm/scale", (5,)),
    ("Transformer/encoder_norm/bias", ()),  # found by test_fuzz: written, then refused by load_model
    ("embedding/bias", (31,)),
    ("head/kernel", (32, 11)),
    ("Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias", (7,)),
])
def test_jax_shapes_that_disagree_with_the_inferred_model_write_nothing(tmp_path, out_dir, tiny_npz_arrays,
                                                                          key, shape) -> None:
    """Regression: these passed the mapping (an identity or a transpose accepts any shape) and wrote a file
    whose tensors disagreed with its own record, so the error only came when it was loaded."""
    np.savez(tmp_path / "s.npz", **tiny_npz_arrays | {key: np.ones(shape, np.float32)})
    with pytest.raises(VitConvertError, match=r"s\.npz: inconsistent shapes: "):
        convert_jax(tmp_path / "s.npz", out_dir / "out.safetensors")
    assert_nothing_written(out_dir)


@pytest.mark.parametrize("key, shape, pattern", [
    ("embedding/kernel", (8, 8, 3), r"embedding/kernel has shape \(8, 8, 3\), expected 4 dimensions"),
    ("head/bias", (), r"head/bias has shape \(\), expected 1 dimensions"),
    ("Transformer/posembed_input/pos_embedding", (17, 32), r"pos_embedding has shape \(17, 32\), expected 3"),
    ("Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel", (32, 0, 16), r"empty"),
    ("embedding/kernel", (8, 8, 3, 33), r"invalid ViT config: embed_dim 33 is not divisible by num_heads 2"),
])
def test_jax_shapes_the_config_is_read_from_are_checked(tmp_path, out_dir, tiny_npz_arrays, key, shape,
                                                        pattern) -> None:
    np.savez(tmp_path / "s.npz", **tiny_npz_arrays | {key: np.ones(shape, np.float32)})
    with pytest.raises(VitConvertError, match=rf"s\.npz: .*{pattern}"):
        convert_jax(tmp_path / "s.npz", out_dir / "out.safetensors")
    assert_nothing_written(out_dir)


def test_hybrid_unit_numbers_must_count_from_one(tmp_path, out_dir) -> None:
    """Regression guard: the plan's size came from the largest unit number, so 'unit99999999' was a hang."""
    arrays = dict(pl.npz_arrays(pl.random_timm_vit("tiny_hybrid_stages"), "vit_jax"))
    arrays["block1/unit99999999/gn1/bias"] = np.ones(32, np.float32)
    np.savez(tmp_path / "h.npz", **arrays)
    pattern = r"units of ResNet stage 1 are not numbered 1\.\.n: found \[1, 2, 99999999\]"
    with pytest.raises(VitConvertError, match=pattern):
        convert_jax(tmp_path / "h.npz", out_dir / "out.safetensors")


# --- weights files: a record of the wrong types, tensors of the wrong kind, a foreign header ---------------

def rewrite_record(path: Path, edit) -> Path:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        record = json.loads(f.metadata()[META_KEY])
    edit(record)
    out = path.with_name("edited.safetensors")
    save_file(load_file(str(path)), str(out), metadata={META_KEY: json.dumps(record)})
    return out


@pytest.mark.parametrize("section, field, value, pattern", [
    ("config", "depth", "twelve", r"depth must be a positive integer, got 'twelve'"),
    ("config", "num_heads", 0, r"num_heads must be a positive integer, got 0"),
    ("config", "embed_dim", 32.0, r"embed_dim must be a positive integer, got 32\.0"),
    ("config", "img_size", "32", r"img_size must be \(height, width\) > 0, got '32'"),
    ("config", "qkv_bias", "no", r"qkv_bias must be true or false, got 'no'"),
    ("config", "ln_eps", "1e-6", r"ln_eps must be a positive number, got '1e-6'"),
    ("config", "hybrid_layers", [0], r"hybrid_layers must be null or a list of positive unit counts"),
    ("preprocess", "mean", 5, r"preprocess\.mean must be 3 finite numbers, got 5"),
    ("preprocess", "std", [0, 1, 1], r"preprocess\.std must be positive"),
    ("preprocess", "size", [32, "32"], r"preprocess\.size must be \(height, width\) > 0"),
    ("preprocess", "crop_pct", "0.9", r"preprocess\.crop_pct must be a number, got '0\.9'"),
    ("preprocess", "interpolation", "lanczos",
     r"preprocess\.interpolation must be one of 'bicubic', 'bilinear', 'bilinear_tf', got 'lanczos'"),
    ("source", "file", 5, r"source\.file must be a string, got 5"),
    (None, "head_is_zero", "false", r"head_is_zero must be true or false, got 'false'"),
    (None, "labels", 1000, r"labels must be a label set's name, a list of class names or null, got 1000"),
    (None, "notes", "abc", r"notes must be a list of strings, got 'abc'"),
    (None, "config", [], r"config must be a JSON object, got list"),
    (None, "preprocess", "squash", r"preprocess must be a JSON object, got 'squash'"),
])
def test_record_fields_of_the_wrong_type_are_named(weights, section, field, value, pattern) -> None:
    """Regression: depth 'twelve' or num_heads 0 raised TypeError / ZeroDivisionError in load_model, and
    head_is_zero 'false' or mean ['a', 'b', 'c'] were accepted."""
    edited = rewrite_record(weights, lambda r: (r[section] if section else r).update({field: value}))
    for load in (read_record, load_model):
        with pytest.raises(VitConvertError, match=rf"edited\.safetensors: (invalid ViT config: )?{pattern}"):
            load(edited)


@pytest.mark.parametrize("change, pattern", [
    ("int", r"tensors must all have one dtype of BF16, F16, F32; found I32"),
    ("mixed", r"tensors must all have one dtype of BF16, F16, F32; found F16, F32"),
])
def test_weights_of_a_dtype_we_do_not_write_are_refused(weights, tmp_path, change, pattern) -> None:
    tensors = load_file(str(weights))
    if change == "int":
        tensors = {k: v.to(torch.int32) for k, v in tensors.items()}
    else:
        tensors["norm.weight"] = tensors["norm.weight"].half()
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        meta = f.metadata()
    save_file(tensors, str(tmp_path / "d.safetensors"), metadata=meta)
    with pytest.raises(VitConvertError, match=pattern):
        load_model(tmp_path / "d.safetensors")


def raw_safetensors(path: Path, header: bytes, data: bytes = b"\0" * 16) -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


# The safetensors library validates headers (we read them with safe_open); its reasons are kept.
@pytest.mark.parametrize("header, pattern", [
    (b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,Infinity]}}', r"invalid JSON in header"),
    (b"[" * 50_000 + b"]" * 50_000, r"invalid JSON in header"),
    (b'{"__metadata__": 5}', r"invalid type: integer `5`, expected a map"),
    (b'{"__metadata__": "vitconvert"}', r"invalid type: string \"vitconvert\", expected a map"),
    (b'{"__metadata__": {"vitconvert": {"format": 1}}}', r"invalid type: map, expected a string"),
    (b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}', r"invalid value: integer `-4`"),
    (b'{"a":{"dtype":["F32"],"shape":[1],"data_offsets":[0,4]}}', r"invalid type: sequence"),
    (b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}}', r"invalid offset for tensor `a`"),
    (b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4000]}}', r"invalid shape, data type, or offset"),
    (b"\xff\xfe\x00garbage", r"invalid UTF-8 in header"),
])
def test_foreign_safetensors_headers_are_clear_errors(tmp_path, out_dir, header, pattern) -> None:
    """Regression: Infinity offsets (OverflowError), deep nesting (RecursionError) and a non-dict
    __metadata__ (TypeError) escaped as exceptions other than VitConvertError."""
    src = raw_safetensors(tmp_path / "h.safetensors", header)
    for load in (read_record, load_model, lambda p: convert_timm(p, out_dir / "out.safetensors")):
        with pytest.raises(VitConvertError, match=r"h\.safetensors: not a safetensors file \(.*" + pattern):
            load(src)
    assert_nothing_written(out_dir)


# --- output -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["npz", "pth"])
def test_output_directory_missing(request, tmp_path, kind: str) -> None:
    src = request.getfixturevalue(kind)
    with pytest.raises(VitConvertError, match=r"output directory .*/no/such does not exist"):
        convert(src, tmp_path / "no" / "such" / "out.safetensors")


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("kind", ["npz", "pth"])
def test_output_path_is_a_directory(request, out_dir, kind: str, force: bool) -> None:
    """Before: without --force the message said the directory 'exists; pass --force'."""
    src = request.getfixturevalue(kind)
    (out_dir / "w.safetensors").mkdir()
    with pytest.raises(VitConvertError, match=r"output .*w\.safetensors is a directory; give a file name"):
        convert(src, out_dir / "w.safetensors", force=force)
    assert [p.name for p in out_dir.iterdir()] == ["w.safetensors"]


def test_a_timm2torch_write_failing_midway_keeps_the_old_file(pth, out_dir, monkeypatch) -> None:
    from helpers.faults import disk_full_after

    (out_dir / "out.safetensors").write_bytes(b"old")
    disk_full_after(monkeypatch, tensors=7)
    with pytest.raises(OSError, match="No space left"):
        convert_timm(pth, out_dir / "out.safetensors", num_heads=TINY_HEADS, force=True)
    assert (out_dir / "out.safetensors").read_bytes() == b"old"
    assert [p.name for p in out_dir.iterdir()] == ["out.safetensors"]


def test_the_writer_handles_empty_tensors(out_dir) -> None:
    """Regression (found by test_fuzz): memoryview.cast refused zero-size arrays with a TypeError mid-write."""
    from vitconvert.formats.safetensors_file import TensorSpec, write_safetensors

    write_safetensors(out_dir / "e.safetensors", [TensorSpec("e", (0, 3), lambda: np.zeros((0, 3), np.float32)),
                                                  TensorSpec("f", (2,), lambda: np.ones(2, np.float32))],
                      "float32", {})
    loaded = load_file(str(out_dir / "e.safetensors"))
    assert loaded["e"].shape == (0, 3) and loaded["f"].tolist() == [1.0, 1.0]


def test_an_output_directory_we_cannot_write_in(pth, out_dir, monkeypatch) -> None:
    import vitconvert.formats.safetensors_file as io

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(io, "_create_beside", denied)  # root ignores mode bits, so simulate it
    with pytest.raises(VitConvertError, match=r"cannot write in .*out: Permission denied"):
        convert_timm(pth, out_dir / "out.safetensors", num_heads=TINY_HEADS)


# --- the command-line contract ------------------------------------------------------------------------------

@pytest.mark.parametrize("args, pattern", [
    (["timm2torch", "{tmp}/missing.pth", "{out}/o.safetensors"], r"error: {tmp}/missing\.pth: no such file"),
    (["jax2torch", "{tmp}/a.npz", "{out}/o.safetensors"],
     r"error: {tmp}/a\.npz: member 'notes\.txt' is not a \.npy array"),
    (["timm2torch", "{tmp}/empty.bin", "{out}/o.safetensors"], r"error: {tmp}/empty\.bin is empty \(0 bytes\)"),
    (["jax2torch", "{tmp}/empty.bin", "{out}/no/o.safetensors"], r"error: output directory {out}/no does not exist"),
    (["timm2torch", "{tmp}/evil.pth", "{out}/o.safetensors"], r"error: {tmp}/evil\.pth: refused: the pickle"),
])
def test_cli_errors_are_one_line_with_exit_status_1(tmp_path, out_dir, capsys, args, pattern) -> None:
    (tmp_path / "empty.bin").touch()
    with zipfile.ZipFile(tmp_path / "a.npz", "w") as z:
        z.writestr("notes.txt", "hello")
    Evil.marker = str(tmp_path / "pwned")
    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    code, err = cli_error(capsys, *(a.format(tmp=tmp_path, out=out_dir) for a in args))
    assert code == 1
    assert len(err.splitlines()) == 1 and err.endswith("\n")
    assert re.fullmatch(pattern.format(tmp=tmp_path, out=out_dir) + ".*\n", err), err
    assert_nothing_written(out_dir)


def test_cli_usage_errors_exit_2(capsys) -> None:
    code, err = cli_error(capsys, "timm2torch", "--heads", "0", "a.pth", "b.safetensors")
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: Invalid value for '--heads'")


def test_cli_disk_errors_are_one_line_not_a_bug_report(pth, out_dir, capsys, monkeypatch) -> None:
    from helpers.faults import disk_full_after

    disk_full_after(monkeypatch, tensors=1)
    code, err = cli_error(capsys, "timm2torch", str(pth), str(out_dir / "o.safetensors"), "-q",
                          "--heads", str(TINY_HEADS))
    assert (code, err) == (1, "error: No space left on device\n")
    assert_nothing_written(out_dir)


def test_cli_messages_are_kept_to_one_line_and_bugs_say_so(capsys) -> None:
    @click.command()
    @click.argument("what")
    def boom(what: str) -> None:
        raise VitConvertError("first line\nsecond line") if what == "ours" else KeyError("oops")

    with pytest.raises(SystemExit) as e:
        run(boom, ["ours"])
    assert e.value.code == 1 and capsys.readouterr().err == "error: first line second line\n"
    with pytest.raises(SystemExit) as e:
        run(boom, ["bug"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.splitlines() == [
        "error: unexpected KeyError: 'oops' (run with --debug for the traceback; please report it)"]


def test_cli_debug_shows_the_traceback(tmp_path, out_dir) -> None:
    (tmp_path / "empty.pth").touch()
    args = [sys.executable, "-m", "vitconvert", "timm2torch", str(tmp_path / "empty.pth"),
            str(out_dir / "o.safetensors")]
    plain = subprocess.run(args, capture_output=True, text=True, check=False)
    debug = subprocess.run([*args, "--debug"], capture_output=True, text=True, check=False)
    assert plain.returncode == debug.returncode == 1
    assert plain.stderr.splitlines() == [f"error: {tmp_path / 'empty.pth'} is empty (0 bytes), not a checkpoint file"]
    assert "Traceback (most recent call last)" in debug.stderr and "VitConvertError" in debug.stderr
    assert debug.stderr.splitlines()[-1] == plain.stderr.splitlines()[0]


@pytest.mark.parametrize("library, cli", [
    ("output o.safetensors exists; pass --force (force=True) to replace it",
     "error: output o.safetensors exists; pass --force to replace it"),
    ("width 72 has no standard head count; give it with --heads N (num_heads=N), or name the timm model with "
     "--model NAME", "error: width 72 has no standard head count; give it with --heads N, or name the timm model "
                     "with --model NAME"),
    ("d: directory has no image files; 1 sub-folder not searched (--recursive / recursive=True)",
     "error: d: directory has no image files; 1 sub-folder not searched (--recursive)"),
    ("--plot (plot=) needs matplotlib", "error: --plot needs matplotlib"),
    ("a model with pool='gap' (pool=gap) has no class token", "error: a model with pool='gap' (pool=gap) has no "
                                                              "class token"),  # not an option: left as it is
])
def test_cli_messages_name_the_option_without_its_python_keyword(capsys, library: str, cli: str) -> None:
    @click.command()
    def fails() -> None:
        raise VitConvertError(library)

    with pytest.raises(SystemExit) as e:
        run(fails, [])
    assert e.value.code == 1 and capsys.readouterr().err == cli + "\n"


def test_an_existing_output_through_the_cli_says_force_as_an_option(npz, out_dir, capsys) -> None:
    (out_dir / "o.safetensors").write_bytes(b"mine")
    code, err = cli_error(capsys, "jax2torch", str(npz), str(out_dir / "o.safetensors"))
    assert (code, err) == (1, f"error: output {out_dir / 'o.safetensors'} exists; pass --force to replace it\n")
