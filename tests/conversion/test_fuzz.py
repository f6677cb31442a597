"""Fuzzing: whatever the input, the only outcomes are a correct result or a VitConvertError.

A correct result: the output exists, is the only thing in the output directory, loads with
`load_model` and runs. An error: no output and no temporary file left in the output directory.
Any other exception fails the property, and hypothesis shrinks it to a minimal input.

Example counts are modest for CI; VITCONVERT_FUZZ_EXAMPLES=N runs N per property. The number of
examples each property ran is printed at the end of the session (see tests/FUZZING.md).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import struct
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import published_layouts as pl
from helpers.fuzz import FUZZ_COUNTS
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from vitconvert import VitConvertError, convert_jax, convert_timm, convert_torch, load_model, read_record
from vitconvert.formats.safetensors_file import read_header


def fuzz_settings(default: int) -> settings:
    n = int(os.environ.get("VITCONVERT_FUZZ_EXAMPLES") or default)
    return settings(max_examples=n, deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example])


# The tiny ViTs are 32 wide, not a standard width: timm2torch is told their heads.
TINY_HEADS = 2

# property -> {"examples": n, "ok": n, "error": n}; conftest prints it at the end of the session.
COUNTS: dict[str, dict[str, int]] = {}


@pytest.fixture(autouse=True, scope="module")
def _session_report(request):
    request.config.stash[FUZZ_COUNTS] = COUNTS


def count(prop: str, outcome: str) -> None:
    tally = COUNTS.setdefault(prop, {"examples": 0, "ok": 0, "error": 0})
    tally["examples"] += 1
    tally[outcome] += 1


# --- the outcome check -------------------------------------------------------------------------------

def forward_ok(model) -> None:
    """A loaded model runs (small models only: the fuzzed ones are tiny)."""
    cfg, dtype = model.config, next(model.parameters()).dtype  # a bfloat16 file gives a bfloat16 model
    if max(cfg.img_size) <= 64:
        width = cfg.num_classes or cfg.representation_size or cfg.embed_dim  # no head: the (pooler's) features
        with torch.inference_mode():
            out = model(torch.zeros(1, cfg.in_chans, *cfg.img_size, dtype=dtype))
        # no head: the (pooler's) features, pooled or (pool='none') every token
        assert out.shape == (1, width) if cfg.num_classes else (out.shape[0] == 1 and out.shape[-1] == width)


def outcome(prop: str, action: Callable[[], object], out_dir: Path | None = None, dst: Path | None = None) -> str:
    """Run `action`; anything but success or VitConvertError propagates and fails the property."""
    try:
        action()
    except VitConvertError as e:
        assert str(e).strip(), "an error must say something"
        if out_dir is not None:
            left = sorted(p.name for p in out_dir.iterdir())
            assert left == [], f"error ({e}) but the output directory holds {left}"
        kind = "error"
    else:
        kind = "ok"
        if out_dir is not None:
            assert sorted(p.name for p in out_dir.iterdir()) == [dst.name]
            forward_ok(load_model(dst))
    count(prop, kind)
    return kind


@contextlib.contextmanager
def fresh_dirs() -> Iterator[tuple[Path, Path]]:
    """Empty input and output directories, removed afterwards (hypothesis cannot use tmp_path)."""
    with tempfile.TemporaryDirectory(prefix="vitconvert-fuzz-") as base:
        (Path(base) / "in").mkdir()
        (Path(base) / "out").mkdir()
        yield Path(base) / "in", Path(base) / "out"


# --- shapes: the torch-free table the converters check against ------------------------------------------

@st.composite
def configs(draw):
    from vitconvert.core.config import ViTConfig

    heads = draw(st.integers(1, 4))
    hybrid = draw(st.sampled_from([None, (), (1,), (2, 1), (1, 1, 1)]))
    patch = draw(st.integers(1, 4))
    cfg = {"embed_dim": heads * draw(st.integers(1, 8)), "num_heads": heads, "depth": draw(st.integers(1, 3)),
           "mlp_dim": draw(st.integers(1, 40)), "num_classes": draw(st.integers(1, 12)), "patch_size": patch,
           "in_chans": draw(st.integers(1, 4)), "qkv_bias": draw(st.booleans()),
           "representation_size": draw(st.one_of(st.none(), st.integers(1, 9))),
           "hybrid_layers": hybrid, "hybrid_width": 32 * draw(st.integers(1, 2))}
    pool = draw(st.sampled_from(["token", "gap", "gap fc_norm", "distilled", "avgmax", "max", "map", "none"]))
    cfg.update(pool={"distilled": "token", "gap fc_norm": "gap"}.get(pool, pool), fc_norm=pool == "gap fc_norm",
               distilled=pool == "distilled", no_embed_class=draw(st.booleans()))
    if pool != "distilled":  # timm's family beside the first ViTs
        cfg.update(class_token=draw(st.booleans()) or pool == "token", reg_tokens=draw(st.integers(0, 2)),
                   final_norm=draw(st.booleans()) or pool == "gap fc_norm", pre_norm=draw(st.booleans()),
                   patch_bias=draw(st.booleans()), patch_norm=draw(st.booleans()),
                   pos_embed=draw(st.sampled_from(["learn", "none", "sincos2d"])),
                   norm=draw(st.sampled_from(["layernorm", "rmsnorm"])),
                   layer_scale=draw(st.booleans()), qk_norm=draw(st.booleans()), scale_attn_norm=draw(st.booleans()),
                   scale_mlp_norm=draw(st.booleans()), proj_bias=draw(st.booleans()),
                   mlp=draw(st.sampled_from(["mlp", "glu", "swiglu_packed", "swiglu"])),
                   block=draw(st.sampled_from(["pre_norm", "res_post", "parallel", "post_norm"])),
                   # the PyTorch sources' fields (torch2torch)
                   attn_head_dim=draw(st.one_of(st.none(), st.integers(1, 9))), patch_pre_norm=draw(st.booleans()),
                   hybrid_variant=draw(st.sampled_from(["bit", "jeonsworld"])) if hybrid and len(hybrid) > 1 else "bit")
        if cfg["pos_embed"] == "sincos2d":  # sin and cos of each axis: four channel groups of >= 2
            cfg["embed_dim"] = 8 * heads
        if cfg["mlp"] in ("glu", "swiglu_packed"):
            cfg["mlp_dim"] += cfg["mlp_dim"] % 2
        if cfg["block"] in ("res_post", "post_norm"):
            cfg["layer_scale"] = False
        if cfg["block"] == "parallel":
            cfg.update(mlp="mlp", scale_attn_norm=False, scale_mlp_norm=False, attn_head_dim=None)
        if not draw(st.integers(0, 3)):
            cfg["num_classes"], cfg["representation_size"] = 0, None
    stride = patch * (1 if hybrid is None else 4 * 2 ** max(len(hybrid) - 1, 0))
    cfg["img_size"] = (stride * draw(st.integers(1, 3)), stride * draw(st.integers(1, 3)))
    return ViTConfig(**cfg)


@fuzz_settings(40)
@given(configs())
def test_torch_free_shapes_are_the_models_state_dict(cfg) -> None:
    from helpers.timm_reference import model_shapes

    from vitconvert.core.param_shapes import param_shapes

    assert list(param_shapes(cfg).items()) == list(model_shapes(cfg).items())
    count("shapes = state dict", "ok")


# --- npz: key sets, shapes and dtypes -------------------------------------------------------------------

NPZ_BASES = {  # (arch, layout)
    "vit_jax": ("tiny", "vit_jax"),
    "big_vision scanned": ("tiny_big_vision_token", "big_vision_scanned"),
    "hybrid stem": ("tiny_hybrid_stem", "vit_jax"),
}
DTYPES = ["float16", "float64", ">f4", "int32", "int8", "bool", "complex64", "object", "V2", "V4", "U3",
          "structured"]


@functools.cache
def npz_base(name: str) -> dict[str, np.ndarray]:
    arch, layout = NPZ_BASES[name]
    return dict(pl.npz_arrays(pl.random_timm_vit(arch, seed=5), layout))


def key_names(existing: list[str]):
    """Plausible and implausible names: a real key with a part changed, or any text."""
    return st.one_of(
        st.builds(lambda k, old, new: k.replace(old, new, 1), st.sampled_from(existing),
                  st.sampled_from(["_0", "_1", "/", "kernel", "bias", "scale", "params/", "Transformer", "block1"]),
                  st.sampled_from(["_7", "_12", "//", "weight", "Bias", "", "opt/target/", "Transformer2", "block3"])),
        st.text(st.sampled_from("abcz019_/.[]-"), min_size=1, max_size=24),
        st.sampled_from(["cls", "pos_embedding", "MAPHead_0/probe", "head/kernel", "pre_logits/kernel",
                         "conv_root/kernel", "block1/unit1/conv1/kernel", "Transformer/encoderblock/LayerNorm_0/scale",
                         "Transformer/encoderblock_2/LayerNorm_0/scale", "embedding/kernel[0]"]),
    )


def new_shape(old: tuple[int, ...]):
    return st.one_of(
        st.lists(st.integers(0, 40), max_size=2).map(tuple),
        st.lists(st.integers(0, 10), min_size=3, max_size=4).map(tuple),
        st.tuples(st.integers(0, max(len(old) - 1, 0)), st.sampled_from([-1, 1, 2, -999])).map(
            lambda d: tuple((max(n + d[1], 0) if d[1] != -999 else 0) if i == d[0] else n for i, n in enumerate(old))),
        st.just(old[1:]), st.just((1, *old)), st.just(old[::-1]),
    )


class Mutated:
    """What was done to a base input, shown in hypothesis' report instead of every array."""

    def __init__(self, base: str, ops: list[str], value: object) -> None:
        self.base, self.ops, self.value = base, ops, value

    def __repr__(self) -> str:
        return f"Mutated({self.base!r}, ops={self.ops!r})"


def retype(array: np.ndarray, dtype: str, rng: np.random.Generator) -> np.ndarray:
    """`array`'s values (random ones if it was already retyped to something odd) stored as `dtype`."""
    if array.dtype.kind not in "fiub":
        array = rng.standard_normal(array.shape).astype(np.float32)
    if dtype == "object":
        return np.array([{"weights": 1}] * max(array.size, 1), dtype=object)
    if dtype in ("V2", "V4"):
        raw = rng.integers(0, 256, size=array.size * int(dtype[1]), dtype=np.uint8)
        return raw.view(dtype).reshape(array.shape)
    if dtype == "structured":
        out = np.zeros(array.shape, dtype=[("w", "<f4"), ("b", "<f4")])
        out["w"] = array
        return out
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):  # NaN or Inf cast to an int: any value will do
        warnings.simplefilter("ignore")
        return array.astype(dtype)


@st.composite
def mutated_npz(draw):
    name = draw(st.sampled_from(sorted(NPZ_BASES)))
    arrays = dict(npz_base(name))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    ops = []
    for _ in range(draw(st.integers(0, 4))):
        keys = sorted(arrays)
        op = draw(st.sampled_from(["drop", "rename", "add", "reshape", "retype", "nonfinite"]))
        if not keys and op != "add":
            continue
        key = draw(st.sampled_from(keys)) if keys else ""
        if op == "drop":
            del arrays[key]
        elif op == "rename":
            new = draw(key_names(keys))
            arrays[new] = arrays.pop(key)
            key = f"{key} as {new}"
        elif op == "add":
            shape = draw(new_shape((32,)))
            key = draw(key_names(keys or ["x"]))
            arrays[key] = rng.standard_normal(shape).astype(np.float32)
        elif op == "reshape":
            shape = draw(new_shape(arrays[key].shape))
            arrays[key] = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        elif op == "retype":
            arrays[key] = retype(arrays[key], draw(st.sampled_from(DTYPES)), rng)
        elif op == "nonfinite" and arrays[key].dtype.kind == "f" and arrays[key].size:
            arrays[key] = arrays[key].copy()
            arrays[key].flat[draw(st.integers(0, arrays[key].size - 1))] = draw(st.sampled_from([np.nan, np.inf]))
        ops.append(f"{op} {key}" + (f" -> {arrays[key].shape} {arrays[key].dtype}" if key in arrays else ""))
    return Mutated(name, ops, arrays)


@fuzz_settings(40)
@given(mutated_npz(), st.booleans(), st.sampled_from(["float32", "bfloat16"]))
def test_fuzz_npz_keys_shapes_and_dtypes(case: Mutated, allow_nonfinite: bool, dtype: str) -> None:
    with fresh_dirs() as (src_dir, out_dir):
        src, dst = src_dir / "f.npz", out_dir / "w.safetensors"
        with open(src, "wb") as f:
            np.savez(f, **case.value)
        outcome("npz keys/shapes/dtypes -> convert_jax",
                lambda: convert_jax(src, dst, allow_nonfinite=allow_nonfinite, dtype=dtype), out_dir, dst)


# --- npz / zip bytes --------------------------------------------------------------------------------------

@functools.cache
def npz_bytes(compressed: bool) -> tuple[bytes, tuple[int, ...]]:
    """A valid tiny npz and where its zip structures are (local headers, central directory)."""
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **npz_base("vit_jax"))
    raw = buf.getvalue()
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        marks = tuple(i.header_offset for i in z.infolist())
    return raw, marks + (raw.rfind(b"PK\x01\x02"), raw.rfind(b"PK\x05\x06"), raw.rfind(b"PK\x06\x06"))


@st.composite
def mutated_bytes(draw):
    compressed = draw(st.booleans())
    raw, marks = npz_bytes(compressed)
    data, ops = bytearray(raw), []
    for _ in range(draw(st.integers(1, 3))):
        # Half the time aim at a zip structure or an .npy header, where a change is most interesting.
        if draw(st.booleans()):
            pos = min(draw(st.sampled_from(marks)) + draw(st.integers(0, 160)), len(data) - 1)
        else:
            pos = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "truncate", "overwrite", "insert", "delete"]))
        if op == "flip":
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[pos:]
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[pos:pos + len(chunk)] = chunk
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[pos:pos + draw(st.integers(1, 8))]
        ops.append(f"{op} at {pos}")
        if not data:
            break
    return Mutated("deflated npz" if compressed else "stored npz", ops, bytes(data))


@fuzz_settings(60)
@given(mutated_bytes())
def test_fuzz_npz_bytes(case: Mutated) -> None:
    with fresh_dirs() as (src_dir, out_dir):
        src, dst = src_dir / "f.npz", out_dir / "w.safetensors"
        src.write_bytes(case.value)
        outcome("npz/zip bytes -> convert_jax", lambda: convert_jax(src, dst), out_dir, dst)


# --- safetensors headers ------------------------------------------------------------------------------------

@functools.cache
def weights_file() -> tuple[dict, bytes]:
    """The header (parsed) and data of a valid tiny weights file."""
    with fresh_dirs() as (src_dir, out_dir):
        torch.save(pl.random_timm_vit("tiny", seed=6).state_dict(), src_dir / "t.pth")
        convert_timm(src_dir / "t.pth", out_dir / "w.safetensors", num_heads=TINY_HEADS)
        raw = (out_dir / "w.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


# Record fields and values a weights file may well hold: the file must still load.
VALID_CHANGES = {
    "labels": st.none() | st.lists(st.text(max_size=12), min_size=10, max_size=10),  # the file's 10 classes
    "notes": st.lists(st.text(max_size=12), max_size=3),
    "head_is_zero": st.booleans(),
    "source.file": st.text(max_size=12),
    "source.sha256": st.none() | st.text("0123456789abcdef", min_size=64, max_size=64),
    "preprocess.crop_pct": st.floats(0.01, 1.0),
    "preprocess.mean": st.lists(st.floats(-2, 2) | st.integers(-2, 2), min_size=3, max_size=3),
    "preprocess.interpolation": st.sampled_from(["bicubic", "bilinear", "bilinear_tf"]),
    "config.ln_eps": st.floats(1e-12, 1.0) | st.integers(1, 3),
    "config.act": st.sampled_from(["gelu", "gelu_tanh"]),
    "config.num_heads": st.sampled_from([1, 2, 4, 8, 16, 32]),
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)


def assemble(header: object, data: bytes, length: int | None = None, raw_header: bytes | None = None) -> bytes:
    body = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(body) if length is None else length) + body + data


@st.composite
def mutated_header(draw):
    header, data = weights_file()
    header = json.loads(json.dumps(header))
    record = json.loads(header["__metadata__"]["vitconvert"])
    tensors = sorted(k for k in header if k != "__metadata__")
    ops = []
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["entry field", "offsets", "shape", "drop tensor", "add tensor", "metadata",
                                   "record field", "record section field", "record text",
                                   *["valid record change"] * 3]))
        name, where, value = draw(st.sampled_from(tensors)), "", None
        if op == "valid record change" and record is not None:  # so that some files still load
            where = draw(st.sampled_from(sorted(VALID_CHANGES)))
            value = draw(VALID_CHANGES[where])
            section, _, field = where.rpartition(".")
            target = record.get(section) if section else record
            if isinstance(target, dict):  # an earlier op may have replaced the section
                target[field] = value
        elif op == "entry field" and name in header:
            where, value = draw(st.sampled_from(["dtype", "shape", "data_offsets"])), draw(json_values)
            header[name][where] = value
        elif op == "offsets" and name in header:
            value = [draw(st.integers(-8, len(data) + 64)), draw(st.integers(-8, 2 ** 64))]
            header[name]["data_offsets"] = value
        elif op == "shape" and name in header:
            value = header[name]["shape"] = list(draw(new_shape(tuple(header[name]["shape"]))))
        elif op == "drop tensor":
            header.pop(name, None)
        elif op == "add tensor":
            name = draw(key_names(tensors))
            value = header[name] = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
        elif op == "metadata":
            value = header["__metadata__"] = draw(json_values)
        elif op == "record field" and record is not None:
            where = draw(st.sampled_from(sorted(record)))
            value = record[where] = draw(json_values)
        elif op == "record section field" and record is not None:
            section = draw(st.sampled_from(["config", "preprocess", "source"]))
            if isinstance(record.get(section), dict):
                field = draw(st.sampled_from(sorted(record[section]) + ["extra"]))
                where, value = f"{section}.{field}", draw(json_values | st.integers(-3, 300))
                record[section][field] = value
        elif op == "record text":
            value = header["__metadata__"] = {"vitconvert": draw(st.text(max_size=40))}
            record = None
        subject = name if op in ("entry field", "offsets", "shape", "drop tensor", "add tensor") else ""
        ops.append(f"{op} {subject}{where} = {value!r}")
    if record is not None and isinstance(header.get("__metadata__"), dict) and "vitconvert" in header["__metadata__"]:
        header["__metadata__"]["vitconvert"] = json.dumps(record)
    return Mutated("tiny weights file", ops, assemble(header, data))


@st.composite
def foreign_safetensors(draw):
    kind = draw(st.sampled_from(["garbage", "random length", "random JSON", "JSON object of entries"]))
    data = draw(st.binary(max_size=64))
    if kind == "garbage":
        return draw(st.binary(max_size=200))
    if kind == "random length":
        return assemble(None, data, draw(st.integers(0, 2 ** 64 - 1)), raw_header=draw(st.binary(max_size=64)))
    if kind == "random JSON":
        return assemble(draw(json_values), data)
    entries = draw(st.dictionaries(st.text(max_size=6), st.fixed_dictionaries(
        {"dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "BOOL", "X"]) | json_values,
         "shape": st.lists(st.integers(-1, 5), max_size=3) | json_values,
         "data_offsets": st.lists(st.integers(-1, 80), min_size=2, max_size=2) | json_values}), max_size=3))
    return assemble(entries, data)


def check_all_readers(prop: str, data: bytes) -> None:
    with fresh_dirs() as (src_dir, out_dir):
        src, dst = src_dir / "f.safetensors", out_dir / "w.safetensors"
        src.write_bytes(data)
        outcome(f"{prop} -> read_header", lambda: read_header(src))
        outcome(f"{prop} -> read_record", lambda: read_record(src))
        outcome(f"{prop} -> load_model", lambda: forward_ok(load_model(src)))
        outcome(f"{prop} -> convert_timm", lambda: convert_timm(src, dst, num_heads=TINY_HEADS), out_dir, dst)


@fuzz_settings(60)
@given(mutated_header())
def test_fuzz_weights_file_headers_and_records(case: Mutated) -> None:
    check_all_readers("weights-file header/record mutations", case.value)


@fuzz_settings(60)
@given(foreign_safetensors())
def test_fuzz_foreign_safetensors(data: bytes) -> None:
    check_all_readers("random safetensors bytes/JSON", data)


# --- timm state dicts -----------------------------------------------------------------------------------------

TIMM_BASES = {"token": "tiny", "gap": "tiny_gap"}
TORCH_DTYPES = [torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.uint8, torch.bool, torch.complex64]


@functools.cache
def timm_base(name: str) -> dict[str, torch.Tensor]:
    return pl.random_timm_vit(TIMM_BASES[name], seed=7).state_dict()


@st.composite
def mutated_state_dict(draw):
    base = draw(st.sampled_from(sorted(TIMM_BASES)))
    state, ops = mutate_state(draw, timm_base(base),
                              ["dist_token", "cls_token", "pre_logits.fc.weight", "fc_norm.weight",
                               "blocks.2.norm1.weight", "head_dist.weight", "norm_pre.weight", "x"],
                              ["blocks.0", "blocks.1", "weight", "bias", "norm", "attn", "head"],
                              ["blocks.2", "blocks.9", "Weight", "", "fc_norm", "attention", "head_dist"])
    form = draw(st.sampled_from(["plain", "model", "state_dict", "module.", "extras", "safetensors"]))
    return Mutated(f"{base} as {form}", ops, (form, state))


def mutate_state(draw, base: dict[str, torch.Tensor], added: list[str], parts: list[str],
                 others: list[str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Up to 4 edits of a state dict: keys dropped, renamed (a part of the name swapped for another), added,
    reshaped, retyped, or given a NaN or Inf."""
    state, ops = dict(base), []
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 16)))
    for _ in range(draw(st.integers(0, 4))):
        keys = sorted(state)
        op = draw(st.sampled_from(["drop", "rename", "add", "reshape", "retype", "nonfinite"]))
        key = draw(st.sampled_from(keys)) if keys else ""
        if op == "drop" and keys:
            del state[key]
        elif op == "rename" and keys:
            new = draw(st.one_of(
                st.builds(lambda k, old, new: k.replace(old, new, 1), st.sampled_from(keys),
                          st.sampled_from(parts), st.sampled_from(others)),
                st.text(st.sampled_from("abz09._"), min_size=1, max_size=20)))
            state[new] = state.pop(key)
            key = f"{key} as {new}"
        elif op == "add":
            key = draw(st.sampled_from(added))
            state[key] = torch.randn(draw(new_shape((1, 1, 32))), generator=g)
        elif op == "reshape" and keys:
            state[key] = torch.randn(draw(new_shape(tuple(state[key].shape))), generator=g) * 0.1
        elif op == "retype" and keys:
            state[key] = state[key].to(draw(st.sampled_from(TORCH_DTYPES)))
        elif op == "nonfinite" and keys and state[key].is_floating_point() and state[key].numel():
            state[key] = state[key].clone()
            state[key].view(-1)[draw(st.integers(0, state[key].numel() - 1))] = draw(
                st.sampled_from([float("nan"), float("inf")]))
        ops.append(f"{op} {key}" + (f" -> {tuple(state[key].shape)} {state[key].dtype}" if key in state else ""))
    return state, ops


@fuzz_settings(40)
@given(mutated_state_dict(), st.booleans(), st.sampled_from(["float32", "float16"]))
def test_fuzz_timm_state_dicts(case: Mutated, allow_nonfinite: bool, dtype: str) -> None:
    form, state = case.value
    with fresh_dirs() as (src_dir, out_dir):
        src, dst = src_dir / ("f.safetensors" if form == "safetensors" else "f.pth"), out_dir / "w.safetensors"
        if form == "safetensors":
            try:
                save_file({k: v.contiguous() for k, v in state.items()}, str(src))
            except Exception:  # noqa: BLE001  (a dtype safetensors cannot store: not what this property is about)
                assume(False)
        else:
            obj = {"plain": state, "model": {"model": state, "epoch": 3}, "state_dict": {"state_dict": state},
                   "module.": {f"module.{k}": v for k, v in state.items()},
                   "extras": {**state, "epoch": 3, "args": {"lr": 0.1}}}[form]
            torch.save(obj, src)
        outcome("timm state dicts -> convert_timm",
                lambda: convert_timm(src, dst, num_heads=TINY_HEADS, allow_nonfinite=allow_nonfinite, dtype=dtype),
                out_dir, dst)


# --- torch2torch: vit-pytorch, jeonsworld's ViT-pytorch, nn.TransformerEncoder state dicts ----------------------

class _EncoderViT(torch.nn.Module):
    """A ViT on nn.TransformerEncoder under torch2torch's default part names."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = torch.nn.Conv2d(3, 32, 8, 8)
        self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, 32))
        self.pos_embed = torch.nn.Parameter(torch.zeros(1, 17, 32))
        layer = torch.nn.TransformerEncoderLayer(32, 2, 64, dropout=0.0, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = torch.nn.Linear(32, 10)


@functools.cache
def torch_source_base(source: str) -> dict[str, torch.Tensor]:
    from helpers.jeonsworld import VisionTransformer as Jeonsworld
    from vit_pytorch import ViT

    model = {"lucidrains": lambda: ViT(image_size=32, patch_size=8, num_classes=10, dim=32, depth=2, heads=2,
                                       dim_head=24, mlp_dim=64),
             "jeonsworld": lambda: Jeonsworld(hidden=32, depth=2, heads=2, mlp_dim=64, img_size=32, num_classes=10,
                                              patch=8),
             "torch-encoder": _EncoderViT}[source]()
    return pl.fill_random_(model, seed=7).state_dict()


TORCH_SOURCE_ARGS = {"lucidrains": {"heads": 2}, "jeonsworld": {"num_heads": 2}, "torch-encoder": {"nhead": 2}}


@st.composite
def mutated_torch_source(draw):
    source = draw(st.sampled_from(sorted(TORCH_SOURCE_ARGS)))
    state, ops = mutate_state(
        draw, torch_source_base(source),
        ["cls_token", "pos_embedding", "mlp_head.0.weight", "transformer.norm.weight",
         "transformer.layers.2.0.norm.weight", "to_patch_embedding.1.weight",
         "transformer.encoder.layer.2.ffn.fc1.weight", "encoder.norm.weight", "x"],
        ["layers.0", "layers.1", "weight", "bias", "norm", "to_out.0", "net.4", "cls_token", "head", "in_proj_"],
        ["layers.2", "layers.9", "Weight", "", "fn.norm", "to_out", "net.3", "cls", "mlp_head.1", "q_proj_"])
    args = draw(st.sampled_from([TORCH_SOURCE_ARGS[source], {}, {"image_size": 32, **TORCH_SOURCE_ARGS[source]},
                                 {"pool": "mean"}, {"heads": 3}, {"nhead": 5}]))
    return Mutated(f"{source} with {args}", ops, (source, args, state))


@fuzz_settings(40)
@given(mutated_torch_source())
def test_fuzz_torch_source_state_dicts(case: Mutated) -> None:
    source, args, state = case.value
    with fresh_dirs() as (src_dir, out_dir):
        src, dst = src_dir / "f.pth", out_dir / "w.safetensors"
        torch.save(state, src)
        outcome("torch state dicts -> convert_torch", lambda: convert_torch(src, dst, source=source, model_args=args),
                out_dir, dst)


# --- transformers checkpoints -------------------------------------------------------------------------------

HF_BASES = {  # our config, exported with export_hf: no transformers needed to make the checkpoints
    "ViT classifier": dict(num_classes=5),
    "DeiT distilled": dict(num_classes=5, distilled=True),
    "ViTModel with pooler": dict(num_classes=0, representation_size=16),
    "Dinov2 SwiGLU": dict(num_classes=0, layer_scale=True, mlp="swiglu_packed", act="silu", mlp_dim=176),
}
HF_KEYS = ["model_type", "architectures", "hidden_size", "num_hidden_layers", "num_attention_heads",
           "intermediate_size", "hidden_act", "layer_norm_eps", "image_size", "patch_size", "num_channels",
           "qkv_bias", "id2label", "mlp_ratio", "use_swiglu_ffn", "pooler_output_size", "pooler_act", "head_dim"]
PROCESSOR_KEYS = ["image_processor_type", "size", "crop_size", "do_center_crop", "resample", "image_mean",
                  "image_std", "do_rescale", "rescale_factor", "do_normalize", "do_resize", "crop_pct"]
JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 100), st.floats(), st.text(max_size=4),
    st.lists(st.integers(-1, 64), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(-1, 300), max_size=3),
    st.sampled_from([2 ** 64, 1e308, "gelu", "swin", "deit", "dinov2", [32, 32], {"shortest_edge": 0},
                     {"height": 32, "width": 32}, {"0": "a", "1": 2}, "ViTImageProcessor", "ConvNextImageProcessor"]))


@functools.cache
def hf_base(name: str) -> dict[str, bytes]:
    """The files of an exported transformers directory, by name."""
    from helpers.vit_weights import our_vit, write_test_weights

    from vitconvert import ViTConfig, export_hf

    cfg = ViTConfig(img_size=(32, 32), patch_size=8, embed_dim=32, depth=2, num_heads=4, **{"mlp_dim": 64,
                                                                                          **HF_BASES[name]})
    with tempfile.TemporaryDirectory() as tmp:
        src = write_test_weights(Path(tmp) / "w.safetensors", our_vit(cfg).state_dict(), cfg)
        export_hf(src, Path(tmp) / "hf")
        return {p.name: p.read_bytes() for p in (Path(tmp) / "hf").iterdir()}


@st.composite
def mutated_hf_checkpoint(draw):
    base = draw(st.sampled_from(sorted(HF_BASES)))
    files, ops = dict(hf_base(base)), []
    config, processor = json.loads(files["config.json"]), json.loads(files["preprocessor_config.json"])
    with tempfile.TemporaryDirectory() as tmp:  # the tensors, as torch tensors, to mutate
        (Path(tmp) / "m.safetensors").write_bytes(files["model.safetensors"])
        from safetensors.torch import load_file

        tensors = load_file(Path(tmp) / "m.safetensors")
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 16)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["config", "drop config key", "processor", "no processor", "no config",
                                   "drop tensor", "rename tensor", "reshape tensor", "retype tensor", "pickle"]))
        if op == "config":
            key = draw(st.sampled_from(HF_KEYS))
            config[key] = draw(JSON_VALUES)
            ops.append(f"config {key} = {config[key]!r}")
        elif op == "drop config key" and config:
            key = draw(st.sampled_from(sorted(config)))
            del config[key]
            ops.append(f"config without {key}")
        elif op == "processor":
            key = draw(st.sampled_from(PROCESSOR_KEYS))
            processor[key] = draw(JSON_VALUES)
            ops.append(f"processor {key} = {processor[key]!r}")
        elif op in ("no processor", "no config", "pickle"):
            ops.append(op)
        elif tensors:
            key = draw(st.sampled_from(sorted(tensors)))
            if op == "drop tensor":
                del tensors[key]
            elif op == "rename tensor":
                tensors[key.replace(draw(st.sampled_from(["layer.0", "weight", "vit.", "query", "classifier"])),
                                    draw(st.sampled_from(["layer.5", "bias", "", "key", "pooler.dense"])), 1)] = \
                    tensors.pop(key)
            elif op == "reshape tensor":
                tensors[key] = torch.randn(draw(new_shape(tuple(tensors[key].shape))), generator=g)
            else:
                tensors[key] = tensors[key].to(draw(st.sampled_from([torch.float16, torch.bfloat16, torch.int64,
                                                                     torch.bool])))
            ops.append(f"{op} {key}")
    return Mutated(base, ops, (config, processor, tensors, ops))


@fuzz_settings(40)
@given(mutated_hf_checkpoint())
def test_fuzz_transformers_checkpoints(case: Mutated) -> None:
    from vitconvert import convert_hf

    config, processor, tensors, ops = case.value
    with fresh_dirs() as (src_dir, out_dir):
        if "no config" not in ops:
            (src_dir / "config.json").write_text(json.dumps(config))
        if "no processor" not in ops:
            (src_dir / "preprocessor_config.json").write_text(json.dumps(processor))
        if "pickle" in ops:
            torch.save(tensors, src_dir / "pytorch_model.bin")
        else:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(src_dir / "model.safetensors"),
                      metadata={"format": "pt"})
        dst = out_dir / "w.safetensors"
        outcome("transformers checkpoints -> convert_hf", lambda: convert_hf(src_dir, dst), out_dir, dst)


# --- image bytes -----------------------------------------------------------------------------------

def _seed_images() -> list[bytes]:
    """Small valid images in every format vitpredict reads, to mutate."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (12, 17, 3), dtype=np.uint8))
    seeds = []
    for fmt, image in [("JPEG", rgb), ("PNG", rgb.convert("RGBA")), ("WEBP", rgb), ("GIF", rgb.convert("P")),
                       ("BMP", rgb), ("TIFF", rgb.convert("CMYK")), ("PNG", rgb.convert("I;16"))]:
        buf = io.BytesIO()
        image.save(buf, fmt)
        seeds.append(buf.getvalue())
    return seeds


IMAGE_SEEDS = _seed_images()


@st.composite
def image_bytes(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(IMAGE_SEEDS)))
    how = draw(st.sampled_from(["intact", "truncate", "flip", "splice", "random"]))
    if how == "truncate":
        del data[draw(st.integers(0, len(data) - 1)):]
    elif how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
    elif how == "splice":
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=64))
    elif how == "random":
        data = bytearray(draw(st.binary(max_size=256)))
    return bytes(data)


@fuzz_settings(60)
@given(image_bytes())
def test_image_bytes_give_a_model_input_or_a_clear_error(data: bytes) -> None:
    from vitconvert.formats.weights_file import Preprocess
    from vitconvert.inference.images import load_rgb
    from vitconvert.inference.transform import to_tensor

    pre = Preprocess(size=(32, 48), resize="crop", crop_pct=0.9, interpolation="bicubic")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "image"
        path.write_bytes(data)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Pillow warns about some truncated files; errors are what count
                x = to_tensor(load_rgb(path, max_pixels=1 << 20), pre)
        except VitConvertError:
            count("image bytes -> model input", "error")
            return
    assert x.shape == (3, 32, 48) and x.dtype == torch.float32 and torch.isfinite(x).all()
    count("image bytes -> model input", "ok")
