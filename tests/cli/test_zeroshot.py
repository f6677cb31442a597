"""`vitconvert zeroshot`, `vitpredict --classes` and `vitconvert embed-text` on a two-tower file converted from
an OpenCLIP model with random weights: the probabilities are OpenCLIP's own zero-shot probabilities
(`build_zero_shot_classifier`, `encode_image`, softmax of `logit_scale * img @ classifier`; the sigmoid of
it plus `logit_bias` for a model with a bias), the text embeddings OpenCLIP's `encode_text`; the written
classifier runs through vitpredict, ONNX export, Ray Data and finetune as any file; bad input is one line and
writes nothing.

What is not specified here: the image preprocessing (the towers' conversion tests hold it to the source's);
the images are fed to both models as our Predictor prepares them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from helpers.cli import invoke, vitconvert_cli
from open_clip.zero_shot_classifier import build_zero_shot_classifier

from vitconvert import convert
from vitconvert.cli.predict import command as vitpredict
from vitconvert.formats.weights_file import read_record
from vitconvert.inference.predictor import Predictor

DATA = Path(__file__).parents[1] / "data"
CLASSES = ["cat", "dog", "bird", "tabby cat", "fish"]
TEMPLATES = ["a photo of a {}.", "a blurry photo of the {}.", "art of the {}."]
# float32 towers of two blocks: observed differences ~1e-7.
ATOL = 2e-6


def openclip_model(logit_bias: float | None) -> open_clip.CLIP:
    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=24, init_logit_bias=logit_bias,
        vision_cfg=open_clip.model.CLIPVisionCfg(layers=2, width=32, patch_size=16, image_size=64, head_width=16),
        text_cfg=open_clip.model.CLIPTextCfg(layers=2, width=32, heads=2, context_length=77)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:  # weights large enough that the classes differ
                p.normal_(0, 0.2)
        model.logit_scale.fill_(math.log(37.5))
    return model


def two_tower(folder: Path, model: open_clip.CLIP) -> Path:
    torch.save(model.state_dict(), folder / "clip.pt")
    cfg = {"embed_dim": 24, "vision_cfg": {"layers": 2, "width": 32, "patch_size": 16, "image_size": 64,
                                           "head_width": 16},
           "text_cfg": {"layers": 2, "width": 32, "heads": 2, "context_length": 77}}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    convert(folder / "clip.pt", folder / "clip.safetensors")
    return folder / "clip.safetensors"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    model = openclip_model(None)
    return model, two_tower(tmp_path_factory.mktemp("clip"), model)


@pytest.fixture(scope="module")
def siglike(tmp_path_factory):
    """An OpenCLIP model with a logit bias, as its SigLIP models have: sigmoid probabilities."""
    model = openclip_model(-2.0)
    return model, two_tower(tmp_path_factory.mktemp("siglike"), model)


def openclip_probabilities(model: open_clip.CLIP, images: torch.Tensor) -> torch.Tensor:
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    classifier = build_zero_shot_classifier(model, tokenizer, CLASSES, TEMPLATES)
    with torch.no_grad():
        logits = model.logit_scale.exp() * model.encode_image(images, normalize=True) @ classifier
        if model.logit_bias is not None:
            return (logits + model.logit_bias).sigmoid()
        return logits.softmax(dim=-1)


def images_as_prepared(weights: Path) -> tuple[list[Path], torch.Tensor]:
    paths = [DATA / "cat.jpg", DATA / "camera_gray.png"]
    predictor = Predictor(weights)
    return paths, torch.stack([predictor.transform(p) for p in paths])


@pytest.mark.parametrize("which", ["clip", "siglike"])
def test_zeroshot_writes_a_classifier_whose_probabilities_are_openclips(which, request, capsys, tmp_path):
    model, weights = request.getfixturevalue(which)
    out, templates = tmp_path / "zs.safetensors", tmp_path / "templates.txt"
    templates.write_text("\n".join(TEMPLATES))
    result = vitconvert_cli(capsys, "zeroshot", weights, out, "--classes", ",".join(CLASSES), "--templates",
                            templates, "-q")
    assert result.code == 0, result.err
    kind = "sigmoid" if which == "siglike" else "softmax"
    assert f"5 classes on the 24-wide image embedding, {kind} probabilities" in result.out
    record = read_record(out)
    assert record.labels == tuple(CLASSES) and record.text is None and record.probability == kind
    paths, images = images_as_prepared(out)
    ours = Predictor(out).probabilities(paths)
    torch.testing.assert_close(ours, openclip_probabilities(model, images), atol=ATOL, rtol=0)


def test_vitpredict_classes_prints_the_top_k_of_the_baked_classifier(clip, capsys, tmp_path):
    _, weights = clip
    baked = tmp_path / "zs.safetensors"
    assert vitconvert_cli(capsys, "zeroshot", weights, baked, "--classes", ",".join(CLASSES), "--templates",
                          TEMPLATES[0], "-q").code == 0
    on_the_fly = invoke(capsys, vitpredict, DATA / "cat.jpg", "--weights", weights, "--classes", ",".join(CLASSES),
                        "--templates", TEMPLATES[0], "--json")
    from_file = invoke(capsys, vitpredict, DATA / "cat.jpg", "--weights", baked, "--json")
    assert on_the_fly.code == 0 and on_the_fly.json() == from_file.json()
    assert [p["label"] for p in on_the_fly.json()[0]["predictions"]][0] in CLASSES


def test_sigmoid_probabilities_say_so_in_vitpredicts_output(siglike, capsys):
    _, weights = siglike
    table = invoke(capsys, vitpredict, DATA / "cat.jpg", "--weights", weights, "--classes", "cat,dog")
    assert table.code == 0 and "rank  sigmoid  label" in table.out
    entry = invoke(capsys, vitpredict, DATA / "cat.jpg", "--weights", weights, "--classes", "cat,dog",
                   "--json").json()[0]
    assert entry["probabilities"] == "sigmoid"


@pytest.mark.parametrize(("args", "message"), [
    (["--classes", "cat,,dog"], "error: --classes: class 2 of 3 is an empty name"),
    (["--classes", "cat,dog,cat"], "error: --classes: repeated class name 'cat'"),
    (["--classes", "cat,dog", "--templates", "a photo of a cat."], "must hold '{}' exactly once"),
])
def test_bad_classes_or_templates_are_one_line_and_write_nothing(clip, capsys, tmp_path, args, message):
    _, weights = clip
    result = vitconvert_cli(capsys, "zeroshot", weights, tmp_path / "zs.safetensors", *args, "-q")
    assert result.code == 1 and message in result.err and result.err.count("\n") == 1
    assert not (tmp_path / "zs.safetensors").exists()


def test_an_image_only_file_is_refused_saying_why(clip, capsys, tmp_path):
    _, weights = clip
    image_only = tmp_path / "img.safetensors"
    convert(weights.parent / "clip.pt", image_only, image_only=True)
    result = vitconvert_cli(capsys, "zeroshot", image_only, tmp_path / "zs.safetensors", "--classes", "cat,dog")
    assert result.code == 1 and "holds no text tower" in result.err
    assert not (tmp_path / "zs.safetensors").exists()


def test_embed_text_writes_openclips_text_embeddings(clip, capsys, tmp_path):
    model, weights = clip
    (tmp_path / "texts.txt").write_text("a photo of a cat\n\na diagram\n")
    result = vitconvert_cli(capsys, "embed-text", weights, "--texts", tmp_path / "texts.txt", "-o",
                            tmp_path / "t.npz", "--json")
    assert result.code == 0 and json.loads(result.out)["shape"] == [2, 24]
    saved = np.load(tmp_path / "t.npz")
    assert list(saved["texts"]) == ["a photo of a cat", "a diagram"]
    with torch.no_grad():
        theirs = model.encode_text(open_clip.get_tokenizer("ViT-B-32")(["a photo of a cat", "a diagram"]))
    np.testing.assert_allclose(saved["embeddings"], theirs.numpy(), atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def baked(clip, tmp_path_factory) -> Path:
    from vitconvert.zeroshot.classifier import ZeroShotRequest, build_zeroshot_classifier

    out = tmp_path_factory.mktemp("baked") / "zs.safetensors"
    build_zeroshot_classifier(clip[1], out, ZeroShotRequest(CLASSES, TEMPLATES))
    return out


def test_the_baked_classifier_exports_to_onnx_with_the_same_logits(baked, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from vitconvert.export.onnx import export_onnx
    from vitconvert.model.loading import load_model

    export_onnx(baked, tmp_path / "zs.onnx")
    x = torch.rand(2, 3, 64, 64)
    session = ort.InferenceSession(str(tmp_path / "zs.onnx"))
    (theirs,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(theirs, load_model(baked)(x).numpy(), atol=1e-4, rtol=0)


def test_the_baked_classifier_runs_on_ray_data_as_vitpredict(baked):
    ray = pytest.importorskip("ray")
    from vitconvert.cluster import predict_dataset

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        rows = predict_dataset([str(DATA / "cat.jpg")], baked, top_k=3, batch_size=1).take_all()
    finally:
        ray.shutdown()
    (serial,) = Predictor(baked).predict([DATA / "cat.jpg"], top_k=3)
    assert list(rows[0]["label"]) == [p.label for p in serial.predictions]
    assert np.abs(np.array(rows[0]["probability"]) - [p.probability for p in serial.predictions]).max() <= 1e-6


def test_the_baked_classifier_finetunes_into_a_plain_classifier(baked, tmp_path):
    from helpers.finetune import FASHION

    from vitconvert.train.finetune import finetune

    finetune(baked, FASHION / "train", tmp_path / "ft.safetensors", steps=1, batch_size=4, augment="none")
    cfg = read_record(tmp_path / "ft.safetensors").config
    assert cfg.head_norm == "none" and cfg.representation_size is None and cfg.num_classes == 10
