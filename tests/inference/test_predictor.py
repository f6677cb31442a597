"""`vitconvert.Predictor`: the Python side of vitpredict, and attention rollout."""

from __future__ import annotations

import pytest
import torch
from helpers.vit_weights import TINY, TINY_TIMM_KWARGS, our_vit, timm_classifier, write_test_weights
from PIL import Image

from vitconvert import Predictor, VitConvertError
from vitconvert.formats.weights_file import Preprocess
from vitconvert.inference.attention import rollout
from vitconvert.inference.transform import crop_geometry


def test_predict_returns_ranked_labelled_probabilities(tiny_weights, cat_jpg):
    predictor = Predictor(tiny_weights)
    (result,) = predictor.predict([cat_jpg], top_k=5)
    assert result.image == str(cat_jpg)
    probs = predictor.probabilities([cat_jpg])[0]
    top = probs.topk(5)
    assert [p.rank for p in result.predictions] == [1, 2, 3, 4, 5]
    assert [p.index for p in result.predictions] == top.indices.tolist()
    assert [p.probability for p in result.predictions] == pytest.approx(top.values.tolist(), abs=0)
    assert result.predictions[0].label == predictor.labels[top.indices[0]]
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_batching_does_not_change_results(tiny_weights, cat_jpg, gray_png):
    predictor = Predictor(tiny_weights)
    images = [cat_jpg, gray_png, cat_jpg]
    one_by_one = [r.predictions for r in predictor.predict(images, batch_size=1)]
    together = [r.predictions for r in predictor.predict(images, batch_size=3)]
    for a, b in zip(one_by_one, together, strict=False):  # another batch size, other kernels: measured <= 3.6e-7
        assert [p.index for p in a] == [p.index for p in b]
        assert [p.probability for p in a] == pytest.approx([p.probability for p in b], abs=1e-6)


def test_pil_images_and_top_k_beyond_the_class_count(tmp_path, cat_jpg):
    model = our_vit(TINY.replace(num_classes=3))
    path = write_test_weights(tmp_path / "three.safetensors", model.state_dict(), model.config, labels=None)
    predictor = Predictor(path)
    (result,) = predictor.predict(Image.open(cat_jpg), top_k=10)
    assert len(result.predictions) == 3
    assert [p.label for p in result.predictions] == [None, None, None]  # no names: indices
    assert result.image == str(cat_jpg)  # a PIL image opened from a file keeps its name
    assert sorted(p.index for p in result.predictions) == [0, 1, 2]


@pytest.mark.parametrize("size, suggestion", [("225", "the nearest sizes that tile are 224x224 and 240x240"),
                                              ("224x300", "the nearest sizes that tile are 224x288 and 224x304")])
def test_sizes_off_the_patch_grid_name_sizes_that_work(tiny_weights, size, suggestion):
    with pytest.raises(VitConvertError, match="not a multiple of the patch stride 16") as e:
        Predictor(tiny_weights, img_size=size)
    assert suggestion in str(e.value)


def test_another_size_resamples_by_the_method_the_file_records(tmp_path):
    from helpers.dino import dino_interpolate_pos_encoding

    model = our_vit(TINY)
    path = write_test_weights(tmp_path / "dino.safetensors", model.state_dict(), TINY.replace(pos_resize="dino"))
    predictor = Predictor(path, img_size="160x288")
    expected = dino_interpolate_pos_encoding(model.pos_embed.detach(), 16, (1, 3, 160, 288))
    assert torch.equal(predictor.model.pos_embed.detach(), expected)


def test_unavailable_device_is_a_clear_error(tiny_weights):
    with pytest.raises(VitConvertError, match="unknown device 'toaster'"):
        Predictor(tiny_weights, device="toaster")
    if not torch.cuda.is_available():
        with pytest.raises(VitConvertError, match="CUDA is not available"):
            Predictor(tiny_weights, device="cuda")


def test_cached_model_by_name(tmp_path, monkeypatch, tiny_weights):
    monkeypatch.setenv("VITCONVERT_CACHE", str(tmp_path))
    with pytest.raises(VitConvertError, match=r"not in the cache .*nor is it a name `vitconvert download` knows"):
        Predictor(model="tiny-vit")
    (tmp_path / "tiny-vit.safetensors").write_bytes(tiny_weights.read_bytes())
    assert Predictor(model="tiny-vit").path == tmp_path / "tiny-vit.safetensors"


# --- attention rollout -------------------------------------------------------------------------

def test_rollout_arithmetic():
    # One block, one head, uniform attention over N = 1 + 4 tokens: (U + I) / 2 per row, so the
    # class token gives each patch 1/(2N) = 0.1.
    n = 5
    uniform = torch.full((1, 1, n, n), 1 / n)
    assert torch.allclose(rollout([uniform], 1, (2, 2)), torch.full((1, 2, 2), 0.1))
    # Two such blocks multiply: row 0 of ((U + I)/2)^2 over a patch is 1/4 * (1/5 + 1/5 + 1/5) = 0.15.
    assert torch.allclose(rollout([uniform, uniform], 1, (2, 2)), torch.full((1, 2, 2), 0.15))
    # Heads are averaged: with a second head attending only to itself, (U + I)/2 + I renormalized
    # is U/4 + 3I/4, so each patch gets 1/(4N) = 0.05.
    two_heads = torch.cat([uniform, torch.eye(n).view(1, 1, n, n)], dim=1)
    assert torch.allclose(rollout([two_heads], 1, (2, 2)), torch.full((1, 2, 2), 0.05))


def test_attention_maps_are_timm_softmax_weights(tmp_path, cat_jpg):
    # timm's unfused attention passes its softmax weights through attn_drop: catch them there.
    model = timm_classifier("vit_tiny_patch16_224", **TINY_TIMM_KWARGS)
    caught = []
    for block in model.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda mod, inp, out: caught.append(out))
    predictor = Predictor(write_test_weights(tmp_path / "same.safetensors", model.state_dict(), TINY))
    x = predictor.transform(cat_jpg).unsqueeze(0)
    with torch.no_grad():
        model(x)
        ours = predictor.model.attention_maps(x)
    assert len(ours) == len(caught) == 2
    for a, b in zip(ours, caught, strict=False):
        assert a.shape == (1, 4, 197, 197)
        assert (a - b).abs().max().item() <= 1e-7  # measured: 2.0e-8 (probabilities, float32)


def test_attention_rollout_shape_and_mass(tiny_weights, cat_jpg):
    predictor = Predictor(tiny_weights, img_size="224x320")
    heat = predictor.attention_rollout([cat_jpg, cat_jpg])
    assert heat.shape == (2, 14, 20)
    assert (heat > 0).all() and heat[0].sum().item() < 1  # the rest stays on the class token
    assert torch.equal(heat[0], heat[1])


@pytest.mark.parametrize("change", [
    {"distilled": True},                      # two prefix tokens: patches start at 2
    {"hybrid_layers": (), "patch_size": 4},  # ResNet stem (stride 4) then 4x4 patches
])
def test_attention_map_for_distilled_and_hybrid_models(tmp_path, cat_jpg, change):
    config = TINY.replace(img_size=(64, 64), num_classes=10, depth=1, **change)
    model = our_vit(config)
    path = write_test_weights(tmp_path / "m.safetensors", model.state_dict(), config, labels=None)
    predictor = Predictor(path)
    assert predictor.attention_rollout([cat_jpg]).shape == (1, 4, 4)
    assert predictor.attention_map(cat_jpg).size == (451, 300)


def test_attention_map_of_a_google_record_spans_the_whole_image(tmp_path, cat_jpg):
    # Google's squash (TF resize): the model saw all of the image, so the heat map covers all of it.
    config = TINY.replace(img_size=(64, 64), num_classes=10, depth=1)
    path = write_test_weights(tmp_path / "g.safetensors", our_vit(config).state_dict(), config,
                              preprocess=Preprocess.google((64, 64)), labels=None)
    predictor = Predictor(path)
    assert crop_geometry((300, 451), predictor.preprocess).box_in((300, 451)) == (0, 0, 451, 300)
    assert predictor.attention_rollout([cat_jpg]).shape == (1, 4, 4)
    assert predictor.attention_map(cat_jpg).size == (451, 300)


def test_attention_map_needs_a_class_token(tmp_path, cat_jpg):
    config = TINY.replace(pool="gap", num_classes=10, depth=1)
    path = write_test_weights(tmp_path / "gap.safetensors", our_vit(config).state_dict(), config, labels=None)
    with pytest.raises(VitConvertError, match="need a class token.*pool='gap'"):
        Predictor(path).attention_map(cat_jpg)
