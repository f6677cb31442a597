"""`vitconvert export FILE --to hf OUT_DIR` / `export_hf`: transformers' Auto classes load the directory with
nothing else and compute what our model does; its processor preprocesses as the file says, to the pixel
where transformers' processors can; what transformers cannot express is refused, every reason named,
and nothing is written.

The reference is the installed transformers package (the `hf` extra, in `test`); no network.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers", reason="the export --to hf tests run transformers: "
                                                          "pip install '.[hf]'")

import torch  # noqa: E402
from helpers import published_layouts as pl  # noqa: E402
from helpers.hf import largest_difference, load_hf, outputs  # noqa: E402
from helpers.timm_reference import timm_vit  # noqa: E402
from helpers.vit_weights import our_vit, spread_heads, write_test_weights  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from vitconvert import (  # noqa: E402
    ViTConfig,
    VitConvertError,
    convert_hf,
    convert_jax,
    convert_timm,
    export_hf,
    load_model,
    read_record,
)
from vitconvert.formats.weights_file import Preprocess  # noqa: E402
from vitconvert.inference.images import load_rgb  # noqa: E402
from vitconvert.inference.transform import crop_geometry, to_tensor  # noqa: E402

# float32; transformers runs q, k, v apart where we fuse them, and our last block computes the class token
# alone. Observed against our model: at most 1.4e-6; against timm's: 0.
ATOL = 1e-5
ROOT = Path(__file__).resolve().parents[2]
PHOTOS = [ROOT / "tests" / "data" / "cat.jpg", ROOT / "tests" / "data" / "camera_gray.png",
          *sorted((ROOT / "benchmarks" / "images").glob("*.jpg"))]
SMALL = ViTConfig(img_size=(32, 32), patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_dim=64, num_classes=5)
DINOV2 = SMALL.replace(num_classes=0, layer_scale=True, ln_eps=1e-6)

OURS = {  # name: (our config, export features only, transformers' class expected)
    "distilled": (SMALL.replace(distilled=True), False, "DeiTForImageClassificationWithTeacher"),
    "one register token": (SMALL.replace(reg_tokens=1, qkv_bias=False), False, "DeiTForImageClassification"),
    "headless with a representation layer": (SMALL.replace(num_classes=0, representation_size=48), False,
                                             "ViTModel"),
    "features of a classifier, quick_gelu": (SMALL.replace(act="quick_gelu"), True, "ViTForImageClassification"),
    "layer scale (Dinov2)": (DINOV2, False, "Dinov2Model"),
    "layer scale, packed SwiGLU": (DINOV2.replace(mlp="swiglu_packed", act="silu", mlp_dim=176), False,
                                   "Dinov2Model"),
    "layer scale, SwiGLU": (DINOV2.replace(mlp="swiglu", act="silu", mlp_dim=88), False, "Dinov2Model"),
}


def batch(size=(32, 32), n=2) -> torch.Tensor:
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(0))


def exported(src: Path, out: Path, features: bool = False) -> tuple[torch.nn.Module, dict]:
    done = export_hf(src, out, features=features)
    assert sorted(p.name for p in out.iterdir()) == sorted(done.files)
    return load_hf(out), json.loads((out / "config.json").read_text())


def test_a_jax_converted_file_runs_the_tanh_gelu_in_transformers(tmp_path):
    """The JAX models were trained with the tanh GELU: transformers must run that one, not erf."""
    model = pl.random_timm_vit("tiny", gelu="tanh")
    pl.write_npz(model, tmp_path / "t.npz", "vit_jax")
    convert_jax(tmp_path / "t.npz", tmp_path / "t.safetensors")
    theirs, config = exported(tmp_path / "t.safetensors", tmp_path / "hf")
    assert (config["hidden_act"], config["layer_norm_eps"], config["architectures"]) == \
        ("gelu_pytorch_tanh", 1e-6, ["ViTForImageClassification"])
    x = batch()
    assert largest_difference(load_model(tmp_path / "t.safetensors"), outputs(theirs, x), x) <= ATOL
    with torch.inference_mode():  # and the JAX model's own logits, as timm computes them with tanh GELU: 0
        assert (outputs(theirs, x)["logits"] - model(x)).abs().max().item() <= ATOL


def test_a_timm_converted_file_gives_timms_logits_in_transformers(tmp_path):
    reference = spread_heads(timm_vit("vit_tiny_patch16_224", depth=2, img_size=32, patch_size=8, num_classes=7))
    torch.save(reference.state_dict(), tmp_path / "t.pth")
    convert_timm(tmp_path / "t.pth", tmp_path / "t.safetensors")
    theirs, config = exported(tmp_path / "t.safetensors", tmp_path / "hf")
    assert config["hidden_act"] == "gelu" and len(config["id2label"]) == 7
    x = batch()
    with torch.inference_mode():
        assert (outputs(theirs, x)["logits"] - reference(x)).abs().max().item() <= ATOL  # observed 0


@pytest.mark.parametrize("name", list(OURS))
def test_transformers_computes_what_our_model_does(tmp_path, name):
    cfg, features, architecture = OURS[name]
    names = [f"class {i}" for i in range(cfg.num_classes)] or None
    src = write_test_weights(tmp_path / "ours.safetensors", our_vit(cfg).state_dict(), cfg, labels=names)
    theirs, config = exported(src, tmp_path / "hf", features)
    expected = architecture.replace("ForImageClassification", "Model") if features else architecture
    assert config["architectures"] == [expected] and type(theirs).__name__ == expected
    if names and not features:
        assert [config["id2label"][str(i)] for i in range(cfg.num_classes)] == names
    x = batch()
    ours = load_model(src)
    if features:  # transformers' last_hidden_state is our tokens; its pooler (random) is not ours
        with torch.inference_mode():
            diff = (ours.forward_features(x) - outputs(theirs, x)["last_hidden_state"]).abs().max().item()
    else:
        diff = largest_difference(ours, outputs(theirs, x), x)
    assert diff <= ATOL


@pytest.mark.parametrize("name", ["distilled", "one register token", "layer scale, packed SwiGLU"])
def test_hf2torch_reads_back_what_export_wrote_bit_for_bit(tmp_path, name):
    cfg = OURS[name][0]
    src = write_test_weights(tmp_path / "ours.safetensors", our_vit(cfg).state_dict(), cfg)
    export_hf(src, tmp_path / "hf")
    back = convert_hf(tmp_path / "hf", tmp_path / "back.safetensors")
    assert back.config == cfg.replace(pos_resize="transformers")
    before, after = load_file(src), load_file(tmp_path / "back.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


REFUSED = {  # our config -> a phrase of the reason
    "hybrid": (ViTConfig(img_size=(64, 64), patch_size=1, embed_dim=32, depth=1, num_heads=2, mlp_dim=64,
                         num_classes=5, hybrid_layers=(1, 1)), "a ResNet stem before the patch embedding"),
    "gap pooling": (SMALL.replace(pool="gap"), "pooling 'gap'"),
    "map pooling": (SMALL.replace(pool="map"), "pooling 'map'"),
    "register tokens": (SMALL.replace(reg_tokens=4), "4 register token(s)"),
    "fc_norm": (SMALL.replace(pool="gap", fc_norm=True), "fc_norm"),
    "no final norm": (SMALL.replace(final_norm=False), "no final norm"),
    "rmsnorm": (SMALL.replace(norm="rmsnorm"), "rmsnorm layers"),
    "parallel blocks": (SMALL.replace(block="parallel"), "parallel blocks"),
    "big_vision position embeddings": (SMALL.replace(no_embed_class=True), "no_embed_class"),
    "layer scale with a classifier": (DINOV2.replace(num_classes=5), "layer scale with a classifier"),
    "representation layer before a classifier": (SMALL.replace(representation_size=48),
                                                 "a representation layer before the classifier"),
    "RoPE (Naver's, with a key bias)": (SMALL.replace(rope="cat"), "rotary position embeddings (cat)"),
    "grouped-query attention": (SMALL.replace(kv_heads=(1,) * SMALL.depth), "attention heads not of the width"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_what_transformers_cannot_express_is_refused_and_nothing_written(tmp_path, vitconvert, name):
    cfg, why = REFUSED[name]
    src = write_test_weights(tmp_path / "ours.safetensors", our_vit(cfg).state_dict(), cfg)
    with pytest.raises(VitConvertError, match=f"transformers cannot express this model: .*{re.escape(why)}"):
        export_hf(src, tmp_path / "hf")
    result = vitconvert("export", src, "--to", "hf", tmp_path / "hf")
    assert result.code == 1 and result.err.count("\n") == 1 and why in result.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours.safetensors"]


def test_an_existing_directory_is_replaced_only_with_force_and_only_an_exports(tmp_path, vitconvert):
    src = write_test_weights(tmp_path / "ours.safetensors", our_vit(SMALL).state_dict(), SMALL)
    out = tmp_path / "hf"
    assert vitconvert("export", src, "--to", "hf", out).code == 0
    again = vitconvert("export", src, "--to", "hf", out)
    assert again.code == 1 and "holds an earlier run's output; pass --force to replace it" in again.err
    assert vitconvert("export", src, "--to", "hf", out, "--force", "--json").code == 0
    (out / "notes.txt").write_text("mine")
    forced = vitconvert("export", src, "--to", "hf", out, "--force")
    assert forced.code == 1 and "holds other files than the ones written here (notes.txt)" in forced.err
    assert (out / "notes.txt").read_text() == "mine"
    usage = vitconvert("export", src, "--to", "hf", tmp_path / "other", "--res", "64")
    assert usage.code == 2 and "--res: an ONNX option" in usage.err and not (tmp_path / "other").exists()


def test_a_directory_of_other_files_is_refused_saying_what_will_work_not_to_pass_force(tmp_path, vitconvert):
    src = write_test_weights(tmp_path / "ours.safetensors", our_vit(SMALL).state_dict(), SMALL)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for force in ([], ["--force"]):  # the same answer with or without --force: it would not help
        result = vitconvert("export", src, "--to", "hf", out, *force)
        assert result.code == 1 and result.err.count("\n") == 1
        assert "holds other files than the ones written here (notes.txt)" in result.err
        assert "give a new or an empty directory" in result.err and "pass --force" not in result.err
        assert "force=True" not in result.err  # the CLI speaks of options, not keyword arguments
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_a_failed_export_leaves_an_existing_directory_as_it_was_and_nothing_else(tmp_path, monkeypatch):
    from helpers.faults import disk_full_after

    src = write_test_weights(tmp_path / "ours.safetensors", our_vit(SMALL).state_dict(), SMALL)
    export_hf(src, tmp_path / "hf")
    before = {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()}
    disk_full_after(monkeypatch, tensors=5)
    with pytest.raises(OSError, match="No space left"):
        export_hf(src, tmp_path / "hf", force=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "ours.safetensors"]  # no temporary directory


# What export writes for each kind of preprocessing, and how close transformers' processor comes.
PREPROCESSING = {
    "squash, bilinear (ViTImageProcessor)": Preprocess(size=(224, 224)),
    "AugReg crop 0.9, bicubic (BitImageProcessor)": Preprocess(size=(224, 224), resize="crop", crop_pct=0.9,
                                                               interpolation="bicubic"),
}


@pytest.fixture(scope="module")
def photo_model(tmp_path_factory):
    """A model at 224 with a spread head, in one file per preprocessing, each exported."""
    folder = tmp_path_factory.mktemp("photos")
    cfg = ViTConfig(patch_size=32, embed_dim=32, depth=2, num_heads=4, mlp_dim=64, num_classes=10)
    state = our_vit(cfg).state_dict()
    made = {}
    for i, (name, pre) in enumerate(PREPROCESSING.items()):
        src = write_test_weights(folder / f"{i}.safetensors", state, cfg, preprocess=pre,
                                 labels=[f"class {c}" for c in range(10)])
        export_hf(src, folder / f"hf{i}")
        made[name] = (src, folder / f"hf{i}")
    return made


@pytest.mark.parametrize("name", list(PREPROCESSING))
def test_transformers_processor_preprocesses_as_the_file_says(photo_model, name):
    """Pillow's resize in both; transformers floors a crop's margin where torchvision (timm, ours) rounds it
    half to even, so an odd margin puts its crop one pixel over (rocket.jpg at 224 / 0.9: 371 - 224 = 147)."""
    src, out = photo_model[name]
    pre = read_record(src).preprocess
    for backend, bound in (("pil", 0.0), ("torchvision", 2 / 255)):  # observed: 0 and 2/255 (its own resize)
        processor = transformers.AutoImageProcessor.from_pretrained(out, backend=backend)
        for path in PHOTOS:
            image = load_rgb(path)
            g = crop_geometry((image.height, image.width), pre)
            if (g.resized[1] - g.size[1]) % 4 == 3 or (g.resized[0] - g.size[0]) % 4 == 3:
                continue  # round(x.5) goes up here, floor does not: a one-pixel shift, top-5 checked below
            theirs = torch.as_tensor(processor(images=image, return_tensors="pt")["pixel_values"][0])
            pixels = ((theirs - to_tensor(image, pre)).abs() * torch.tensor(pre.std).view(3, 1, 1)).max().item()
            assert pixels <= bound + 1e-6, (backend, path.name)


# How far torchvision's resize (up to 2/255 a pixel) moves this model's logits on the photos: observed 0.025.
TORCHVISION_LOGITS = 0.03


@pytest.mark.parametrize("backend", ["pil", "torchvision"])
@pytest.mark.parametrize("name", list(PREPROCESSING))
def test_auto_image_processor_and_the_model_give_vitpredicts_top_5(photo_model, vitpredict, name, backend):
    """transformers' Pillow backend gives vitpredict's top-5 on every photo; its default, torchvision, too but
    for a race closer than its resize moves the logits (camera_gray.png squashed: 5th and 6th 0.0011 apart)."""
    src, out = photo_model[name]
    ours = vitpredict(*PHOTOS, "--weights", src, "--top", "6", "--json")
    assert ours.code == 0, ours.err
    processor, model = transformers.AutoImageProcessor.from_pretrained(out, backend=backend), load_hf(out)
    for path, row in zip(PHOTOS, ours.json(), strict=False):
        with torch.inference_mode():
            logits = model(**processor(images=load_rgb(path), return_tensors="pt")).logits[0]
        theirs = [model.config.id2label[i] for i in logits.topk(5).indices.tolist()]
        expected = {p["label"]: math.log(p["probability"]) for p in row["predictions"]}  # logits, up to a constant
        for got, want in zip(theirs, list(expected)[:5], strict=False):
            close = backend == "torchvision" and got in expected and \
                abs(expected[got] - expected[want]) <= TORCHVISION_LOGITS
            assert got == want or close, (path.name, theirs, list(expected))
