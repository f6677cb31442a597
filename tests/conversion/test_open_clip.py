"""OpenCLIP's own models (CLIP with OpenCLIP's VisionTransformer, SigLIP with a timm trunk) with random weights,
converted with both towers: our image and text embeddings, logits and token ids against open_clip's
`encode_image`, `encode_text`, forward and tokenizers."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from helpers.two_towers import TEXTS, logits, perturb, register_tiny_siglip, save_state_dict, train_sentencepiece

import vitconvert
from vitconvert.core.errors import VitConvertError

open_clip = pytest.importorskip("open_clip")

# float32 through two blocks per tower: the largest differences seen were 6e-7 (image), 1e-6 (text) and 2.1e-6
# (logits, scaled by exp(t), 12 to 14).
TOL = 1e-5
CLIP_CFG = dict(embed_dim=32, vision_cfg=dict(image_size=32, layers=2, width=64, patch_size=8, head_width=16),
                text_cfg=dict(context_length=77, vocab_size=49408, width=48, heads=4, layers=2))


def _clip(quick_gelu: bool) -> tuple[torch.nn.Module, dict]:
    cfg = {**CLIP_CFG, "quick_gelu": quick_gelu}
    torch.manual_seed(0)
    model = open_clip.CLIP(**cfg).eval()
    perturb(model)
    with torch.no_grad():
        model.logit_scale.fill_(2.5)
    return model, cfg


# As the hub's OpenCLIP SigLIP repositories' open_clip_config.json gives it.
SIGLIP_PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic",
                     "resize_mode": "squash"}


@pytest.fixture(scope="module")
def siglip(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path, Path]:
    """OpenCLIP's SigLIP layout (CustomTextCLIP, a timm trunk with attention pooling, text under text.*),
    its tokenizer files (transformers' SiglipTokenizer on a SentencePiece model trained here) beside it."""
    from transformers import SiglipTokenizer

    folder = tmp_path_factory.mktemp("siglip")
    name = register_tiny_siglip()
    cfg = dict(embed_dim=32, init_logit_bias=-10,
               vision_cfg=dict(image_size=32, timm_model_name=name, timm_model_pretrained=False, timm_pool="map",
                               timm_proj="none"),
               text_cfg=dict(context_length=16, vocab_size=40, hf_tokenizer_name=str(folder / "ck"),
                             tokenizer_kwargs={"clean": "canonicalize"}, width=32, heads=4, layers=2,
                             no_causal_mask=True, proj_bias=True, pool_type="last", norm_kwargs={"eps": 1e-6},
                             act_kwargs={"approximate": "tanh"}))
    torch.manual_seed(0)
    model = open_clip.CustomTextCLIP(**cfg).eval()
    perturb(model)
    src = save_state_dict(model, folder / "ck", {**cfg, "custom_text": True}, preprocess_cfg=SIGLIP_PREPROCESS)
    SiglipTokenizer(str(train_sentencepiece(folder)), model_max_length=16).save_pretrained(folder / "ck")
    dst = folder / "siglip.safetensors"
    vitconvert.convert(src, dst)
    return model, src, dst


@pytest.mark.parametrize("quick_gelu", [True, False], ids=["openai-quickgelu", "openclip-gelu"])
def test_openclip_clip_reproduces_open_clip_embeddings_logits_and_token_ids(tmp_path: Path, quick_gelu: bool) -> None:
    model, cfg = _clip(quick_gelu)
    src = save_state_dict(model, tmp_path, cfg)
    dst = tmp_path / "clip.safetensors"
    record = vitconvert.convert(src, dst)
    assert record.text.probability == "softmax" and record.text.logit_bias == 0.0
    assert record.preprocess.resize == "crop" and record.preprocess.interpolation == "bicubic"
    assert record.preprocess.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    image, text = vitconvert.load_model(dst), vitconvert.load_text_model(dst)
    ids = open_clip.tokenizer.SimpleTokenizer(context_length=77)(TEXTS)
    assert torch.equal(text.tokenize(TEXTS), ids)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_image, ref_text = model.encode_image(x), model.encode_text(ids)
        ours_image, ours_text = image(x), text(ids)
        ref_logits = model.logit_scale.exp() * torch.nn.functional.normalize(ref_image, dim=-1) @ \
            torch.nn.functional.normalize(ref_text, dim=-1).T
    assert (ours_image - ref_image).abs().max() < TOL
    assert (ours_text - ref_text).abs().max() < TOL
    assert (logits(ours_image, ours_text, text.logit_scale, text.logit_bias) - ref_logits).abs().max() < TOL
    assert torch.equal(text.encode(TEXTS), ours_text)


def test_siglip_via_open_clips_timm_trunk_reproduces_open_clip(siglip: tuple) -> None:
    model, src, dst = siglip
    image, text = vitconvert.load_model(dst), vitconvert.load_text_model(dst)
    ref_tok = open_clip.tokenizer.HFTokenizer(str(src.parent), context_length=16, clean="canonicalize")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the longest text is cut, as both tokenizers cut it
        ids = ref_tok(TEXTS)
        assert torch.equal(text.tokenize(TEXTS), ids)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x, ids)
        ours_image, ours_text = image(x), text(ids)
        ref_image, ref_text = model.encode_image(x), model.encode_text(ids)
    assert text.probability == "sigmoid" and text.logit_bias == pytest.approx(model.logit_bias.item())
    pre = image.record.preprocess
    assert (pre.resize, pre.interpolation, pre.mean, pre.std) == ("squash", "bicubic", (0.5,) * 3, (0.5,) * 3)
    assert (ours_image - ref_image).abs().max() < TOL
    assert (ours_text - ref_text).abs().max() < TOL
    image_features, text_features, scale, bias = out  # open_clip's forward: normalised features, exp(t), b
    ref_logits = scale * image_features @ text_features.T + bias
    assert (logits(ours_image, ours_text, text.logit_scale, text.logit_bias) - ref_logits).abs().max() < TOL


def test_the_image_tower_loads_unchanged_from_a_two_tower_file(tmp_path: Path) -> None:
    model, cfg = _clip(True)
    src = save_state_dict(model, tmp_path, cfg)
    both, alone = tmp_path / "both.safetensors", tmp_path / "alone.safetensors"
    vitconvert.convert(src, both)
    record = vitconvert.convert(src, alone, image_only=True)
    assert record.text is None and record.head_is_embedding
    assert "--image-only" in " ".join(record.notes)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(vitconvert.load_model(both)(x), vitconvert.load_model(alone)(x))
    with pytest.raises(VitConvertError, match="without a text tower"):
        vitconvert.load_text_model(alone)


def test_a_damaged_text_tower_is_one_line_and_nothing_is_written(tmp_path: Path) -> None:
    model, cfg = _clip(True)
    state = {k: v for k, v in model.state_dict().items() if k != "ln_final.weight"}
    torch.save(state, tmp_path / "model.pth")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    dst = tmp_path / "out.safetensors"
    with pytest.raises(VitConvertError, match="missing keys: ln_final.weight") as e:
        vitconvert.convert(tmp_path / "model.pth", dst)
    assert "\n" not in str(e.value) and not dst.exists()
    torch.save({k: v for k, v in state.items() if k != "token_embedding.weight"}, tmp_path / "model.pth")
    with pytest.raises(VitConvertError, match="text tower is damaged or missing.*--image-only"):
        vitconvert.convert(tmp_path / "model.pth", dst)
    assert not dst.exists()


def test_a_damaged_image_tower_is_one_line_and_nothing_is_written(tmp_path: Path) -> None:
    model, cfg = _clip(True)
    state = model.state_dict()
    state["visual.proj"] = state["visual.proj"][:, :16]  # the towers' embeddings no longer meet
    src = tmp_path / "model.pth"
    torch.save(state, src)
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    with pytest.raises(VitConvertError, match="towers do not fit"):
        vitconvert.convert(src, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_without_a_model_config_the_error_says_what_the_tensors_do_not_show(tmp_path: Path) -> None:
    model, _ = _clip(True)
    torch.save(model.state_dict(), tmp_path / "model.pth")
    with pytest.raises(VitConvertError, match="do not show the activation.*--model NAME.*open_clip_config.json"):
        vitconvert.convert(tmp_path / "model.pth", tmp_path / "out.safetensors")


def test_a_bundled_open_clip_config_names_the_architecture(tmp_path: Path) -> None:
    # OpenCLIP's RN50-free ViT-B-32-quickgelu config, at its real sizes but with the blocks cut to one per tower
    cfg = json.loads((Path(open_clip.__file__).parent / "model_configs" / "ViT-B-32-quickgelu.json").read_text())
    cfg["vision_cfg"]["layers"] = cfg["text_cfg"]["layers"] = 1
    model = open_clip.CLIP(**cfg).eval()
    torch.save(model.state_dict(), tmp_path / "model.pth")
    record = vitconvert.convert(tmp_path / "model.pth", tmp_path / "out.safetensors", model="ViT-B-32-quickgelu")
    assert record.config.act == "quick_gelu" and record.text.config.act == "quick_gelu"
    assert record.source.format == "open_clip/ViT-B-32-quickgelu"
    with pytest.raises(VitConvertError, match="did you mean ViT-B-32"):
        vitconvert.convert(tmp_path / "model.pth", tmp_path / "x.safetensors", model="ViT-B-32-quickgel")


def test_a_tokenizer_larger_than_the_text_towers_vocabulary_is_refused(siglip: tuple, tmp_path: Path) -> None:
    model, src, _ = siglip
    state = model.state_dict()
    state["text.token_embedding.weight"] = state["text.token_embedding.weight"][:20]
    torch.save(state, src.parent / "small.pth")
    with pytest.raises(VitConvertError, match="tokenizer has 3[0-9] tokens but the text tower embeds 20"):
        vitconvert.convert(src.parent / "small.pth", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_a_torchscript_archive_as_openai_releases_them_is_read_without_running_its_code(tmp_path: Path) -> None:
    model, cfg = _clip(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script's deprecation
        torch.jit.script(model).save(str(tmp_path / "ViT-tiny.pt"))
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    dst = tmp_path / "clip.safetensors"
    vitconvert.convert(tmp_path / "ViT-tiny.pt", dst)
    ids = open_clip.tokenizer.SimpleTokenizer(context_length=77)(TEXTS)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (vitconvert.load_model(dst)(x) - model.encode_image(x)).abs().max() < TOL
        assert (vitconvert.load_text_model(dst)(ids) - model.encode_text(ids)).abs().max() < TOL


def test_a_torchscript_archive_naming_anything_but_tensors_is_refused(tmp_path: Path) -> None:
    import zipfile

    with zipfile.ZipFile(tmp_path / "evil.pt", "w") as z:
        z.writestr("evil/data.pkl", b"cos\nsystem\n(S'echo hi'\ntR.")
        z.writestr("evil/constants.pkl", b"")
    with pytest.raises(VitConvertError, match="cannot read as tensors.*os.system is not a tensor.*load_openai_model"):
        vitconvert.convert(tmp_path / "evil.pt", tmp_path / "out.safetensors")


def test_vitconvert_convert_recognises_a_two_tower_file_and_takes_image_only(tmp_path: Path, capsys) -> None:
    from helpers.cli import vitconvert_cli

    model, cfg = _clip(True)
    src = save_state_dict(model, tmp_path, cfg)
    code, out, err = vitconvert_cli(capsys, "convert", src, tmp_path / "both.safetensors", "-q", "--json")
    assert code == 0, err
    printed = json.loads(out)
    assert printed["format"] == "open_clip" and printed["record"]["text"]["probability"] == "softmax"
    code, out, err = vitconvert_cli(capsys, "convert", src, tmp_path / "image.safetensors", "--image-only", "-q",
                                    "--json")
    assert code == 0, err
    printed = json.loads(out)
    assert "text" not in printed["record"] and printed["left_out"]["token_embedding.weight"].endswith("(--image-only)")
    code, _, err = vitconvert_cli(capsys, "convert", src, tmp_path / "x.safetensors", "--from", "timm", "--image-only")
    assert code == 2 and "--image-only does not apply to --from timm" in err


def test_a_two_tower_files_image_tower_exports_to_onnx_as_before(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model, cfg = _clip(True)
    dst = tmp_path / "clip.safetensors"
    vitconvert.convert(save_state_dict(model, tmp_path, cfg), dst)
    vitconvert.export_onnx(dst, tmp_path / "clip.onnx")
    x = torch.randn(1, 3, 32, 32)
    session = ort.InferenceSession(str(tmp_path / "clip.onnx"))
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert (torch.from_numpy(out) - model.encode_image(x)).abs().max() < TOL
