"""Every manifest entry that names a timm model, checked against timm's own registry: the model
timm builds has exactly the parameter shapes our config gives, and the tag's pretrained cfg agrees
on input size, classes, mean, std, crop_pct and interpolation (and, where timm lists an .npz URL,
on the file). Models are built on the meta device: no memory, no weights, no network."""

from __future__ import annotations

import pytest

timm = pytest.importorskip("timm")
torch = pytest.importorskip("torch")

from timm.models import get_pretrained_cfg

from vitconvert.core.param_shapes import param_shapes
from vitconvert.catalog.manifest import bundled_path, load_manifest

MANIFEST = load_manifest(bundled_path())
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
