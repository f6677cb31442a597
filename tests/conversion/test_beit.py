"""BEiT (timm's Beit: BEiT and BEiT v2; transformers' Beit and Data2VecVision) through `vitconvert convert`: every
architecture timm registers in timm/models/beit.py and transformers' BEiT classes give their library's outputs in
our model, at the stored size and at another (each library resampling the tables its own way: timm's state-dict
filter for a model built at another img_size, transformers' interpolate_pos_encoding); every source tensor is
mapped or left out with its reason; the preprocessing is the source's; a relative position table of the wrong
size is one line and nothing written. Then `verify --timm-model` and `export --to hf` for them.

References: the installed timm and transformers, random weights in each library's own layout (helpers/beit.py).
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from helpers.beit import HF_CLASSES, hf_beit, timm_beit, timm_beit_names
from helpers.cli import cli_error
from helpers.hf import largest_difference, outputs
from safetensors.torch import load_file, save_file

from vitconvert import VitConvertError, convert, load_model, read_record, verify
from vitconvert.conversion.timm_models import create_timm_model

# float32, the same operations in another order (timm's q/v bias added in the qkv product, ours after it; our
# class-token shortcut in the last block of token-pooled models). Observed on logits of std ~3: at most 3.8e-6
# (timm, every architecture, at the stored size and at the other) and 9.5e-7 (transformers).
ATOL = 1e-5


def batch(size: tuple[int, int], n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(seed))


def other_size(size: tuple[int, int]) -> tuple[int, int]:
    """A size to run at besides the stored one: larger for the 224 models, smaller for the others (faster)."""
    return (256, 256) if size == (224, 224) else (size[0] - 64, size[1] - 64)


def timm_at(name: str, state: dict[str, torch.Tensor], size: tuple[int, int], **kwargs) -> torch.nn.Module:
    """timm's own path to another size: the model built at it, the weights through its Beit filter (which
    resamples the tables with resize_rel_pos_bias_table)."""
    from timm.models.beit import checkpoint_filter_fn

    model = create_timm_model(name, **{**kwargs, "img_size": size})
    model.load_state_dict(checkpoint_filter_fn(state, model))
    return model


def timm_differences(ours: torch.nn.Module, theirs: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    with torch.inference_mode():
        tokens = theirs.forward_features(x)
        return {"forward": (ours(x) - theirs(x)).abs().max().item(),
                "forward_features": (ours.forward_features(x) - tokens).abs().max().item(),
                "pre_logits": (ours.forward_pooled(x) - theirs.forward_head(tokens, pre_logits=True))
                .abs().max().item()}


# ==============================================================================================================
# timm's Beit
# ==============================================================================================================
BEIT_NAMES = timm_beit_names()


def test_every_beit_architecture_of_timm_is_covered() -> None:
    # timm 1.0.31: BEiT base/large at 224, 384 and 512, BEiT v2 base/large at 224.
    assert len(BEIT_NAMES) == 7 and all(n.startswith(("beit_", "beitv2_")) for n in BEIT_NAMES)


@pytest.mark.parametrize("name", BEIT_NAMES)
def test_every_timm_beit_architecture_gives_timms_outputs_here_and_at_another_size(tmp_path, name: str) -> None:
    reference = timm_beit(name)
    torch.save(reference.state_dict(), tmp_path / "beit.pth")
    named = convert(tmp_path / "beit.pth", tmp_path / "named.safetensors", model=name, timm_kwargs={"depth": 2})
    # The tables show the grid and the heads, the keys the rest: without the name, the same architecture.
    unnamed = convert(tmp_path / "beit.pth", tmp_path / "unnamed.safetensors")
    assert unnamed.config == named.config
    size, at = named.config.img_size, other_size(named.config.img_size)
    x, x_at = batch(size, n=1), batch(at, n=1)  # one image: the large ones at 512 px are slow on two cores
    theirs_at = timm_at(name, reference.state_dict(), at, depth=2)
    with torch.inference_mode():
        ours = load_model(tmp_path / "named.safetensors")
        diffs = {"stored size": (ours(x) - reference(x)).abs().max().item(),
                 "other size, loaded at it": (load_model(tmp_path / "named.safetensors", img_size=at)(x_at)
                                              - theirs_at(x_at)).abs().max().item(),
                 "other size, resampled at forward": (ours(x_at) - theirs_at(x_at)).abs().max().item()}
    assert max(diffs.values()) <= ATOL, diffs


VARIANTS = {  # timm's Beit options no registered model uses, on beit_base at 96 px (a 6x6 grid)
    "shared table, position embedding, token pooling": dict(use_rel_pos_bias=False, use_shared_rel_pos_bias=True,
                                                            use_abs_pos_emb=True, global_pool="token"),
    "shared and per-block tables": dict(use_shared_rel_pos_bias=True),
    "no layer scale, no q/v bias": dict(init_values=None, qkv_bias=False),
    "SwiGLU MLP with its norm": dict(swiglu_mlp=True, scale_mlp=True),
    "no tables, position embedding (EVA-like)": dict(use_rel_pos_bias=False, use_abs_pos_emb=True),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_timms_beit_options_give_timms_outputs(tmp_path, variant: str) -> None:
    kwargs = {"depth": 2, "img_size": 96, "embed_dim": 64, "num_heads": 4, **VARIANTS[variant]}
    reference = timm_beit("beit_base_patch16_224", **kwargs)
    torch.save(reference.state_dict(), tmp_path / "beit.pth")
    convert(tmp_path / "beit.pth", tmp_path / "out.safetensors", model="beit_base_patch16_224", timm_kwargs=kwargs)
    diffs = timm_differences(load_model(tmp_path / "out.safetensors"), reference, batch((96, 96)))
    theirs = timm_at("beit_base_patch16_224", reference.state_dict(), (128, 128), **kwargs)
    diffs_at = timm_differences(load_model(tmp_path / "out.safetensors"), theirs, batch((128, 128)))
    assert max(*diffs.values(), *diffs_at.values()) <= ATOL, (diffs, diffs_at)


@pytest.mark.parametrize("name", ["beitv2_large_patch16_224.in1k_ft_in1k", "beit_base_patch16_384.in22k_ft_in22k_in1k",
                                  "beitv2_base_patch16_224.in1k_ft_in22k"])
def test_a_named_tag_records_its_pretrained_cfgs_preprocessing(tmp_path, name: str) -> None:
    cfg = create_timm_model(name, meta=True).pretrained_cfg
    reference = timm_beit(name.split(".")[0], num_classes=cfg["num_classes"])
    torch.save(reference.state_dict(), tmp_path / "beit.pth")
    pre = convert(tmp_path / "beit.pth", tmp_path / "out.safetensors", model=name, timm_kwargs={"depth": 2}).preprocess
    assert (pre.size, pre.crop_pct, pre.interpolation) == (cfg["input_size"][1:], cfg["crop_pct"], cfg["interpolation"])
    assert (pre.mean, pre.std) == (tuple(cfg["mean"]), tuple(cfg["std"]))


def pretraining_checkpoint(backbone: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A BEiT (v2) pre-training file as microsoft/unilm saves one: under 'model', the index buffers stored, the
    mask token, the tokenizer-code classifier (lm_head) and BEiT v2's patch-aggregation blocks (cls_pt_layers)."""
    from timm.models.beit import gen_relative_position_index

    state = dict(backbone.state_dict())
    grid = backbone.patch_embed.grid_size
    g = torch.Generator().manual_seed(3)
    dim = backbone.embed_dim
    state["rel_pos_bias.relative_position_index"] = gen_relative_position_index(grid)
    state["mask_token"] = torch.randn(1, 1, dim, generator=g)
    state["lm_head.weight"], state["lm_head.bias"] = torch.randn(8192, dim, generator=g), torch.randn(8192, generator=g)
    state["cls_pt_layers.0.norm1.weight"] = torch.randn(dim, generator=g)
    state["cls_pt_layers.0.attn.qkv.weight"] = torch.randn(3 * dim, dim, generator=g)
    return {"model": state}


def test_a_pretraining_checkpoint_gives_the_backbones_tokens_and_says_what_it_left_out(tmp_path, vitconvert) -> None:
    kwargs = dict(depth=2, num_classes=0, global_pool="token", use_rel_pos_bias=False, use_shared_rel_pos_bias=True)
    backbone = timm_beit("beitv2_base_patch16_224", **kwargs)
    torch.save(pretraining_checkpoint(backbone), tmp_path / "pt.pth")
    result = vitconvert("convert", tmp_path / "pt.pth", tmp_path / "out.safetensors", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["format"] == "timm"
    assert report["left_out"] == {
        "rel_pos_bias.relative_position_index": "relative_position_index: a buffer computed from the grid (timm "
                                                "recomputes it too), not stored",
        "mask_token": "BEiT's mask_token: used in masked-image pre-training only",
        "lm_head.weight": "BEiT's lm_head: the pre-training classifier over the visual tokenizer's codes",
        "lm_head.bias": "BEiT's lm_head: the pre-training classifier over the visual tokenizer's codes",
        "cls_pt_layers.0.norm1.weight": "BEiT v2's cls_pt_layers: the blocks of its pre-training patch aggregation "
                                        "head",
        "cls_pt_layers.0.attn.qkv.weight": "BEiT v2's cls_pt_layers: the blocks of its pre-training patch "
                                           "aggregation head"}
    assert any("pre-training checkpoint" in n for n in report["record"]["notes"])
    ours, x = load_model(tmp_path / "out.safetensors"), batch((224, 224))
    assert max(timm_differences(ours, backbone, x).values()) <= ATOL
    assert "relative_position_index" not in " ".join(load_file(str(tmp_path / "out.safetensors")))


def with_table(state: dict[str, torch.Tensor], key: str, rows: int) -> dict[str, torch.Tensor]:
    return {**state, key: torch.zeros(rows, state[key].shape[1])}


BAD_TABLES = {  # what is wrong -> (how the state dict is spoiled, what the one line says)
    "rows of no square grid": (
        lambda s: {k: torch.zeros(700, v.shape[1]) if k.endswith("bias_table") else v for k, v in s.items()},
        r"blocks\.0\.attn\.relative_position_bias_table has 700 rows, which no square patch grid has"),
    "one block's table for another grid": (
        lambda s: with_table(s, "blocks.1.attn.relative_position_bias_table", 7 * 7 + 3),  # a 4x4 grid's
        r"blocks\.1\.attn\.relative_position_bias_table has shape \(52, 12\), but "
        r"blocks\.0\.attn\.relative_position_bias_table has \(732, 12\)"),
    "tables for another grid than pos_embed's": (
        lambda s: {k: torch.zeros(23 * 23 + 3, v.shape[1]) if k.endswith("bias_table") else v for k, v in s.items()},
        r"is for a 12x12 patch grid, but pos_embed is for 14x14"),
    "a block without its table": (
        lambda s: {k: v for k, v in s.items() if k != "blocks.1.attn.relative_position_bias_table"},
        r"blocks 1 have no relative_position_bias_table"),
}


@pytest.mark.parametrize("case", list(BAD_TABLES))
def test_a_relative_position_table_of_the_wrong_size_is_one_line_and_nothing_written(tmp_path, capsys,
                                                                                      case: str) -> None:
    spoil, message = BAD_TABLES[case]
    state = timm_beit("beit_base_patch16_224", use_abs_pos_emb=True).state_dict()
    torch.save(spoil(state), tmp_path / "bad.pth")
    code, err = cli_error(capsys, "convert", tmp_path / "bad.pth", tmp_path / "out.safetensors")
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: ")
    assert re.search(message, err), err
    assert list(tmp_path.iterdir()) == [tmp_path / "bad.pth"]


def test_verify_passes_a_beit_file_against_timms_beit_here_and_at_another_size(tmp_path, vitconvert) -> None:
    name = "beitv2_base_patch16_224"
    reference = timm_beit(name)
    torch.save(reference.state_dict(), tmp_path / "beit.pth")
    convert(tmp_path / "beit.pth", tmp_path / "beit.safetensors")
    for kwargs in (dict(), dict(source=tmp_path / "beit.pth"), dict(img_size=(288, 288))):
        report = verify(tmp_path / "beit.safetensors", name, timm_kwargs={"depth": 2}, **kwargs)
        assert report.ok and report.max_abs_diff <= ATOL, (kwargs, report.max_abs_diff)
        assert [s.stage for s in report.stages] == ["blocks.0", "blocks.1", "norm"]
    with pytest.raises(VitConvertError, match="timm's beitv2_base_patch16_224 is a Beit, whose activation"):
        verify(tmp_path / "beit.safetensors", name, timm_kwargs={"depth": 2}, timm_act="gelu_tanh")


# ==============================================================================================================
# transformers' Beit and Data2VecVision
# ==============================================================================================================
HF_CASES = {  # name: (transformers class, config overrides, pooler)
    "BeitForImageClassification, tables per layer": ("BeitForImageClassification",
                                                      dict(use_relative_position_bias=True), True),
    "BeitModel, shared table, position embedding, class token, mask token": (
        "BeitModel", dict(use_shared_relative_position_bias=True, use_absolute_position_embeddings=True,
                          use_mean_pooling=False, use_mask_token=True), True),
    "BeitModel, both tables, no layer scale, eps 1e-6": (
        "BeitModel", dict(use_relative_position_bias=True, use_shared_relative_position_bias=True,
                          layer_scale_init_value=0.0, layer_norm_eps=1e-6), True),
    "BeitModel without its pooler": ("BeitModel", dict(use_relative_position_bias=True), False),
    "Data2VecVisionModel with its pooler": ("Data2VecVisionModel", dict(use_relative_position_bias=True), True),
    "Data2VecVisionForImageClassification, position embedding, gelu_new": (
        "Data2VecVisionForImageClassification", dict(use_relative_position_bias=True, hidden_act="gelu_new",
                                                     use_absolute_position_embeddings=True), True),
    "BeitForMaskedImageModeling": ("BeitForMaskedImageModeling",
                                   dict(use_shared_relative_position_bias=True, use_mask_token=True), True),
}


def hf_outputs(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """What transformers computes for `x` with interpolate_pos_encoding on; for the pre-training model, its
    encoder's tokens after its own norm (what its lm_head reads), and their class token."""
    if type(model).__name__ != "BeitForMaskedImageModeling":
        return outputs(model, x, interpolate_pos_encoding=True)
    with torch.inference_mode():
        tokens = model.layernorm(model.beit(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state)
    return {"last_hidden_state": tokens, "pooler_output": tokens[:, 0]}


@pytest.mark.parametrize("case", list(HF_CASES))
def test_transformers_beit_gives_transformers_outputs_here_and_at_other_sizes(tmp_path, vitconvert, case) -> None:
    architecture, overrides, pooler = HF_CASES[case]
    model = hf_beit(architecture, pooler=pooler, **overrides)
    model.save_pretrained(tmp_path / "hf")
    result = vitconvert("convert", tmp_path / "hf", tmp_path / "out.safetensors", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["format"] == "hf" and report["record"]["source"]["format"] == f"transformers/{architecture}"
    for size in ((32, 32), (48, 48), (48, 32)):
        ours = load_model(tmp_path / "out.safetensors")
        diff = largest_difference(ours, hf_outputs(model, batch(size)), batch(size))
        fixed = largest_difference(load_model(tmp_path / "out.safetensors", img_size=size),
                                   hf_outputs(model, batch(size)), batch(size))
        assert max(diff, fixed) <= ATOL, (size, diff, fixed)
    mask = [k for k in report["left_out"] if k.endswith("mask_token")]
    assert len(mask) == overrides.get("use_mask_token", False)
    if architecture == "BeitForMaskedImageModeling":
        assert report["left_out"]["lm_head.weight"] == ("BEiT's lm_head: the pre-training classifier over the "
                                                        "visual tokenizer's codes")
    if "Classification" in architecture:
        assert read_record(tmp_path / "out.safetensors").labels == tuple(HF_CLASSES)


def test_transformers_5_module_names_and_old_index_buffers_convert_too(tmp_path) -> None:
    from transformers.models.beit.modeling_beit import BeitRelativePositionBias

    model = hf_beit("BeitModel", use_relative_position_bias=True, use_shared_relative_position_bias=True)
    model.save_pretrained(tmp_path / "hf")
    # A state_dict saved as it is: transformers 5's module names (layers.N.attention.q_proj, shared_position_bias).
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    assert "shared_position_bias.relative_position_bias_table" in state
    save_file(state, str(tmp_path / "hf" / "model.safetensors"))
    convert(tmp_path / "hf", tmp_path / "modular.safetensors")
    # An older save_pretrained's file, with the index buffers stored (transformers ignores them on load).
    model.save_pretrained(tmp_path / "old")
    stored = load_file(str(tmp_path / "old" / "model.safetensors"))
    index = BeitRelativePositionBias.generate_relative_position_index((4, 4))
    stored["encoder.relative_position_bias.relative_position_index"] = index
    stored["encoder.layer.0.attention.attention.relative_position_bias.relative_position_index"] = index.clone()
    save_file(stored, str(tmp_path / "old" / "model.safetensors"))
    record = convert(tmp_path / "old", tmp_path / "old.safetensors")
    assert any("relative_position_index: a buffer computed from the grid" in n for n in record.notes)
    x = batch((32, 32))
    for name in ("modular", "old"):
        assert largest_difference(load_model(tmp_path / f"{name}.safetensors"), hf_outputs(model, x), x) <= ATOL


def test_keys_config_json_leaves_out_are_read_as_transformers_reads_them(tmp_path) -> None:
    import transformers

    model = hf_beit("BeitForImageClassification", use_relative_position_bias=True)
    model.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    defaults = transformers.BeitConfig()
    for key in ("layer_norm_eps", "hidden_act", "use_mean_pooling", "layer_scale_init_value",
                "use_absolute_position_embeddings", "use_shared_relative_position_bias"):
        del config[key]
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    record = convert(tmp_path / "hf", tmp_path / "out.safetensors")
    assert record.config.ln_eps == defaults.layer_norm_eps == 1e-12
    assert (record.config.pool, record.config.fc_norm, record.config.layer_scale) == ("gap", True, True)
    x = batch((32, 32))
    reloaded = transformers.AutoModelForImageClassification.from_pretrained(tmp_path / "hf").eval()
    assert largest_difference(load_model(tmp_path / "out.safetensors"), outputs(reloaded, x), x) <= ATOL


def test_beits_processor_is_recorded(tmp_path) -> None:
    from transformers import BeitImageProcessor

    model = hf_beit("BeitForImageClassification", use_relative_position_bias=True)
    model.save_pretrained(tmp_path / "hf")
    pre = convert(tmp_path / "hf", tmp_path / "none.safetensors").preprocess  # no preprocessor_config.json
    assert (pre.size, pre.interpolation, pre.mean, pre.std) == ((32, 32), "bicubic", (0.5,) * 3, (0.5,) * 3)
    BeitImageProcessor(size={"height": 40, "width": 40}, do_center_crop=True,
                       crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path / "hf")
    pre = convert(tmp_path / "hf", tmp_path / "saved.safetensors").preprocess
    assert (pre.size, pre.resize, pre.interpolation, pre.mean) == ((32, 32), "crop", "bicubic", (0.5,) * 3)
    assert int(32 / pre.crop_pct) == 40
    # The older feature extractor's file: a bare size and Pillow's bilinear.
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps(dict(
        feature_extractor_type="BeitFeatureExtractor", size=32, resample=2, do_center_crop=False, do_resize=True,
        do_normalize=True, image_mean=[0.5] * 3, image_std=[0.5] * 3)))
    pre = convert(tmp_path / "hf", tmp_path / "old.safetensors").preprocess
    assert (pre.size, pre.resize, pre.interpolation) == ((32, 32), "squash", "bilinear")


def test_a_wrong_size_table_or_a_non_square_grid_in_a_transformers_beit_is_one_line(tmp_path, capsys) -> None:
    model = hf_beit("BeitModel", use_relative_position_bias=True)
    model.save_pretrained(tmp_path / "hf")
    stored = load_file(str(tmp_path / "hf" / "model.safetensors"))
    key = "encoder.layer.1.attention.attention.relative_position_bias.relative_position_bias_table"
    save_file({**stored, key: torch.zeros(100, 4)}, str(tmp_path / "hf" / "model.safetensors"))
    code, err = cli_error(capsys, "convert", tmp_path / "hf", tmp_path / "out.safetensors")
    assert code == 1 and err.count("\n") == 1
    assert "blocks.1.attn.relative_position_bias_table (100, 4) (expected (52, 4))" in err
    hf_beit("BeitModel", use_relative_position_bias=True, image_size=[32, 48]).save_pretrained(tmp_path / "oblong")
    code, err = cli_error(capsys, "convert", tmp_path / "oblong", tmp_path / "out.safetensors")
    assert code == 1 and err.count("\n") == 1 and "reads it transposed" in err
    assert not (tmp_path / "out.safetensors").exists()


# ==============================================================================================================
# export --to hf
# ==============================================================================================================
@pytest.mark.parametrize("kwargs", [dict(), dict(global_pool="token", use_rel_pos_bias=False,
                                                 use_shared_rel_pos_bias=True, use_abs_pos_emb=True)],
                         ids=["mean pooling, tables per block", "class token, shared table, position embedding"])
def test_a_timm_beit_exported_to_transformers_gives_its_outputs_and_reads_back(tmp_path, vitconvert, kwargs) -> None:
    import transformers

    reference = timm_beit("beit_base_patch16_224", img_size=96, **kwargs)
    torch.save(reference.state_dict(), tmp_path / "beit.pth")
    convert(tmp_path / "beit.pth", tmp_path / "ours.safetensors")
    ours, x = load_model(tmp_path / "ours.safetensors"), batch((96, 96))
    for features, auto in ((False, transformers.AutoModelForImageClassification), (True, transformers.AutoModel)):
        out = tmp_path / f"hf{features}"
        result = vitconvert("export", tmp_path / "ours.safetensors", out, "--to", "hf",
                            *(["--features"] if features else []))
        assert result.code == 0, result.err
        theirs = outputs(auto.from_pretrained(out).eval(), x)
        mine = ours.forward_pooled(x) if features else ours(x)
        assert (mine - theirs["pooler_output" if features else "logits"]).abs().max().item() <= ATOL
    convert(tmp_path / "hfFalse", tmp_path / "back.safetensors")
    back, original = load_file(str(tmp_path / "back.safetensors")), load_file(str(tmp_path / "ours.safetensors"))
    assert back.keys() == original.keys() and all(torch.equal(back[k], original[k]) for k in back)


def test_a_beit_transformers_cannot_express_is_refused_and_nothing_written(tmp_path, capsys) -> None:
    reference = timm_beit("beit_base_patch16_224", img_size=96, global_pool="token", use_fc_norm=True)
    torch.save(reference.state_dict(), tmp_path / "beit.pth")
    convert(tmp_path / "beit.pth", tmp_path / "ours.safetensors", model="beit_base_patch16_224",
            timm_kwargs=dict(depth=2, img_size=96, global_pool="token", use_fc_norm=True))
    code, err = cli_error(capsys, "export", tmp_path / "ours.safetensors", tmp_path / "hf", "--to", "hf")
    assert code == 1 and err.count("\n") == 1
    assert "a norm after the class token: BEiT normalises every token before it" in err
    assert not (tmp_path / "hf").exists()


def test_a_beit_exports_to_onnx_and_leaves_no_tracer_tensor_behind(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from vitconvert.export.onnx import export_onnx

    reference = timm_beit("beit_base_patch16_224", img_size=96, embed_dim=64, num_heads=4,
                          use_shared_rel_pos_bias=True)
    torch.save(reference.state_dict(), tmp_path / "beit.pth")
    convert(tmp_path / "beit.pth", tmp_path / "ours.safetensors")
    report = export_onnx(tmp_path / "ours.safetensors", tmp_path / "beit.onnx")
    assert report.max_abs_diff <= ATOL  # onnxruntime against our model, on export's own check batch
    with torch.inference_mode():  # the relative position index the export traced is not what runs now
        logits = load_model(tmp_path / "ours.safetensors")(batch((96, 96)))
    assert type(logits) is torch.Tensor and (logits - reference(batch((96, 96)))).abs().max().item() <= ATOL
