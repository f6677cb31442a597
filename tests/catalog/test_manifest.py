"""weights_manifest.json: the schema, the loader's checks, and the facts it records; every entry is what
the converter makes of its published file; every entry that names a timm model agrees with timm's registry."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from helpers import big_vision_layouts as bv
from helpers import published_layouts as pl
from helpers.manifest import tiny_entry, tiny_npz_bytes, write_manifest
from timm.models import get_pretrained_cfg

from vitconvert.catalog.manifest import FAMILIES, bundled_path, find, load_manifest
from vitconvert.conversion.jax import identify
from vitconvert.core.config import WIDTHS
from vitconvert.core.errors import VitConvertError
from vitconvert.core.param_shapes import param_shapes

GCS = "https://storage.googleapis.com/"
BUCKET = GCS + "vit_models/"
MANIFEST = load_manifest(bundled_path())
ENTRIES = MANIFEST.checkpoints
# Classifiers in vit_jax's layout, named by their ViT paper architecture (B/16, R50+L/32, ...).
VIT_JAX_CLASSIFIERS = ("vit-2020", "augreg", "sam")
# Where each family's files are: Google's buckets, and the folders the authors name.
FOLDERS = {
    "vit-2020": ("vit_models/imagenet21k/", "vit_models/imagenet21k+imagenet2012/"),
    "augreg": ("vit_models/augreg/",),
    "sam": ("vit_models/sam/",),
    "lit": ("vit_models/lit/",),
    "big_vision": ("big_vision/",),
    "flexivit": ("big_vision/flexivit/",),
    "siglip": ("big_vision/siglip/",),
    "siglip2": ("big_vision/siglip2/",),
}
# big_vision's models/vit.py decode_variant: width, depth, heads, MLP (transcribed at big_vision@0127fb6b337e).
BV_VARIANTS = {"S": (384, 12, 6, 1536), "B": (768, 12, 12, 3072), "L": (1024, 24, 16, 4096),
               "So400m": (1152, 27, 16, 4304), "g-opt": (1536, 40, 16, 6144)}
# A source pinned to a commit: owner/repository@<at least 12 hex digits>.
PINNED = re.compile(r"[\w.-]+/[\w.-]+@[0-9a-f]{12,40}\b")
# The families added with big_vision's checkpoints: each entry cites its sources at a commit.
CITED_FAMILIES = ("sam", "big_vision", "flexivit", "lit", "siglip", "siglip2")
MANIFEST_PAGE = Path(__file__).resolve().parents[2] / "docs" / "manifest.md"


# --- The schema, the loader's checks, and the facts each family's entries record ---

def test_default_is_the_bundled_copy_and_the_env_var_overrides(tmp_path, monkeypatch):
    monkeypatch.delenv("VITCONVERT_MANIFEST", raising=False)
    assert load_manifest().names == MANIFEST.names
    other = write_manifest(tmp_path / "m.json", tiny_entry(b"x"))
    monkeypatch.setenv("VITCONVERT_MANIFEST", str(other))
    assert load_manifest().names == ["tiny-test-B16"]


def test_entries_round_trip_unchanged():
    raw = json.loads(bundled_path().read_text())
    assert raw["schema_version"] == 1
    assert [e.to_dict() for e in ENTRIES] == raw["checkpoints"]


def test_coverage():
    names = set(MANIFEST.names)
    for arch in ("B16", "B32", "L16", "L32", "H14", "R50B16"):
        assert f"orig-{arch}-in21k" in names
    for arch in ("B16", "B32", "L16", "L32", "R50B16"):
        assert f"orig-{arch}-in21k-ft-in1k-384" in names
    for arch in ("Ti16", "S16", "S32", "B16", "B32", "L16", "RTi16", "R26S32", "R50L32"):
        assert f"augreg-{arch}-in21k" in names
        assert f"augreg-{arch}-in21k-ft-in1k-384" in names
        assert f"augreg-{arch}-in21k-ft-in1k-224" in names or f"augreg-{arch}-in21k-ft-in1k-224-timm" in names
    for arch in ("B8", "R26B32", "R50L32"):  # the 2020 files added after the paper
        assert f"orig-{arch}-in21k" in names
    assert "orig-B8-in21k-ft-in1k-384" in names
    assert {"augreg-B8-in21k", "augreg-B8-in21k-ft-in1k-224", "augreg-B8-in21k-timm",
            "augreg-B8-in21k-ft-in1k-224-timm"} <= names
    for arch in ("S16", "B32", "B16"):  # timm's augreg_in1k tags
        assert {f"augreg-{arch}-in1k-ft-in1k-224", f"augreg-{arch}-in1k-ft-in1k-384"} <= names
    for arch in ("S16", "B16", "B32", "L16", "L32"):
        assert f"sam-{arch}-in1k" in names
    assert {f"bigvision-S16-i1k-{n}ep" for n in (90, 150, 300)} <= names
    assert {f"lit-{m}-img" for m in ("B16B", "B16B_2", "L16L", "L16S", "L16Ti")} <= names
    for res in (224, 256, 384, 512):
        assert f"siglip-B16-{res}-img" in names and f"siglip2-B16-{res}-img" in names
    assert {"siglip-So400m14-384-img", "siglip-So400m16-i18n-256-img", "siglip2-gopt16-384-img"} <= names
    assert len([n for n in names if n.startswith("siglip-")]) == 10
    assert len([n for n in names if n.startswith("siglip2-")]) == 15
    for variant in "SBL":
        assert {f"flexivit-{variant}-i1k-{n}ep" for n in (1200, 600, 300, 90)} <= names
    assert len(ENTRIES) == 115


def test_every_family_is_known_and_every_file_is_in_its_google_bucket():
    assert set(FOLDERS) == set(FAMILIES)
    for e in ENTRIES:
        assert e.url.startswith(tuple(GCS + folder for folder in FOLDERS[e.family])), e.name
        assert e.url.endswith(".npz")
        # The layout follows the bucket: vit_jax's files in gs://vit_models, big_vision's in gs://big_vision.
        assert e.format == ("jax-npz/vit_jax" if e.url.startswith(BUCKET) else "jax-npz/big_vision"), e.name


def test_the_new_families_cite_their_sources_at_a_commit():
    for e in ENTRIES:
        if e.family in CITED_FAMILIES:
            assert e.notes[0].startswith("facts from ") and PINNED.search(e.notes[0]), e.name
            assert e.top1 is None or PINNED.search(e.top1_source), e.name


def test_the_manifest_page_says_where_each_familys_facts_come_from():
    text = MANIFEST_PAGE.read_text(encoding="utf-8")
    section = text.split("## Where the facts come from", 1)[1].split("And for every family", 1)[0]
    bullets = {m.group(1): m.group(2) for m in re.finditer(r"^- `([\w-]+)`: (.*?)(?=^\S|^- |\Z)", section,
                                                            re.MULTILINE | re.DOTALL)}
    assert set(bullets) == set(FAMILIES)
    for family, bullet in bullets.items():
        if family in CITED_FAMILIES:
            assert PINNED.search(bullet), family


def test_unknown_facts_are_null_and_the_entry_says_why():
    for e in ENTRIES:
        if e.head_is_zero is None:
            assert any("head_is_zero is null" in n for n in e.notes), e.name


@pytest.mark.parametrize("e", [e for e in ENTRIES if e.family in VIT_JAX_CLASSIFIERS], ids=lambda e: e.name)
def test_vit_jax_classifier_facts(e):
    assert e.act == "gelu_tanh" and e.config.pool == "token"
    dim, depth, heads, mlp = WIDTHS[{"Ti": "Ti", "S": "S", "B": "B", "L": "L", "H": "H"}[
        e.arch.split("+")[-1].split("/")[0]]]
    assert (e.config.embed_dim, e.config.depth, e.config.num_heads, e.config.mlp_dim) == (dim, depth, heads, mlp)
    # total stride = the number after the slash (R+Ti/16 is the exception: /32, see docs)
    stride = 32 if e.arch == "R+Ti/16" else int(e.arch.split("/")[1])
    assert e.config.total_stride == stride
    if e.num_classes == 21843:
        assert e.labels == "imagenet-21k" and e.train_resolution == 224 and e.upstream is None
        assert e.top1 is None
    else:
        assert e.num_classes == 1000 and e.labels == "imagenet-1k" and not e.head_is_zero
        assert e.config.representation_size is None
    if e.family == "vit-2020":
        assert e.url.startswith(BUCKET + ("imagenet21k/" if e.num_classes == 21843 else "imagenet21k+imagenet2012/"))
        if e.num_classes == 21843:  # the 2020 ImageNet-21k files: pre_logits of width D, zero head (or unknown)
            assert e.head_is_zero in (True, None) and e.config.representation_size == e.config.embed_dim
    elif e.family == "augreg":  # pre-trained on ImageNet-21k or -1k, then (optionally) fine-tuned on ImageNet-1k
        assert re.fullmatch(
            r"(Ti|S|B|L|R_Ti|R26_S|R50_L)_(8|16|32)-i(21|1)k-300ep-lr_0\.001-aug_\w+-wd_[\d.]+-do_[\d.]+-sd_[\d.]+"
            r"(--imagenet2012-steps_20k-lr_0\.0[13]-res_(224|384))?\.npz", e.filename), e.filename
        assert not e.head_is_zero and e.config.representation_size is None
        assert ("-i1k-" in e.filename) == ("-in1k-ft-" in e.name)
        if e.num_classes == 1000:
            assert e.filename.endswith(f"-res_{e.train_resolution}.npz")
    else:  # SAM: trained from scratch on ImageNet-1k; vit_jax's model names (ViT-B_16.npz)
        assert e.filename == "ViT-" + e.arch.replace("/", "_") + ".npz" and e.upstream is None
        assert e.num_classes == 1000 and e.train_resolution == 224
    if e.upstream is not None:  # a fine-tune names the checkpoint it was fine-tuned from
        up = find(e.upstream, MANIFEST)
        assert up.num_classes == 21843 and up.arch == e.arch
        if e.family == "augreg":
            assert e.filename.startswith(up.filename[: -len(".npz")] + "--imagenet2012-")
    if e.preprocess_source == "google":
        # vit_jax's tf.image.resize
        assert (e.preprocess.resize, e.preprocess.interpolation) == ("squash", "bilinear_tf")
    else:  # timm's pretrained cfgs: Pillow's bicubic and a center crop
        assert (e.preprocess.resize, e.preprocess.interpolation) == ("crop", "bicubic")
    assert e.preprocess.mean == e.preprocess.std == (0.5, 0.5, 0.5)
    assert e.size_bytes is None or e.size_bytes > 0


def widths(e) -> tuple[int, int, int, int]:
    c = e.config
    return c.embed_dim, c.depth, c.num_heads, c.mlp_dim


def crop_side(e) -> int:
    """The side the image is resized to before the center crop (timm's rule, as vitpredict applies it)."""
    return math.floor(e.preprocess.size[0] / e.preprocess.crop_pct)


def vit_jax_mib(width: int, depth: int, mlp: int, patch: int, res: int, classes: int, rep: int | None) -> float:
    """float32 bytes of a vit_jax ViT classifier with a class token, in MiB, counted from its modules."""
    n = (res // patch) ** 2
    block = 2 * 2 * width + 4 * (width * width + width) + 2 * width * mlp + mlp + width  # 2 LN, q k v out, MLP
    params = (patch * patch * 3 * width + width) + width + (n + 1) * width + depth * block + 2 * width
    params += (width * rep + rep if rep else 0) + (rep or width) * classes + classes
    return 4 * params / 2**20


# What `gsutil ls -lh` printed in vit_jax.ipynb (vision_transformer@c6de1e5378c9), in MiB.
LISTED_MIB = {"orig-B16-in21k": 393.69, "orig-B16-in21k-ft-in1k-224": 330.29, "orig-B8-in21k": 393.72,
              "orig-B8-in21k-ft-in1k-384": 334.78, "sam-B16-in1k": 330.3, "sam-B32-in1k": 336.61}


def test_the_listed_sizes_decide_what_the_authors_do_not_say():
    for name, listed in LISTED_MIB.items():
        c = find(name, MANIFEST).config
        mib = vit_jax_mib(c.embed_dim, c.depth, c.mlp_dim, c.patch_size, c.img_size[0], c.num_classes,
                          c.representation_size)
        assert abs(mib - listed) < 0.15, name  # observed 0.06 to 0.07 MiB more on disk: the npz headers
    # The alternatives are MiB away: the B/8 fine-tune at 224 px, the B/8 ImageNet-21k file without pre_logits.
    assert abs(vit_jax_mib(768, 12, 3072, 8, 224, 1000, None) - LISTED_MIB["orig-B8-in21k-ft-in1k-384"]) > 4
    assert abs(vit_jax_mib(768, 12, 3072, 8, 224, 21843, None) - LISTED_MIB["orig-B8-in21k"]) > 2


def test_big_vision_i1k_baselines():
    found = [e for e in ENTRIES if e.family == "big_vision"]
    assert len(found) == 3
    for e in found:
        epochs = re.fullmatch(r"vit_s16_i1k_(\d+)ep\.npz", e.filename).group(1)
        assert e.name == f"bigvision-S16-i1k-{epochs}ep" and e.arch == "S/16"
        # configs/vit_s16_i1k.py: variant S/16, pool_type gap, posemb sincos2d, rep_size True (= width).
        assert widths(e) == BV_VARIANTS["S"] and e.config.patch_size == 16 and e.train_resolution == 224
        c = e.config
        assert (c.pool, c.fc_norm, c.pos_embed, c.representation_size) == ("gap", False, "sincos2d", 384)
        assert not c.has_class_token and e.num_classes == 1000 and e.labels == "imagenet-1k"
        assert not c.no_embed_class  # no prefix token to leave out: spelled as jax2torch writes it, and timm
        # pp_eval: resize_small(256)|central_crop(224)|value_range(-1, 1)
        assert (e.preprocess.resize, crop_side(e)) == ("crop", 256) and e.preprocess_source == "big_vision"
        assert e.preprocess.mean == e.preprocess.std == (0.5, 0.5, 0.5)
        assert e.timm_model is None and not e.head_is_zero and e.upstream is None
    assert [e.top1 for e in found] == [76.5, None, None]  # the README's 90-epoch figure only


def test_lit_image_towers():
    found = [e for e in ENTRIES if e.family == "lit"]
    assert len(found) == 5
    for e in found:
        model = re.fullmatch(r"LiT-(\w+)\.npz", e.filename).group(1)  # e.g. B16B_2: ViT-B/16 image, BERT-Base text
        assert e.name == f"lit-{model}-img" and e.arch == f"{model[0]}/16"
        assert widths(e) == WIDTHS[model[0]] and e.config.patch_size == 16 and e.train_resolution == 224
        assert e.config.pool == "token" and e.config.representation_size is None
        # LiT-B16B keeps a 768-wide linear head on the image side; the later models have none (changelog 2022-08-18).
        assert e.num_classes == (768 if model == "B16B" else 0)
        assert e.labels is None and e.timm_model is None and e.top1 is None and not e.head_is_zero
        # vit_jax's PreprocessImages: tf.image.resize to 224x224, values to [-1, 1]
        assert e.preprocess_source == "google"
        assert (e.preprocess.resize, e.preprocess.interpolation) == ("squash", "bilinear_tf")


FLEXIVIT_TIMM = {"S": "flexivit_small", "B": "flexivit_base", "L": "flexivit_large"}


@pytest.mark.parametrize("e", [e for e in ENTRIES if e.family == "flexivit"], ids=lambda e: e.name)
def test_flexivit(e):
    size, epochs = re.fullmatch(r"flexivit_([sbl])_i1k(?:_(\d+)ep)?\.npz", e.filename).groups()
    epochs = epochs or "1200"  # the README: the file without a suffix is the 1200ep version
    variant = size.upper()
    assert e.name == f"flexivit-{variant}-i1k-{epochs}ep" and e.arch == f"FlexiViT-{variant}"
    assert widths(e) == BV_VARIANTS[variant]
    # The file as stored (what jax2torch writes): flexi/vit.py's underlying parameters, a 32x32 kernel (the
    # paper's; an assumption the notes state) and posemb_size (7, 7), so 7 x 32 = 224 px; its position
    # embedding covers the patches only and is resized at every forward.
    c = e.config
    assert (c.patch_size, e.train_resolution, c.pool) == (32, 224, "token")
    assert (c.no_embed_class, c.pos_resize) == (True, "flexivit")
    assert c.grid_size == (7, 7)
    assert e.num_classes == 1000 and e.labels == "imagenet-1k" and c.representation_size is None
    # pp_eval_student: resize(272)|central_crop(240)|value_range(-1, 1), its crop fraction at the file's size.
    assert e.preprocess_source == "big_vision"
    assert (e.preprocess.resize, e.preprocess.interpolation) == ("squash", "bilinear_tf")
    assert (e.preprocess.size, e.preprocess.crop_pct) == ((224, 224), 240 / 272)
    assert e.preprocess.mean == e.preprocess.std == (0.5, 0.5, 0.5)
    # i1k_deit3_distill.py evaluates the student at patch_size (16, 16), res 240: the entry says how to run that.
    assert any(f"`vitpredict --model {e.name} --patch-size 16 --res 240`" in n for n in e.notes)
    assert any("assumption" in n and "32x32" in n for n in e.notes)
    if e.timm_model is None:
        assert epochs == "90" and e.top1 is None
    else:
        assert e.timm_model == f"{FLEXIVIT_TIMM[variant]}.{epochs}ep_in1k"
        # timm's figure is at 240 px, patch 16, with its own preprocessing: the entry says so where it cites it.
        assert "240 px with patch 16" in e.top1_source and "crop_pct 0.95, bicubic" in e.top1_source


SIGLIP_VARIANTS = {"b": "B", "l": "L", "so400m": "So400m", "g-opt": "g-opt"}


@pytest.mark.parametrize("e", [e for e in ENTRIES if e.family in ("siglip", "siglip2")], ids=lambda e: e.name)
def test_siglip_image_towers(e):
    # The file names say the tower: webli_en_b16_224_63724782, webli_en_so400m_384_58765454 (the /14 So400m),
    # webli_i18n_so400m_16_256_78061115; siglip2_b16_224, siglip2_g-opt16_256.
    if e.family == "siglip":
        lang, variant, patch, res = re.fullmatch(
            r"webli_(en|i18n)_(b|l|so400m)_?(\d+)?_(\d+)_\d+\.npz", e.filename).groups()
        patch = patch or "14"
    else:
        name = re.fullmatch(r"siglip2_(b|l|so400m|g-opt)(\d+)_(\d+)\.npz", e.filename)
        lang, (variant, patch, res) = "en", name.groups()
    variant, patch, res = SIGLIP_VARIANTS[variant], int(patch), int(res)
    i18n = "-i18n" if lang == "i18n" else ""
    assert e.name == f"{e.family}-{variant.replace('-', '')}{patch}{i18n}-{res}-img" and e.arch == f"{variant}/{patch}"
    assert widths(e) == BV_VARIANTS[variant] and e.config.patch_size == patch and e.train_resolution == res
    # The image tower of a two-tower model: MAP pooling, no class token, no head (out_dim None on the image side).
    assert e.config.pool == "map" and not e.config.has_class_token and e.num_classes == 0
    assert not e.config.no_embed_class  # no prefix token to leave out: spelled as jax2torch writes it, and timm
    assert e.labels is None and e.top1 is None and not e.head_is_zero
    # The demos' resize(RES)|value_range(-1, 1): tf.image.resize (bilinear) of both sides.
    assert e.preprocess_source == "big_vision"
    assert (e.preprocess.resize, e.preprocess.interpolation) == ("squash", "bilinear_tf")
    assert e.preprocess.mean == e.preprocess.std == (0.5, 0.5, 0.5)
    if e.timm_model is not None:
        tag = {"siglip": "webli_i18n" if i18n else "webli", "siglip2": "v2_webli"}[e.family]
        assert e.timm_model.endswith(f"_patch{patch}_siglip_{res}.{tag}")


def test_find():
    e = find("augreg-B16-in21k-ft-in1k-384", MANIFEST)
    assert e.train_resolution == 384 and e.top1 == 85.49
    assert find("AUGREG-b16-IN21K", MANIFEST).name == "augreg-B16-in21k"
    with pytest.raises(VitConvertError, match=r"did you mean orig-B16-in21k-ft-in1k-384"):
        find("orig-B16-in21k-ft-in1k-386", MANIFEST)
    with pytest.raises(VitConvertError, match=r"did you mean (\S+-R50L32-in21k\S*(, )?)+\?"):
        find("R50L32", MANIFEST)  # a part of a name: the names that hold it
    with pytest.raises(VitConvertError, match=r"no checkpoint named 'zzz'.*vitconvert list"):
        find("zzz", MANIFEST)


DATA = tiny_npz_bytes()


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(schema_version=2), "schema_version 2 is not supported"),
    (lambda d: d["checkpoints"][0].update(colour="red"), "unknown colour"),
    (lambda d: d["checkpoints"][0].pop("url"), "missing url"),
    (lambda d: d["checkpoints"][0].update(num_classes=1000), "num_classes 1000 but config.num_classes 10"),
    (lambda d: d["checkpoints"][0].update(url="http://x/y.npz"), "url must be https"),
    (lambda d: d["checkpoints"][0].update(sha256="ABC"), "sha256 must be 64 lowercase hex"),
    (lambda d: d["checkpoints"][0].update(top1=85.0), "with a top1_source"),
    (lambda d: d["checkpoints"][0].update(upstream="nope"), "upstream 'nope' is not in the manifest"),
    (lambda d: d["checkpoints"][0]["config"].update(depth="1"),
     r"invalid ViT config: depth must be a positive integer, got '1'"),
    (lambda d: d["checkpoints"][0]["config"].update(embed_dim=9), "invalid ViT config"),
    (lambda d: d["checkpoints"][0]["preprocess"].update(resize="stretch"), "preprocess.resize"),
    (lambda d: d["checkpoints"].append(dict(d["checkpoints"][0])), "appears twice"),
    (lambda d: d["checkpoints"][0].update(head_is_zero="no"), "head_is_zero has the wrong type"),
])
def test_invalid_manifests_are_refused_clearly(tmp_path, change, message):
    doc = {"schema_version": 1, "checkpoints": [tiny_entry(DATA)]}
    change(doc)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(VitConvertError, match=message):
        load_manifest(path)


def test_not_json(tmp_path):
    path = tmp_path / "m.json"
    path.write_text("{")
    with pytest.raises(VitConvertError, match="not valid JSON"):
        load_manifest(path)
    with pytest.raises(VitConvertError, match="cannot read manifest"):
        load_manifest(tmp_path / "missing.json")


# --- The published layouts ---
# Every manifest entry is what the converter makes of its published file: the entry's architecture is
# written in its family's published key layout by the independent test writers (`published_layouts`,
# `big_vision_layouts`: keys and shapes only, no weights), and the converter's own identification
# (`conversion.jax.identify`, the step `convert_jax` and `download` take) must find that entry by file name
# and architecture and give exactly its config. Otherwise `vitconvert download NAME` refuses the entry.

JAX = [e for e in MANIFEST.checkpoints if e.format.startswith("jax-npz/")]
# The layouts the authors publish (checked against real files for the vit_jax families by timm's loader,
# and described in big_vision's and vision_transformer's code): SigLIP 2 stores its blocks stacked
# (`encoderblock/`), SigLIP per layer; both towers' files hold the text tower beside the image one.
SCANNED = {"siglip2"}
TWO_TOWER_OUTER = {"siglip": "params/", "siglip2": "params/", "lit": ""}


@dataclass(frozen=True)
class Shapes:
    """What identification reads from an `NpzReader`: the file's path and each array's shape."""

    path: Path
    shapes: dict[str, tuple[int, ...]]


def placeholder(*shape: int) -> np.ndarray:
    return np.broadcast_to(np.float32(0), shape)  # a shape, no memory


def published_shapes(e) -> dict[str, tuple[int, ...]]:
    """The keys and shapes of `e`'s file, written from the entry's widths by its family's writer."""
    c = e.config
    if e.format == "jax-npz/big_vision":
        m = bv.BigVision(width=c.embed_dim, depth=c.depth, heads=c.num_heads, mlp=c.mlp_dim, patch=c.patch_size,
                         grid=c.grid_size, pool={"token": "tok", "gap": "gap", "map": "map"}[c.pool],
                         posemb=c.pos_embed, rep_size=c.representation_size, num_classes=c.num_classes,
                         channels=c.in_chans)
        params = bv.random_params(m, shapes_only=True)
        params = bv.scan(params) if e.family in SCANNED else params
        arrays = (bv.two_tower(params, TWO_TOWER_OUTER[e.family]) if e.family in TWO_TOWER_OUTER
                  else bv.with_prefix(params, "params/"))
    else:
        kwargs = dict(img_size=c.img_size, patch_size=c.patch_size, in_chans=c.in_chans, embed_dim=c.embed_dim,
                      depth=c.depth, num_heads=c.num_heads, mlp_ratio=c.mlp_dim / c.embed_dim,
                      num_classes=c.num_classes or 10, fc_norm=False,  # the writer needs a head: dropped below
                      **({} if c.pool == "token" else {"class_token": False, "global_pool": "avg"}))
        if c.hybrid_layers is not None:  # vit_jax's ResNetV2: stem width 64 x the width factor, stages 4x, 8x, ...
            w, layers = c.hybrid_width, c.hybrid_layers
            kwargs["backbone"] = {"layers": layers, "stem_chs": w,
                                  **({"channels": tuple(4 * w * 2 ** i for i in range(len(layers)))} if layers else {})}
        model = pl.meta_timm_vit(kwargs)
        rep = c.representation_size
        extra = {} if rep is None else {"pre_logits": (placeholder(c.embed_dim, rep), placeholder(rep)),
                                        "head": (placeholder(rep, c.num_classes), placeholder(c.num_classes))}
        arrays = {k: v for k, v in pl.npz_arrays(model, "vit_jax", **extra).items()
                  if c.num_classes or not k.startswith("head/")}  # a headless tower (LiT's out_dim None)
        if e.family in TWO_TOWER_OUTER:
            arrays = bv.two_tower(arrays, TWO_TOWER_OUTER[e.family])
    return {k: tuple(v.shape) for k, v in arrays.items()}


@pytest.mark.parametrize("e", JAX, ids=lambda e: e.name)
def test_the_published_layout_converts_to_the_entry(e):
    found = identify(Shapes(Path("downloads") / e.filename, published_shapes(e)), catalog=MANIFEST)
    assert found.known is not None, f"the catalog does not know {e.filename} with the config jax2torch infers"
    # 2020 folders reuse file names; the architecture tells them apart, and the one found must be this entry
    # or one recorded the same way.
    assert (found.known.config, found.known.preprocess, found.known.labels) == (e.config, e.preprocess, e.labels)
    assert found.config == e.config  # what `download` checks, pos_resize included


# --- timm's registry ---
# Every manifest entry that names a timm model, checked against timm's own registry: the model
# timm builds has exactly the parameter shapes our config gives, and the tag's pretrained cfg agrees
# on input size, classes, mean, std, crop_pct and interpolation (and, where timm lists an .npz URL,
# on the file). Models are built on the meta device: no memory, no weights, no network.

NO_TIMM = "timm has no pretrained tag for this file"


def at_size(e, patch_size: int, img_size: tuple[int, int]):
    """The entry's architecture at another patch and image size, for a file that runs at any (FlexiViT's:
    stored at patch 32 on a 7x7 grid, which timm resamples to its tag's patch and size as it loads it, as
    `vitpredict --patch-size P --res R` does); any other entry must already be at them."""
    if e.config.pos_resize != "flexivit":
        return e.config
    return e.config.replace(patch_size=patch_size, img_size=img_size)


def timm_npz_urls() -> dict[str, set[str]]:
    """url -> timm tags whose pretrained cfg downloads that .npz."""
    urls: dict[str, set[str]] = {}
    for tag in timm.list_pretrained():  # flexivit_* too
        cfg = get_pretrained_cfg(tag)
        if cfg is not None and cfg.url and cfg.url.endswith(".npz"):
            urls.setdefault(cfg.url, set()).add(tag)
    return urls


@pytest.mark.parametrize("e", MANIFEST.checkpoints, ids=lambda e: e.name)
def test_against_timm(e):
    if e.timm_model is None:
        # The entry's notes say why, e.g. "timm's vit_..._384.augreg_in21k_ft_in1k is a different file".
        pytest.skip(f"{e.name}: " + next((n for n in e.notes if n.startswith("timm's ")), NO_TIMM))
    base = e.timm_model.split(".")[0]
    with torch.device("meta"):
        model = timm.create_model(base, pretrained=False, num_classes=e.num_classes)
    theirs = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    cfg = get_pretrained_cfg(e.timm_model)
    assert cfg is not None, f"timm has no pretrained tag {e.timm_model}"
    mine = at_size(e, model.patch_embed.patch_size[0], tuple(cfg.input_size[1:]))
    if mine != e.config:  # the entry cites timm's figure at timm's size, and says how we run the file there
        size = f"{mine.img_size[0]} px with patch {mine.patch_size}"
        assert size in e.top1_source and f"--patch-size {mine.patch_size} --res {mine.img_size[0]}" in e.top1_source
    # timm drops the 2020 checkpoints' pre_logits layer (its head then reads the D-wide token).
    ours = {k: v for k, v in param_shapes(mine).items() if not k.startswith("pre_logits.")}
    assert ours == theirs
    assert tuple(cfg.input_size) == (3, *mine.img_size)
    # timm's copies of the 2020 ImageNet-21k weights leave out the all-zero head: num_classes=0.
    assert cfg.num_classes == (0 if e.head_is_zero else e.num_classes)
    if e.preprocess_source == "timm":
        p = e.preprocess
        assert (p.size, p.resize) == (tuple(cfg.input_size[1:]), "crop")
        assert (p.crop_pct, p.interpolation) == (cfg.crop_pct, cfg.interpolation)
        assert (p.mean, p.std) == (tuple(cfg.mean), tuple(cfg.std))
    if cfg.url and cfg.url.endswith(".npz"):
        assert cfg.url == e.url, "timm's tag downloads another file"


def test_timm_tags_are_named_wherever_timm_loads_the_same_file():
    urls = timm_npz_urls()
    for e in MANIFEST.checkpoints:
        tags = urls.get(e.url, set())
        if e.timm_model is None:
            assert not tags, f"{e.name}: timm loads this file as {sorted(tags)}"
        elif get_pretrained_cfg(e.timm_model).url.endswith(".npz"):
            assert e.timm_model in tags


@pytest.mark.parametrize("e", [e for e in MANIFEST.checkpoints if e.timm_model and not e.head_is_zero],
                         ids=lambda e: e.name)
def test_timm_models_read_back_as_the_entrys_architecture(e):
    """What verify and timm2torch --model read from timm's model is the entry's config (the numerics that
    `verify --timm-act match` sets aside: timm runs exact GELU for vit_jax's models and for some of its
    big_vision ports, the JAX models tanh; timm's hybrid ResNet GroupNorm eps is 1e-5, flax's 1e-6), so
    `vitconvert verify` on a converted download against its timm tag compares like with like. (The 2020
    ImageNet-21k tags have no head in timm.)"""
    from vitconvert.conversion.timm_models import create_timm_model, timm_config

    cfg = timm_config(create_timm_model(e.timm_model, meta=True), e.timm_model)
    hybrid = e.config.hybrid_layers is not None
    assert (cfg.hybrid_gn_eps, e.config.hybrid_gn_eps) == ((1e-5, 1e-6) if hybrid else (1e-6, 1e-6))
    assert e.config.act == "gelu_tanh"
    assert cfg.act == "gelu" if e.format == "jax-npz/vit_jax" else cfg.act in ("gelu", "gelu_tanh")
    # pos_resize is how positions reach other input sizes, not the architecture (verify does not compare it).
    mine = at_size(e, cfg.patch_size, cfg.img_size)
    assert cfg == mine.replace(act=cfg.act, hybrid_gn_eps=cfg.hybrid_gn_eps, pos_resize=cfg.pos_resize)


def test_every_two_tower_entry_whose_text_tower_is_read_names_its_vocabulary():
    """big_vision's npz files hold no tokenizer: the manifest says where each is, as the sources load it
    (the SigLIP colab's TOKENIZERS by vocabulary size and pp/ops_text.py's KNOWN_TOKENIZERS; SigLIP 2's
    tokenizers.gemma; vit_jax's LiT vocab_path), and only there."""
    from vitconvert.catalog.manifest import load_manifest

    gcs = "https://storage.googleapis.com/"
    for e in load_manifest().checkpoints:
        if e.family == "siglip":
            expected = gcs + ("t5-data/vocabs/mc4.250000.100extra/sentencepiece.model" if "i18n" in e.url
                              else "t5-data/vocabs/cc_en.32000/sentencepiece.model")
        elif e.family == "siglip2":
            expected = gcs + "big_vision/gemma_tokenizer.model"
        elif e.name in ("lit-L16S-img", "lit-L16Ti-img"):
            expected = e.url.replace(".npz", ".model")
        else:  # image models, and LiT's BERT text towers, which vitconvert does not read
            expected = None
        assert e.tokenizer == expected, e.name
