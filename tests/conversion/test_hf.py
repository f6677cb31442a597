"""`vitconvert hf2torch` / `convert_hf`: transformers' ViT, DeiT and Dinov2 checkpoints give transformers'
outputs in our model, with the architecture of config.json, the class names of id2label and the
preprocessing of preprocessor_config.json; what is not such a checkpoint is one clear line, and nothing
is written.

The reference is the installed transformers package (the `hf` extra, in `test`): each model is built
with random weights from a small config and saved with save_pretrained; no network.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

transformers = pytest.importorskip("transformers", reason="the hf2torch tests compare with transformers: "
                                                          "pip install '.[hf]'")

import torch  # noqa: E402
from helpers.hf import CLASSES, largest_difference, load_hf, outputs, random_hf  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from vitconvert import VitConvertError, convert_hf, load_model, read_record  # noqa: E402
from vitconvert.conversion.hf_preprocess import preprocess_from  # noqa: E402
from vitconvert.formats.weights_file import Preprocess  # noqa: E402

# float32, the same operations but for our fused qkv and the class-token shortcut of our last block.
# Observed: at most 1.4e-6 over every case here.
ATOL = 1e-5

CASES = {  # name: (transformers class, config overrides, keyword arguments for random_hf)
    "ViT classifier": ("ViTForImageClassification", {}, {}),
    "ViT classifier, gelu_new, no qkv bias, 24x40 patches 8x4": (
        "ViTForImageClassification", {"hidden_act": "gelu_new", "qkv_bias": False, "image_size": [24, 40],
                                      "patch_size": [8, 4]}, {}),
    "ViT classifier, quick_gelu, eps 1e-5": ("ViTForImageClassification",
                                             {"hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}, {}),
    "ViTModel with pooler 48 wide": ("ViTModel", {"pooler_output_size": 48}, {}),
    "ViTModel without pooler": ("ViTModel", {}, {"pooler": False}),
    "DeiT distilled (with teacher)": ("DeiTForImageClassificationWithTeacher", {}, {}),
    "DeiT classifier": ("DeiTForImageClassification", {}, {}),
    "DeiTModel": ("DeiTModel", {}, {"pooler": False}),
    "Dinov2Model": ("Dinov2Model", {"hidden_act": "gelu_pytorch_tanh"}, {}),
    "Dinov2Model SwiGLU": ("Dinov2Model", {"use_swiglu_ffn": True}, {}),
}


def batch(size=(32, 32), n=2, seed=0) -> torch.Tensor:
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(seed))


def hf_dir(tmp_path, name: str, **overrides):
    architecture, config, kwargs = CASES[name]
    model = random_hf(architecture, **kwargs, **(config | overrides))
    model.save_pretrained(tmp_path / "hf")
    return model, tmp_path / "hf"


def assert_ours_is_theirs(ours, theirs: dict[str, torch.Tensor], x: torch.Tensor) -> float:
    diff = largest_difference(ours, theirs, x)
    assert diff <= ATOL
    return diff


@pytest.mark.parametrize("name", list(CASES))
def test_hf2torch_gives_transformers_outputs(tmp_path, name):
    model, folder = hf_dir(tmp_path, name)
    record = convert_hf(folder, tmp_path / "ours.safetensors")
    ours = load_model(tmp_path / "ours.safetensors")
    size = tuple(model.config.image_size) if isinstance(model.config.image_size, list) else (32, 32)
    x = batch(size)
    assert_ours_is_theirs(ours, outputs(model, x), x)
    cfg = record.config
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.ln_eps) == (32, 2, 4, model.config.layer_norm_eps)
    assert cfg.num_classes == (5 if "For" in CASES[name][0] else 0)
    assert record.labels == (tuple(CLASSES) if cfg.num_classes else None)
    assert record.source.format == f"transformers/{CASES[name][0]}" and record.config.pos_resize == "transformers"


@pytest.mark.parametrize(("zeroed", "expected"), [("cls_classifier", True), ("distillation_classifier", False),
                                                   (None, False)])
def test_a_zero_class_token_classifier_is_recorded_as_a_zero_head(tmp_path, zeroed, expected):
    # DeiT's class-token classifier is our head (its distillation classifier our head_dist): a zero one is a
    # file for fine-tuning, whose top-k vitpredict refuses.
    model, folder = hf_dir(tmp_path, "DeiT distilled (with teacher)")
    if zeroed:
        with torch.no_grad():
            for p in getattr(model, zeroed).parameters():
                p.zero_()
        model.save_pretrained(folder)
    assert convert_hf(folder, tmp_path / "ours.safetensors").head_is_zero is expected
    assert read_record(tmp_path / "ours.safetensors").head_is_zero is expected


@pytest.mark.parametrize("written", [True, False], ids=["written", "left out: transformers' default"])
def test_layernorm_epsilon_is_the_configs_1e_12_on_small_tokens(tmp_path, written):
    # Embeddings 1000x smaller: the first LayerNorm sees tokens of variance ~1e-7, where google/vit's 1e-12
    # and our default 1e-6 part ways.
    model, folder = hf_dir(tmp_path, "ViT classifier")
    assert model.config.layer_norm_eps == 1e-12
    with torch.no_grad():
        for p in (model.vit.embeddings.patch_embeddings.projection.weight,
                  model.vit.embeddings.patch_embeddings.projection.bias,
                  model.vit.embeddings.position_embeddings, model.vit.embeddings.cls_token):
            p.mul_(1e-3)
    model.save_pretrained(folder)
    if not written:  # as a config.json of an older transformers may leave it out
        config = json.loads((folder / "config.json").read_text())
        del config["layer_norm_eps"]
        (folder / "config.json").write_text(json.dumps(config))
        model = load_hf(folder)
    convert_hf(folder, tmp_path / "ours.safetensors")
    ours, x = load_model(tmp_path / "ours.safetensors"), batch()
    assert_ours_is_theirs(ours, outputs(model, x), x)  # observed 1.4e-6
    with torch.inference_mode():
        wrong = load_model(tmp_path / "ours.safetensors")
        for m in wrong.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.eps = 1e-6
        assert (wrong(x) - outputs(model, x)["logits"]).abs().max().item() > 100 * ATOL  # observed 2.4


def test_a_pickled_bin_and_transformers_5_module_names_convert_too(tmp_path):
    """pytorch_model.bin (read with weights_only=True), and a state_dict saved as it is, whose names are
    transformers 5's modules' (layers.N.attention.q_proj, mlp.gate_proj, ...) instead of the serialized ones."""
    for name in ("DeiT distilled (with teacher)", "Dinov2Model SwiGLU"):
        model, folder = hf_dir(tmp_path / name, name)
        x = batch()
        (folder / "model.safetensors").unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
        record = convert_hf(folder / "pytorch_model.bin", tmp_path / "bin.safetensors", force=True)
        assert record.source.file == "pytorch_model.bin" and any("transformers 5" in n for n in record.notes)
        assert_ours_is_theirs(load_model(tmp_path / "bin.safetensors"), outputs(model, x), x)
        assert any(".q_proj." in k for k in model.state_dict())  # the module names, not the serialized ones


def test_a_pooler_beside_a_classifier_is_left_out_as_transformers_does(tmp_path):
    _, folder = hf_dir(tmp_path, "ViT classifier")
    tensors = load_file(folder / "model.safetensors")
    pooler = random_hf("ViTModel", seed=3).pooler.dense
    save_file(tensors | {"vit.pooler.dense.weight": pooler.weight.detach(), "vit.pooler.dense.bias":
                         pooler.bias.detach()}, folder / "model.safetensors", metadata={"format": "pt"})
    theirs = load_hf(folder)  # transformers ignores the pooler of a classifier
    record = convert_hf(folder, tmp_path / "ours.safetensors")
    assert record.config.representation_size is None and any("pooler" in n for n in record.notes)
    x = batch()
    assert_ours_is_theirs(load_model(tmp_path / "ours.safetensors"), outputs(theirs, x), x)


SIZES = [(48, 48), (24, 24), (40, 56)]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_at_another_size_dinov2_and_vit_resize_position_embeddings_as_transformers(tmp_path, size):
    """transformers' interpolate_pos_encoding (size=, bicubic, no antialias): Dinov2 always, ViT and DeiT when
    asked. The same files recording timm's antialiased 'bicubic' part ways."""
    for name, kwargs in (("Dinov2Model", {}), ("DeiT distilled (with teacher)", {"interpolate_pos_encoding": True})):
        model, folder = hf_dir(tmp_path / name, name)
        x = batch(size)
        theirs = outputs(model, x, **kwargs)
        convert_hf(folder, tmp_path / "ours.safetensors", force=True)
        # observed 4.8e-7 to 1.1e-6
        assert_ours_is_theirs(load_model(tmp_path / "ours.safetensors", img_size=size), theirs, x)
        convert_hf(folder, tmp_path / "timm.safetensors", force=True, pos_resize="bicubic")
        with torch.inference_mode():
            timms = load_model(tmp_path / "timm.safetensors", img_size=size)
            out = timms(x) if "logits" in theirs else timms.forward_features(x)
        key = "logits" if "logits" in theirs else "last_hidden_state"
        assert (out - theirs[key]).abs().max().item() > 100 * ATOL  # observed 0.0058 to 0.046


def test_the_defaults_for_what_a_config_leaves_out_are_transformers():
    from vitconvert.conversion.hf_layouts import DEFAULTS
    from vitconvert.conversion.hf_preprocess import PROCESSORS

    for kind, defaults in DEFAULTS.items():
        if kind == "vit-hybrid":  # transformers 5 has no ViTHybridConfig: test_hf_more holds it to its source
            continue
        config = transformers.AutoConfig.for_model(kind)
        assert {k: getattr(config, k) for k in defaults} == defaults, kind
    for name, ours in PROCESSORS.items():
        theirs = getattr(transformers, name)()
        assert (dict(theirs.size), theirs.resample, bool(theirs.do_center_crop)) == \
            (ours["size"], ours["resample"], ours["do_center_crop"]), name
        assert (tuple(theirs.image_mean), tuple(theirs.image_std)) == ours["mean_std"], name
        if ours["do_center_crop"]:
            assert dict(theirs.crop_size) == ours["crop_size"], name
        if "crop_pct" in ours:
            assert theirs.crop_pct == ours["crop_pct"], name


# preprocessor_config.json as the published checkpoints hold them (google/vit-base-patch16-224,
# facebook/deit-base-distilled-patch16-224, facebook/dinov2-small) and as ConvNext writes one; what we
# record, and the short side the processor resizes to.
PROCESSORS = {
    "google/vit (ViTFeatureExtractor, size 224)": (
        {"feature_extractor_type": "ViTFeatureExtractor", "do_normalize": True, "do_resize": True,
         "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2, "size": 224},
        Preprocess(size=(224, 224), resize="squash", interpolation="bilinear"), 224),
    "facebook/deit (256 then a 224 crop)": (
        {"feature_extractor_type": "DeiTFeatureExtractor", "crop_size": 224, "do_center_crop": True,
         "do_normalize": True, "do_resize": True, "image_mean": [0.485, 0.456, 0.406],
         "image_std": [0.229, 0.224, 0.225], "resample": 3, "size": 256},
        Preprocess(size=(224, 224), resize="crop", crop_pct=0.875, interpolation="bicubic",
                   mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)), 256),
    "facebook/dinov2 (BitImageProcessor, shortest edge 256)": (
        {"image_processor_type": "BitImageProcessor", "crop_size": {"height": 224, "width": 224},
         "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True, "do_rescale": True,
         "do_resize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
         "resample": 3, "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 256}},
        Preprocess(size=(224, 224), resize="crop", crop_pct=0.875, interpolation="bicubic",
                   mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)), 256),
    "ConvNext crop_pct, no rescale": (
        {"image_processor_type": "ConvNextImageProcessor", "size": {"shortest_edge": 224}, "crop_pct": 0.9,
         "do_rescale": False, "image_mean": [127.5, 127.5, 127.5], "image_std": [127.5, 127.5, 127.5]},
        Preprocess(size=(224, 224), resize="crop", crop_pct=0.9, interpolation="bicubic"), 248),
}


@pytest.mark.parametrize("name", list(PROCESSORS))
def test_preprocessing_is_read_from_the_processor(name):
    processor, expected, short_side = PROCESSORS[name]
    pre, notes = preprocess_from(processor, "vit", (224, 224), "here")
    assert pre.size == expected.size and (pre.resize, pre.interpolation) == (expected.resize, expected.interpolation)
    assert pre.crop_pct == pytest.approx(expected.crop_pct, abs=1e-12)
    assert pre.mean == pytest.approx(expected.mean, abs=1e-12) and pre.std == pytest.approx(expected.std, abs=1e-12)
    # timm's rule gives the processor's resize: floor(224 / crop_pct) is its short side
    assert int(224 / pre.crop_pct) == short_side
    assert ("aspect ratio not kept" in " ".join(notes)) == ("deit" in name)  # DeiT's resize is a squash


def bad(tmp_path, what: str):
    """A checkpoint directory with one thing wrong."""
    _, folder = hf_dir(tmp_path, "ViT classifier")
    config = json.loads((folder / "config.json").read_text())
    if what == "another model type":
        config["model_type"] = "swin"
    elif what == "no config.json":
        (folder / "config.json").unlink()
        return folder
    elif what == "hidden_size disagrees":
        config["hidden_size"] = 64
    elif what == "more layers than tensors":
        config["num_hidden_layers"] = 3
    elif what == "fewer labels than classifier rows":
        config["id2label"] = {"0": "cat", "1": "dog"}
    elif what == "an activation we do not run":
        config["hidden_act"] = "relu"
    elif what == "an activation that is no name (found by test_fuzz)":
        config["hidden_act"] = ["gelu"]
    elif what == "head_dim that does not divide the width":
        config["head_dim"] = 7
    (folder / "config.json").write_text(json.dumps(config))
    return folder


BAD = {
    "another model type": "config.json: model_type 'swin'; hf2torch converts model types vit, deit, dinov2, "
                          "dinov2_with_registers, vit_msn, vit_mae, vit-hybrid, beit, data2vec-vision (ViTModel, ",
    "no config.json": "no config.json beside the weights",
    "hidden_size disagrees": "inconsistent shapes",
    "more layers than tensors": "missing keys: vit.encoder.layer.2.",
    "fewer labels than classifier rows": "inconsistent shapes: head.weight (5, 32) (expected (2, 32))",
    "an activation we do not run": "hidden_act 'relu' is not one our model runs",
    "an activation that is no name (found by test_fuzz)": "hidden_act ['gelu'] is not one our model runs",
    "head_dim that does not divide the width": "head_dim 7 x 4 heads is not hidden_size 32",
}


@pytest.mark.parametrize("what", list(BAD))
def test_bad_input_is_one_clear_line_and_nothing_is_written(tmp_path, vitconvert, what):
    folder = bad(tmp_path, what)
    with pytest.raises(VitConvertError, match=re.escape(BAD[what])):
        convert_hf(folder, tmp_path / "out.safetensors")
    result = vitconvert("hf2torch", folder, tmp_path / "out.safetensors")
    assert result.code == 1 and result.err.startswith("error: ") and result.err.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no output, no temporary file


def test_the_cli_reports_the_record_and_converts_safetensors_without_torch(tmp_path, vitconvert):
    _, folder = hf_dir(tmp_path, "Dinov2Model SwiGLU")
    result = vitconvert("hf2torch", folder, tmp_path / "d.safetensors", "--json")
    assert result.code == 0, result.err
    record = json.loads(result.out)["record"]
    assert record["config"]["mlp"] == "swiglu_packed" and record["config"]["layer_scale"]
    assert read_record(tmp_path / "d.safetensors").source.sha256  # the source's hash, computed alongside
    probe = ("import json, sys; from vitconvert import convert_hf; "
             f"convert_hf({str(folder)!r}, {str(tmp_path / 'e.safetensors')!r}); "
             "print(json.dumps(sorted(m for m in ('torch', 'transformers') if m in sys.modules)))")
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(imported.stdout) == []
