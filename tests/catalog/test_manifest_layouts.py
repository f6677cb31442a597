"""Every manifest entry is what the converter makes of its published file: the entry's architecture is
written in its family's published key layout by the independent test writers (`published_layouts`,
`big_vision_layouts`: keys and shapes only, no weights), and the converter's own identification
(`conversion.jax.identify`, the step `convert_jax` and `download` take) must find that entry by file name
and architecture and give exactly its config. Otherwise `vitconvert download NAME` refuses the entry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from helpers import big_vision_layouts as bv
import numpy as np
import pytest

from helpers import published_layouts as pl

from vitconvert.conversion.jax import identify
from vitconvert.catalog.manifest import bundled_path, load_manifest

MANIFEST = load_manifest(bundled_path())
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
