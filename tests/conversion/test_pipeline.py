"""`vitconvert convert` and `vitconvert.convert`: one pipeline for every source format.

Without --from, the file's own format is recognised and the written file is byte for byte the one the
format's own command (jax2torch, timm2torch, hf2torch, torch2torch) writes; every source tensor is converted
or listed as left out, with its reason; the shared checks come before anything is read.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import big_vision_layouts as bv
from helpers import jeonsworld
from helpers import published_layouts as pl
from helpers.cli import vitconvert_cli as vitconvert
from helpers.timm_reference import timm_vit
from safetensors.torch import save_file

from vitconvert import VitConvertError, convert, read_record
from vitconvert.formats.weights_file import FORMAT_VERSION

vit_pytorch = pytest.importorskip("vit_pytorch")


# --- each kind of file: SRC -> (its own command with its options, the format detection must find) ----------

def jax_vit_jax(tmp_path):
    pl.write_npz(pl.random_timm_vit("tiny"), tmp_path / "src.npz", "vit_jax")
    return tmp_path / "src.npz", ["jax2torch"]


def jax_big_vision(tmp_path):
    bv.write_npz(tmp_path / "src.npz", bv.with_prefix(bv.random_params(bv.BigVision(pool="map")), "params/"))
    return tmp_path / "src.npz", ["jax2torch"]


def jax_two_tower(tmp_path):
    bv.write_npz(tmp_path / "src.npz", bv.two_tower(bv.random_params(bv.BigVision())))
    return tmp_path / "src.npz", ["jax2torch"]


def timm_plain(tmp_path):
    torch.save(timm_vit("vit_tiny_patch16_224", depth=2).state_dict(), tmp_path / "src.pth")
    return tmp_path / "src.pth", ["timm2torch"]


def timm_wrapped_safetensors(tmp_path):
    torch.save({"model": timm_vit("vit_tiny_patch16_224", depth=2).state_dict()}, tmp_path / "src.pth")
    return tmp_path / "src.pth", ["timm2torch"]


def timm_safetensors(tmp_path):
    save_file(timm_vit("vit_tiny_patch16_224", depth=2).state_dict(), tmp_path / "src.safetensors")
    return tmp_path / "src.safetensors", ["timm2torch"]


def dino_teacher(tmp_path):
    torch.save({"teacher": {**{f"backbone.{k}": v for k, v in
                               timm_vit("vit_small_patch16_224", num_classes=0, depth=2).state_dict().items()},
                            **DINO_HEAD}}, tmp_path / "src.pth")
    return tmp_path / "src.pth", ["timm2torch"]


def hf_directory(tmp_path):
    from helpers.hf import random_hf

    random_hf("ViTForImageClassification").save_pretrained(tmp_path / "src")
    return tmp_path / "src", ["hf2torch"]


def hf_weights_file(tmp_path):
    from helpers.hf import random_hf

    random_hf("Dinov2Model").save_pretrained(tmp_path / "src")
    return tmp_path / "src" / "model.safetensors", ["hf2torch"]


def lucidrains(tmp_path):
    model = vit_pytorch.ViT(image_size=32, patch_size=8, num_classes=10, dim=32, depth=2, mlp_dim=64, heads=2,
                            dim_head=16)
    torch.save(pl.fill_random_(model, 0).state_dict(), tmp_path / "src.pt")
    return tmp_path / "src.pt", ["torch2torch", "--source", "lucidrains", "--model-args", '{"heads": 2}']


def jeonsworld_vit(tmp_path):
    model = jeonsworld.VisionTransformer(hidden=32, depth=2, heads=2, mlp_dim=64, img_size=32, num_classes=10, patch=8)
    torch.save(pl.fill_random_(model, 0).state_dict(), tmp_path / "src.bin")
    return tmp_path / "src.bin", ["torch2torch", "--source", "jeonsworld", "--model-args", '{"num_heads": 2}']


def torch_encoder(tmp_path):
    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    state = {f"encoder.{k}": v for k, v in torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
             .state_dict().items()}
    g = torch.Generator().manual_seed(0)
    state |= {"patch_embed.weight": torch.randn(32, 3, 8, 8, generator=g), "patch_embed.bias": torch.randn(32),
              "cls_token": torch.randn(1, 1, 32), "pos_embed": torch.randn(1, 17, 32),
              "head.weight": torch.randn(10, 32), "head.bias": torch.randn(10)}
    torch.save(state, tmp_path / "src.pth")
    return tmp_path / "src.pth", ["torch2torch", "--source", "torch-encoder", "--model-args", '{"nhead": 4}']


DINO_HEAD = {"head.mlp.0.weight": torch.randn(64, 384), "head.mlp.0.bias": torch.randn(64),
             "head.last_layer.weight_g": torch.randn(100, 1), "head.last_layer.weight_v": torch.randn(100, 64)}

KINDS = {"JAX vit_jax": (jax_vit_jax, "jax"), "JAX big_vision MAP head": (jax_big_vision, "jax"),
         "JAX two-tower": (jax_two_tower, "jax"), "timm state dict": (timm_plain, "timm"),
         "timm under 'model'": (timm_wrapped_safetensors, "timm"), "timm safetensors": (timm_safetensors, "timm"),
         "DINO teacher": (dino_teacher, "timm"), "hf directory": (hf_directory, "hf"),
         "hf weights file": (hf_weights_file, "hf"), "vit-pytorch": (lucidrains, "lucidrains"),
         "jeonsworld": (jeonsworld_vit, "jeonsworld"), "nn.TransformerEncoder": (torch_encoder, "torch-encoder")}


@pytest.mark.parametrize("kind", list(KINDS))
def test_convert_without_from_writes_the_file_the_formats_own_command_writes(tmp_path, capsys, kind: str) -> None:
    src, own = KINDS[kind][0](tmp_path)
    code, _, err = vitconvert(capsys, *own[:1], src, tmp_path / "own.safetensors", *own[1:], "-q")
    assert code == 0, err
    pairs = zip(own[1::2], own[2::2], strict=True)
    extra = [a for flag, value in pairs if flag == "--model-args" for a in (flag, value)]
    code, out, err = vitconvert(capsys, "convert", src, tmp_path / "any.safetensors", *extra, "--json")
    assert code == 0, err
    assert json.loads(out)["format"] == KINDS[kind][1]
    assert (tmp_path / "any.safetensors").read_bytes() == (tmp_path / "own.safetensors").read_bytes()


def test_every_source_tensor_is_converted_or_left_out_with_its_reason(tmp_path, capsys) -> None:
    src, _ = dino_teacher(tmp_path)
    code, out, err = vitconvert(capsys, "convert", src, tmp_path / "out.safetensors", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert set(report["left_out"]) == set(DINO_HEAD)
    assert all("DINO's projection head" in reason for reason in report["left_out"].values())
    state = torch.load(src, weights_only=True)["teacher"]
    converted = {k.removeprefix("backbone.") for k in state if k not in DINO_HEAD}
    from safetensors import safe_open

    with safe_open(str(tmp_path / "out.safetensors"), "np") as f:
        assert set(f.keys()) == converted
    assert any(n.startswith("source tensors left out: head.") for n in report["record"]["notes"])
    assert read_record(tmp_path / "out.safetensors").notes == tuple(report["record"]["notes"])


@pytest.mark.parametrize(("make", "left"), [
    (jax_two_tower, {"params/txt/head/kernel": "the text tower", "params/t": "a scalar of the image-text loss"}),
    (lucidrains, None)])
def test_left_out_keys_are_named_in_the_record(tmp_path, make, left) -> None:
    src, _ = make(tmp_path)
    record = convert(src, tmp_path / "out.safetensors", **({"model_args": {"heads": 2}} if left is None else {}))
    notes = " ".join(record.notes)
    for key, reason in (left or {}).items():
        assert key in notes and reason in notes
    if left is None:  # a vit-pytorch ViT with its class token: nothing is left out
        assert "left out" not in notes


def test_a_vit_pytorch_empty_class_token_is_left_out_with_its_reason(tmp_path, capsys) -> None:
    model = vit_pytorch.ViT(image_size=32, patch_size=8, num_classes=10, dim=32, depth=2, mlp_dim=64, heads=2,
                            dim_head=16, pool="mean")
    state = pl.fill_random_(model, 0).state_dict()
    if state["cls_token"].numel():  # releases before 1.16 keep (and average) a class token
        pytest.skip("this vit-pytorch keeps a class token under mean pooling")
    torch.save(state, tmp_path / "src.pt")
    code, out, err = vitconvert(capsys, "convert", tmp_path / "src.pt", tmp_path / "o.safetensors", "--json",
                                "--model-args", '{"heads": 2}')
    assert code == 0, err
    assert list(json.loads(out)["left_out"]) == ["cls_token"]


def test_two_formats_that_fit_are_refused_naming_their_from_values(tmp_path, capsys) -> None:
    state = timm_vit("vit_tiny_patch16_224", depth=2).state_dict()
    layer = torch.nn.TransformerEncoderLayer(192, 3, 64, batch_first=True)
    state |= {f"extra.layers.0.{k}": v for k, v in layer.state_dict().items()}
    torch.save(state, tmp_path / "both.pth")
    code, _, err = vitconvert(capsys, "convert", tmp_path / "both.pth", tmp_path / "o.safetensors")
    assert code == 1 and len(err.splitlines()) == 1
    assert "fits more than one source format" in err and "--from timm" in err and "--from torch-encoder" in err
    assert not (tmp_path / "o.safetensors").exists()


def test_a_file_no_format_fits_says_what_it_is_and_what_was_looked_for(tmp_path, capsys) -> None:
    np.savez(tmp_path / "other.npz", weights=np.zeros(3, np.float32))
    code, _, err = vitconvert(capsys, "convert", tmp_path / "other.npz", tmp_path / "o.safetensors")
    assert code == 1 and len(err.splitlines()) == 1
    assert "a NumPy .npz archive" in err and "its keys begin: weights" in err
    assert "embedding/kernel" in err and "patch_embed.proj.weight" in err and "--from" in err


def test_our_own_file_as_source_is_recognised_by_every_command(tmp_path, capsys) -> None:
    src, _ = timm_plain(tmp_path)
    convert(src, tmp_path / "ours.safetensors")
    for command in ("convert", "timm2torch"):
        code, _, err = vitconvert(capsys, command, tmp_path / "ours.safetensors", tmp_path / "again.safetensors")
        assert code == 1
        ours = tmp_path / "ours.safetensors"
        assert err.strip() == (f"error: {ours} is already a vitconvert weights file (format "
                               f"version {FORMAT_VERSION}): use it as it is (vitpredict --weights {ours})")


@pytest.mark.parametrize(("options", "flag"), [(["--gelu", "erf"], "--gelu"), (["--heads", "3"], "--heads"),
                                               (["--map", "head=fc"], "--map")])
def test_an_option_the_format_does_not_take_is_a_one_line_usage_error(tmp_path, capsys, options, flag) -> None:
    src, _ = jax_vit_jax(tmp_path) if flag != "--gelu" else timm_plain(tmp_path)
    code, _, err = vitconvert(capsys, "convert", src, tmp_path / "o.safetensors", *options)
    assert code == 2 and len(err.splitlines()) == 1
    assert f"{flag} does not apply to --from" in err and not (tmp_path / "o.safetensors").exists()


def test_the_python_face_refuses_an_option_the_format_does_not_take(tmp_path) -> None:
    src, _ = jax_vit_jax(tmp_path)
    takes = r"\(it takes gelu, catalog, tokenizer, image_only\)"
    with pytest.raises(VitConvertError, match=r"option model does not apply to --from jax " + takes):
        convert(src, tmp_path / "o.safetensors", model="vit_tiny_patch16_224")


@pytest.mark.parametrize("make", [jax_vit_jax, timm_plain, hf_directory, jeonsworld_vit])
def test_dtype_and_output_are_checked_before_the_source_is_read(tmp_path, monkeypatch, make) -> None:
    src, _ = make(tmp_path)
    (tmp_path / "exists.safetensors").write_bytes(b"x")
    from vitconvert.conversion import pipeline

    def no_reading(*args, **kwargs):
        raise AssertionError("the source was read")

    monkeypatch.setattr(pipeline, "probe", no_reading)
    monkeypatch.setattr(pipeline, "source_format", no_reading)
    with pytest.raises(VitConvertError, match="dtype"):
        convert(src, tmp_path / "o.safetensors", dtype="int8")
    with pytest.raises(VitConvertError, match="exists"):
        convert(src, tmp_path / "exists.safetensors")


@pytest.mark.parametrize("name", ["out.txt", "out", "out.npz"])
@pytest.mark.parametrize("command", [["convert"], ["jax2torch"]])
def test_an_output_not_named_safetensors_is_refused_naming_the_extension(capsys, tmp_path, name, command) -> None:
    src, _ = jax_vit_jax(tmp_path)
    code, _, err = vitconvert(capsys, *command, str(src), str(tmp_path / name))
    assert code == 1 and err.count("\n") == 1 and "give a name ending in .safetensors" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.npz"]


@pytest.mark.parametrize("make", [timm_plain, jeonsworld_vit])
@pytest.mark.parametrize("named", [False, True])
def test_a_pickle_is_read_once_to_recognise_and_convert_it(tmp_path, monkeypatch, make, named) -> None:
    src, command = make(tmp_path)
    source, options = ("timm", {}) if command[0] == "timm2torch" else ("jeonsworld", {"model_args": {"num_heads": 2}})
    real, loads = torch.load, []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    convert(src, tmp_path / "o.safetensors", source=source if named else None, **options)
    assert loads == [src]


def test_from_names_every_format_and_help_lists_them(capsys) -> None:
    from vitconvert.conversion.source import FORMATS

    code, out, _ = vitconvert(capsys, "convert", "--help")
    assert code == 0
    for name in FORMATS:
        assert f"  {name} " in out
    code, _, err = vitconvert(capsys, "convert", "a.npz", "b.safetensors", "--from", "onnx")
    assert code == 2 and "'onnx' is not a format" in err


def test_a_truncated_npz_is_called_truncated(tmp_path, capsys) -> None:
    src, _ = jax_vit_jax(tmp_path)
    raw = src.read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    for command in (["jax2torch"], ["convert", "--from", "jax"], ["convert"]):
        code, _, err = vitconvert(capsys, command[0], tmp_path / "cut.npz", tmp_path / "o.safetensors", *command[1:])
        assert code == 1 and "truncated" in err, err


def test_converting_an_npz_never_imports_torch(tmp_path) -> None:
    """Recognising the format looks at every format's marks; none may import torch to do it (a cold
    `vitconvert convert x.npz` took 1.8 s instead of 0.3 s while one did)."""
    import subprocess
    import sys

    src, _ = jax_vit_jax(tmp_path)
    code = ("import sys; from vitconvert.cli import main; sys.argv = ['vitconvert', 'convert', sys.argv[1], "
            "sys.argv[2], '-q']\ntry: main()\nexcept SystemExit as e: assert not e.code, e.code\n"
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(src), str(tmp_path / "o.safetensors")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False" and (tmp_path / "o.safetensors").is_file()


def test_a_fifo_is_refused_before_detection_reads_it(tmp_path, capsys) -> None:
    import os

    os.mkfifo(tmp_path / "pipe.npz")
    code, _, err = vitconvert(capsys, "convert", tmp_path / "pipe.npz", tmp_path / "o.safetensors")
    assert code == 1 and "pipe.npz is not a regular file" in err
