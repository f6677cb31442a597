"""The package's layers, as import rules: each sub-package imports only the layers below it, torch
stays out of everything that runs without it, timm is imported only where we compare with it or
read its registry, and transformers nowhere. Read from the source (every import, also those inside functions), so a lazy
import cannot slip a layer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vitconvert"

# layer -> the layers it may import (itself included). cli sits on top and may import anything.
MAY_IMPORT = {
    "core": {"core"},
    "formats": {"core", "formats"},
    "conversion": {"core", "formats", "conversion"},
    # The published checkpoints: the manifest, their download (through convert) and the cache they land in.
    "catalog": {"core", "formats", "conversion", "catalog"},
    "model": {"core", "formats", "model"},
    # A two-tower model's text tower: its blocks are the ViT's own (model/blocks.py), its tokenizer reads the
    # tokenizer files formats/tokenizer_files.py opens, its config is core's (the record holds it).
    "text": {"core", "formats", "model", "text"},
    # Inference resolves a model name (--model) to its file in the catalog's cache.
    "inference": {"core", "formats", "catalog", "model", "inference"},
    # export --to hf reads the transformers table (convert/hf_layouts.py) the other way, and writes a label
    # set's class names (inference/labels.py)
    "export": {"core", "formats", "conversion", "model", "inference", "export"},
    # verify: our model against timm's on the same weights.
    "fidelity": {"core", "formats", "conversion", "model", "inference", "fidelity"},
    "cluster": {"core", "formats", "catalog", "model", "inference", "cluster"},  # Ray Data, on top of inference
    # Fine-tuning: reads images as inference does and writes our files; the CLI resolves --model names.
    "train": {"core", "formats", "model", "inference", "train"},
    # The HTTP app: the predictor behind routes, batched.
    "serve": {"core", "formats", "catalog", "model", "inference", "text", "zeroshot", "serve"},
    # Zero-shot heads: a two-tower file's text tower (text) embeds the prompts; the head is written as our file.
    "zeroshot": {"core", "formats", "model", "text", "zeroshot"},
}
NO_TORCH = {"core", "formats", "conversion", "catalog"}
# Pickled state dicts need torch to read: formats/state_dict.py is the one reader (of timm's, the tutorial
# ViTs' and transformers' pytorch_model.bin), imported only for such a file. timm.py and tutorial_vits.py
# also standardize hybrid ResNet kernels by their source's own float32 torch calls (to the bit: a ResNet
# amplifies the rounding of any other formula), imported inside those ops. timm_models.py builds timm's models,
# and timm_eva_models.py reads its Eva ones.
TORCH_ALLOWED = {"formats/state_dict.py", "conversion/timm.py", "conversion/timm_models.py",
                 "conversion/timm_eva_models.py", "conversion/tutorial_vits.py"}
# timm_models.py and timm_eva_models.py read timm's own models (for a named --model, and for verify).
TIMM_ALLOWED = {"conversion/timm_models.py", "conversion/timm_eva_models.py", "fidelity/verify.py"}


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


def imports(path: Path) -> set[str]:
    """Absolute names of everything `path` imports (relative imports resolved)."""
    here = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]  # its package, e.g. (vitconvert, catalog)
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = list(here[: len(here) - node.level + 1]) if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names.add(module)
            for alias in node.names:  # `from . import x` imports module x when there is one
                target = PACKAGE.parent.joinpath(*module.split("."), alias.name)
                if target.is_dir() or target.with_suffix(".py").is_file():
                    names.add(f"{module}.{alias.name}")
    return names


def rel(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def test_every_module_belongs_to_a_layer() -> None:
    layers = {p.relative_to(PACKAGE).parts[0] for p in modules()}
    assert layers == set(MAY_IMPORT) | {"cli"}


@pytest.mark.parametrize("path", [p for p in modules() if p.relative_to(PACKAGE).parts[0] != "cli"], ids=rel)
def test_a_layer_imports_only_the_layers_below_it(path: Path) -> None:
    layer = path.relative_to(PACKAGE).parts[0]
    ours = {name.split(".")[1] for name in imports(path) if name.startswith("vitconvert.")}
    assert ours <= MAY_IMPORT[layer], f"{rel(path)} imports {sorted(ours - MAY_IMPORT[layer])}"


@pytest.mark.parametrize("path", modules(), ids=rel)
def test_torch_timm_and_transformers_stay_where_they_are_needed(path: Path) -> None:
    roots = {name.split(".")[0] for name in imports(path)}
    if path.relative_to(PACKAGE).parts[0] in NO_TORCH and rel(path) not in TORCH_ALLOWED:
        assert "torch" not in roots and "torchvision" not in roots
    if rel(path) not in TIMM_ALLOWED:
        assert "timm" not in roots
    # transformers is a reference the tests and benchmarks compare with, never a dependency: hf2torch and
    # export --to hf read and write its files as JSON and safetensors.
    assert "transformers" not in roots


def test_the_rules_can_fail() -> None:
    """The resolver sees relative and lazy imports (else the rules above would pass vacuously)."""
    names = imports(PACKAGE / "catalog" / "download.py")
    assert "vitconvert.conversion.pipeline" in names and "vitconvert.core.errors" in names
    assert "torch" in imports(PACKAGE / "model" / "vit.py")
    assert "vitconvert.conversion.jax_layouts" in imports(PACKAGE / "conversion" / "jax.py")
