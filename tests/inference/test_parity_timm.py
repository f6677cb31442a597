"""`vitpredict` gives what timm's own pipeline gives on the same weights: model, position-embedding
resampling and preprocessing together.

The model is ViT-B/16 with random weights, in a weights file whose record carries timm's AugReg
preprocessing: once with all 12 blocks, otherwise at full width with 2 blocks (2 cores run this).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from helpers.vit_weights import AUGREG_384, timm_classifier, write_test_weights
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import checkpoint_filter_fn

from vitconvert import Predictor, ViTConfig

B16_2 = ViTConfig(depth=2)  # B/16 at 224, 1000 classes
TAG_224 = "vit_base_patch16_224.augreg_in21k_ft_in1k"
TAG_384 = "vit_base_patch16_384.augreg_in21k_ft_in1k"


@pytest.fixture(scope="module")
def b16(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    model = timm_classifier(TAG_224, depth=2)
    path = write_test_weights(tmp_path_factory.mktemp("b16") / "b16-224.safetensors", model.state_dict(), B16_2)
    return path, model.state_dict()


def timm_probs(model: torch.nn.Module, transform, image: Path) -> torch.Tensor:
    """What a timm user computes: PIL RGB, the transform, the model, softmax."""
    with torch.no_grad():
        return model.eval()(transform(Image.open(image).convert("RGB")).unsqueeze(0)).softmax(-1)[0]


def cli_probs(vitpredict, *args) -> tuple[torch.Tensor, list[int]]:
    """The full probability vector from `vitpredict --json --top 1000`, and its top-5 indices."""
    result = vitpredict(*args, "--json", "--top", "1000")
    assert result.code == 0, result.err
    (entry,) = result.json()
    probs = torch.zeros(1000)
    for p in entry["predictions"]:
        probs[p["index"]] = p["probability"]
    return probs, [p["index"] for p in entry["predictions"][:5]]


def assert_same(ours: torch.Tensor, top5: list[int], theirs: torch.Tensor) -> None:
    # Measured here: max abs probability difference 1.8e-7 to 3.7e-7 over the five tests (float32;
    # our last block computes only the class token, so only rounding differs). The bound leaves
    # room for other machines' kernels.
    assert (ours - theirs).abs().max().item() <= 2e-6
    assert top5 == theirs.topk(5).indices.tolist()
    assert ours.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_full_depth_b16_native_224(vitpredict, tmp_path, cat_jpg):
    # The real architecture, all 12 blocks (about 6 s here: 86M parameters written and read).
    model = timm_classifier(TAG_224)
    path = write_test_weights(tmp_path / "b16-full.safetensors", model.state_dict(), ViTConfig())
    theirs = timm_probs(model, create_transform(**resolve_data_config({}, model=model)), cat_jpg)
    ours, top5 = cli_probs(vitpredict, cat_jpg, "--weights", path)
    assert_same(ours, top5, theirs)


def test_native_224(vitpredict, b16, cat_jpg):
    path, state = b16
    model = timm.create_model(TAG_224, pretrained=False, depth=2)
    model.load_state_dict(state)
    theirs = timm_probs(model, create_transform(**resolve_data_config({}, model=model)), cat_jpg)
    ours, top5 = cli_probs(vitpredict, cat_jpg, "--weights", path)
    assert_same(ours, top5, theirs)


def test_res_384_from_224_weights(vitpredict, b16, cat_jpg):
    # timm's state-dict path: checkpoint_filter_fn resamples pos_embed for the 384 model. The
    # preprocessing keeps the file's crop_pct (0.9) at 384, as timm does for an input_size override.
    path, state = b16
    model = timm.create_model(TAG_224, pretrained=False, depth=2, img_size=384)
    model.load_state_dict(checkpoint_filter_fn(state, model))
    config = resolve_data_config({"input_size": (3, 384, 384)}, model=model)
    assert config["crop_pct"] == 0.9
    theirs = timm_probs(model, create_transform(**config), cat_jpg)
    ours, top5 = cli_probs(vitpredict, cat_jpg, "--weights", path, "--res", "384")
    assert_same(ours, top5, theirs)


def test_native_384_file_uses_the_384_pretrained_cfg(vitpredict, tmp_path, cat_jpg):
    # A file converted from the 384 fine-tune carries crop_pct 1.0, as timm's cfg for that tag.
    model = timm_classifier(TAG_384, depth=2, seed=1)
    path = write_test_weights(tmp_path / "b16-384.safetensors", model.state_dict(),
                         B16_2.replace(img_size=(384, 384)), preprocess=AUGREG_384)
    theirs = timm_probs(model, create_transform(**resolve_data_config({}, model=model)), cat_jpg)
    ours, top5 = cli_probs(vitpredict, cat_jpg, "--weights", path)
    assert_same(ours, top5, theirs)


def test_rectangular_224x320(b16, cat_jpg):
    path, state = b16
    model = timm.create_model(TAG_224, pretrained=False, depth=2, img_size=(224, 320))
    state = {**state, "pos_embed": resample_abs_pos_embed(state["pos_embed"], new_size=[14, 20],
                                                          old_size=[14, 14], num_prefix_tokens=1)}
    model.load_state_dict(state)
    transform = create_transform(**resolve_data_config({"input_size": (3, 224, 320)}, model=model))
    theirs = timm_probs(model, transform, cat_jpg)
    predictor = Predictor(path, img_size="224x320")
    assert predictor.config.grid_size == (14, 20)
    ours = predictor.probabilities([cat_jpg])[0]
    assert_same(ours, ours.topk(5).indices.tolist(), theirs)
    assert torch.equal(predictor.transform(cat_jpg), transform(Image.open(cat_jpg).convert("RGB")))
