"""The weights file: a versioned record that must agree with the tensors, or a clear error."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.timm_reference import timm_vit
from safetensors.torch import load_file, save_file

from vitconvert import VitConvertError, convert_timm, load_model, read_record
from vitconvert.formats.weights_file import FORMAT_VERSION, META_KEY


@pytest.fixture
def converted(tmp_path):
    torch.save(timm_vit("vit_tiny_patch16_224", depth=2).state_dict(), tmp_path / "t.pth")
    convert_timm(tmp_path / "t.pth", tmp_path / "t.safetensors")
    return tmp_path / "t.safetensors"


def rewrite(path, tensors=None, record=None, drop_record=False):
    """Re-save a weights file with its tensors or record changed."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = tensors if tensors is not None else load_file(str(path))
    if drop_record:
        meta = {}
    elif record is not None:
        meta = {META_KEY: record if isinstance(record, str) else json.dumps(record)}
    out = path.with_name("edited.safetensors")
    save_file(tensors, str(out), metadata=meta)
    return out


def record_of(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()[META_KEY])


def test_record_documents_config_preprocessing_labels_and_source(converted) -> None:
    rec = record_of(converted)
    assert rec["format"] == "vitconvert-weights" and rec["version"] == FORMAT_VERSION == 3
    assert rec["config"]["embed_dim"] == 192 and rec["config"]["act"] == "gelu"
    assert set(rec["preprocess"]) == {"size", "resize", "crop_pct", "interpolation", "mean", "std"}
    assert rec["labels"] == "imagenet-1k" and rec["head_is_zero"] is False
    assert set(rec["source"]) == {"format", "file", "sha256"}


def test_missing_record_is_a_clear_error(converted) -> None:
    with pytest.raises(VitConvertError, match=r"is a safetensors checkpoint \(not converted by vitconvert\), not a "
                                              r"vitconvert weights file; convert it first: vitconvert convert "):
        read_record(rewrite(converted, drop_record=True))


def test_unknown_version_is_a_clear_error(converted) -> None:
    rec = record_of(converted) | {"version": 99}
    with pytest.raises(VitConvertError, match="version 99 is not supported"):
        load_model(rewrite(converted, record=rec))


def test_a_version_2_record_still_loads(converted) -> None:
    # Version 3 added config fields only (the RoPE ViTs'); a version-2 file holds none of them.
    rec = record_of(converted) | {"version": 2}
    assert load_model(rewrite(converted, record=rec)).config == read_record(converted).config


def test_tampered_json_is_a_clear_error(converted) -> None:
    with pytest.raises(VitConvertError, match="metadata is not valid JSON"):
        read_record(rewrite(converted, record='{"format": "vitconvert-weights", "version": 2,'))


# A record exactly as vitconvert wrote it before class names could be stored (version 1; the
# output of save_weights(..., labels=None) at commit 3522d04, for TINY with 1 block and 10 classes).
V1_RECORD = (
    '{"config": {"act": "gelu", "depth": 1, "distilled": false, "embed_dim": 64, "fc_norm": false, '
    '"hybrid_layers": null, "hybrid_width": 64, "img_size": [224, 224], "in_chans": 3, "ln_eps": 1e-06, '
    '"mlp_dim": 256, "no_embed_class": false, "num_classes": 10, "num_heads": 4, "patch_size": 16, '
    '"pool": "token", "qkv_bias": true, "representation_size": null}, "format": "vitconvert-weights", '
    '"head_is_zero": false, "labels": null, "notes": [], "preprocess": {"crop_pct": 0.9, '
    '"interpolation": "bicubic", "mean": [0.5, 0.5, 0.5], "resize": "crop", "size": [224, 224], '
    '"std": [0.5, 0.5, 0.5]}, "source": {"file": "test", "format": "timm", "sha256": null}, "version": 1}')


@pytest.mark.parametrize("num_classes, labels, read_as", [
    (10, None, None),
    (1000, "imagenet-1k", "imagenet-1k"),
    # Version 1 took any string; a name that is not the head's label set was shown as class indices.
    (10, "imagenet-1k", None),
    (10, "my-classes", None),
])
def test_version_1_files_keep_loading(tmp_path, num_classes, labels, read_as) -> None:
    from helpers.vit_weights import TINY, our_vit

    config = TINY.replace(depth=1, num_classes=num_classes)
    record = json.loads(V1_RECORD)
    record["config"]["num_classes"], record["labels"] = num_classes, labels
    path = tmp_path / "v1.safetensors"
    model = our_vit(config)
    save_file(model.state_dict(), str(path), metadata={META_KEY: json.dumps(record)})
    assert read_record(path).config == config and read_record(path).labels == read_as
    loaded = load_model(path).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


def test_version_1_labels_must_still_be_a_string(tmp_path) -> None:
    record = json.loads(V1_RECORD) | {"labels": [str(i) for i in range(10)]}
    from helpers.vit_weights import TINY, our_vit

    path = tmp_path / "v1.safetensors"
    save_file(our_vit(TINY.replace(depth=1, num_classes=10)).state_dict(), str(path),
              metadata={META_KEY: json.dumps(record)})
    with pytest.raises(VitConvertError, match="labels must be a string or null, got"):
        read_record(path)


# --- class names stored in the file ----------------------------------------------------------------------

def test_class_names_round_trip_through_the_file(tmp_path) -> None:
    from helpers.vit_weights import TINY, our_vit

    from vitconvert import save_weights

    names = ["cat", "dog, puppy", "café ☕"]
    record = save_weights(our_vit(TINY.replace(num_classes=3)), tmp_path / "m.safetensors", labels=names)
    assert record.labels == tuple(names)
    assert record_of(tmp_path / "m.safetensors")["labels"] == names
    assert read_record(tmp_path / "m.safetensors").labels == tuple(names)


@pytest.mark.parametrize("num_classes, labels, message", [
    (3, ["cat", "dog"], r"labels: 2 class names but the model has 3 classes"),
    (3, "imagenet-1k", r"labels 'imagenet-1k' has 1000 classes but the model has 3"),
    (1000, "imagenet1k", r"labels 'imagenet1k' is not a label set \(imagenet-1k, imagenet-21k\); "
                         r"give the class names themselves as a list"),
    (3, ["cat", 2, "bird"], r"labels must be a label set's name, a list of class names or null, "
                            r"got \['cat', 2, 'bird'\]"),
])
def test_labels_that_do_not_fit_the_head_are_refused_on_write_and_read(tmp_path, num_classes, labels,
                                                                        message) -> None:
    from helpers.vit_weights import TINY, our_vit

    from vitconvert import save_weights

    model = our_vit(TINY.replace(num_classes=num_classes))
    with pytest.raises(VitConvertError, match=message):
        save_weights(model, tmp_path / "bad.safetensors", labels=labels)
    assert list(tmp_path.iterdir()) == []  # refused before anything was written
    good = tmp_path / "good.safetensors"
    save_weights(model, good, labels=None)
    edited = rewrite(good, record=record_of(good) | {"labels": labels})
    with pytest.raises(VitConvertError, match=rf"edited\.safetensors: {message}"):
        read_record(edited)


def test_record_that_disagrees_with_tensors_names_the_tensors(converted) -> None:
    rec = record_of(converted)
    rec["config"]["depth"] = 3
    lacks = (r"metadata disagrees with the tensors: tensors the model needs but the file lacks: "
             r"blocks\.2\.attn\.proj\.bias")
    with pytest.raises(VitConvertError, match=lacks):
        read_record(rewrite(converted, record=rec))
    rec["config"]["depth"], rec["config"]["mlp_dim"] = 2, 512
    shapes = r"inconsistent shapes: .*blocks\.0\.mlp\.fc1\.bias \(768,\) \(expected \(512,\)\)"
    with pytest.raises(VitConvertError, match=shapes):
        read_record(rewrite(converted, record=rec))


def test_unexpected_tensor_is_named(converted) -> None:
    tensors = load_file(str(converted)) | {"extra.weight": torch.zeros(3)}
    with pytest.raises(VitConvertError, match=r"tensors the model lacks: extra\.weight"):
        read_record(rewrite(converted, tensors=tensors))


def test_malformed_config_field_is_a_clear_error(converted) -> None:
    rec = record_of(converted)
    rec["config"]["colour"] = "blue"
    with pytest.raises(VitConvertError, match="unknown ViT config fields: colour"):
        read_record(rewrite(converted, record=rec))


def test_load_model_resamples_position_embeddings_like_timm(converted) -> None:
    from timm.layers import resample_abs_pos_embed

    base = load_model(converted)
    for size, grid in [(384, (24, 24)), ("160x320", (10, 20)), ((96, 64), (6, 4))]:
        model = load_model(converted, img_size=size)
        theirs = resample_abs_pos_embed(base.pos_embed.detach(), new_size=grid, old_size=(14, 14),
                                        num_prefix_tokens=1)
        assert model.config.grid_size == grid
        assert (model.pos_embed.detach() - theirs).abs().max().item() == 0.0


def test_size_not_a_multiple_of_the_patch_is_a_clear_error(converted) -> None:
    with pytest.raises(VitConvertError, match="not a multiple of the patch stride 16"):
        load_model(converted, img_size=200)


def test_load_model_honours_dtype(converted) -> None:
    model = load_model(converted, dtype=torch.bfloat16)
    assert model.pos_embed.dtype == torch.bfloat16 and not model.training


# --- save_weights: a model of ours (or a state dict and its config) to our file ---------------------------

def test_save_weights_round_trips_a_model_and_the_file_loads_into_timm(tmp_path) -> None:
    from helpers.vit_weights import TINY, TINY_TIMM_KWARGS, our_vit

    from vitconvert import save_weights

    model = our_vit(TINY)
    record = save_weights(model, tmp_path / "m.safetensors")
    assert record.labels == "imagenet-1k" and not record.head_is_zero and record.source.format == "torch"
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(load_model(tmp_path / "m.safetensors")(x), model(x))  # the same floats, stored
        theirs = timm_vit("vit_base_patch16_224", **TINY_TIMM_KWARGS)
        theirs.load_state_dict(load_file(str(tmp_path / "m.safetensors")), strict=True)
        # Observed 2.9e-6 on logits of spread 3 (our last block runs for the class token alone: rounding).
        assert (theirs.eval()(x) - model(x)).abs().max() < 5e-6


def test_save_weights_refuses_a_state_dict_that_disagrees_with_its_config(tmp_path) -> None:
    from helpers.vit_weights import TINY, our_vit

    from vitconvert import save_weights

    state = our_vit(TINY).state_dict()
    with pytest.raises(VitConvertError, match="give the config of a state dict"):
        save_weights(state, tmp_path / "a.safetensors")
    with pytest.raises(VitConvertError, match=r"b\.safetensors: inconsistent shapes: cls_token \(1, 1, 64\) "
                                              r"\(expected \(1, 1, 32\)\); .* and 25 more"):
        save_weights(state, tmp_path / "b.safetensors", config=TINY.replace(embed_dim=32, mlp_dim=128))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("size", [160, 480, (224, 320)])
def test_load_model_resamples_position_embeddings_by_the_recorded_method(tmp_path, size) -> None:
    """A file that records 'dino' gives, at another size, timm's model run with the position embeddings
    facebookresearch/dino's interpolate_pos_encoding makes; one that records 'bicubic' does not."""
    from helpers.dino import dino_interpolate_pos_encoding
    from helpers.vit_weights import write_test_weights

    from vitconvert import preset
    from vitconvert.core.config import parse_size

    state = timm_vit("vit_tiny_patch16_224", depth=2).state_dict()
    files = {m: write_test_weights(tmp_path / f"{m}.safetensors", state, preset("Ti/16", depth=2, pos_resize=m))
             for m in ("bicubic", "dino")}
    size = parse_size(size)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    reference = timm_vit("vit_tiny_patch16_224", depth=2, img_size=size)
    reference.load_state_dict(state | {"pos_embed": dino_interpolate_pos_encoding(state["pos_embed"], 16, x.shape)})
    with torch.inference_mode():
        theirs = reference.forward_features(x)
        dino, bicubic = (load_model(files[m], img_size=size).forward_features(x) for m in ("dino", "bicubic"))
    assert load_model(files["dino"], img_size=size).config.pos_resize == "dino"
    # Measured: 0.0 (the same operations as timm's on the same position embeddings) at every size.
    assert (dino - theirs).abs().max().item() <= 1e-6
    # Measured 0.032 to 0.10 apart (features up to 4.9): the method shows in the features.
    assert (bicubic - dino).abs().max().item() > 1e-2


def test_files_written_before_pos_resize_resample_as_timm(converted) -> None:
    rec = record_of(converted)
    rec["config"].pop("pos_resize", None)  # written only where it is not the default since timm's family
    old = rewrite(converted, record=rec)
    assert read_record(old).config.pos_resize == "bicubic"
    assert torch.equal(load_model(old, img_size=384).pos_embed, load_model(converted, img_size=384).pos_embed)
