"""Sharded transformers checkpoints (conversion/hf_sharded.py): a directory with model.safetensors.index.json
(what save_pretrained writes past max_shard_size) or pytorch_model.bin.index.json (what transformers before 5
wrote, and still loads), converted shard by shard, against transformers' own model loaded from the same
directory; and the index and shards disagreeing, refused in one line with nothing written.

Peak memory is measured, not asserted here (a test's RSS is the test runner's): benchmarks/sharded.py, its
figures in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.hf import outputs, random_hf
from safetensors.torch import load_file, save_file

from vitconvert import VitConvertError, convert, load_model

transformers = pytest.importorskip("transformers")

# float32 renames, as in test_hf.py. Observed: logits <= 1.9e-6 (the .bin shards), 9.5e-7 (safetensors).
ATOL = 1e-5
INDEX = "model.safetensors.index.json"


def sharded(tmp_path: Path, architecture: str = "ViTForImageClassification", **kwargs) -> tuple[torch.nn.Module, Path]:
    """transformers' model saved by save_pretrained in shards of at most 40 kB (at least 3 of them)."""
    model = random_hf(architecture, **kwargs)
    folder = tmp_path / "sharded"
    model.save_pretrained(folder, max_shard_size="40kB")
    assert len(list(folder.glob("model-*.safetensors"))) >= 3 and (folder / INDEX).is_file()
    return model, folder


def as_bin_shards(folder: Path) -> Path:
    """The same shards as torch.save'd pickles with pytorch_model.bin.index.json, as transformers 4 wrote them
    (save_pretrained(..., safe_serialization=False)); transformers 5 saves safetensors alone."""
    index = json.loads((folder / INDEX).read_text())
    renamed = {s: s.replace("model-", "pytorch_model-").replace(".safetensors", ".bin")
               for s in set(index["weight_map"].values())}
    for shard, name in renamed.items():
        torch.save(load_file(folder / shard), folder / name)
        (folder / shard).unlink()
    index["weight_map"] = {k: renamed[v] for k, v in index["weight_map"].items()}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    (folder / INDEX).unlink()
    return folder


def logits_diff(ours_path: Path, theirs: torch.nn.Module) -> float:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return (load_model(ours_path).eval()(x) - outputs(theirs, x)["logits"]).abs().max().item()


def test_a_sharded_safetensors_directory_converts_to_transformers_logits(tmp_path):
    model, folder = sharded(tmp_path)
    record = convert(folder, tmp_path / "ours.safetensors")
    assert record.source.file == INDEX and record.source.format == "transformers/ViTForImageClassification"
    assert logits_diff(tmp_path / "ours.safetensors", model) <= ATOL


def test_sharded_bin_files_convert_as_transformers_loads_them(tmp_path):
    _, folder = sharded(tmp_path, seed=3)
    as_bin_shards(folder)
    theirs = transformers.ViTForImageClassification.from_pretrained(folder).eval()  # the layout is real
    record = convert(folder, tmp_path / "ours.safetensors")
    assert record.source.file == "pytorch_model.bin.index.json"
    assert logits_diff(tmp_path / "ours.safetensors", theirs) <= ATOL


def test_a_sharded_dinov2_backbone_converts_to_its_features(tmp_path):
    model, folder = sharded(tmp_path, "Dinov2Model", seed=4)
    convert(folder, tmp_path / "ours.safetensors")
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ours = load_model(tmp_path / "ours.safetensors").eval()(x)
    assert (ours - outputs(model, x)["pooler_output"]).abs().max().item() <= ATOL


# --- bad input: one line each, nothing written ----------------------------------------------------------------

def refused(tmp_path: Path, folder: Path, match: str) -> None:
    dst = tmp_path / "out.safetensors"
    with pytest.raises(VitConvertError, match=match) as e:
        convert(folder, dst)
    assert "\n" not in str(e.value) and not any(tmp_path.glob("out*"))


def edit_index(folder: Path, change) -> dict:
    index = json.loads((folder / INDEX).read_text())
    change(index["weight_map"])
    (folder / INDEX).write_text(json.dumps(index))
    return index


def test_an_index_naming_a_missing_shard_is_refused(tmp_path):
    _, folder = sharded(tmp_path)
    shard = sorted(folder.glob("model-*.safetensors"))[1]
    shard.unlink()
    refused(tmp_path, folder, f"the index names a shard that is not there: {shard.name}")


def test_a_shard_holding_a_tensor_the_index_does_not_list_is_refused(tmp_path):
    _, folder = sharded(tmp_path)
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    save_file({**load_file(shard), "extra.weight": torch.zeros(3)}, shard)
    refused(tmp_path, folder, f"{shard.name}: holds tensors the index does not list there: extra.weight")


def test_a_tensor_the_index_lists_and_its_shard_lacks_is_refused(tmp_path):
    _, folder = sharded(tmp_path)
    edit_index(folder, lambda m: m.__setitem__("vit.embeddings.mask_token", next(iter(m.values()))))
    refused(tmp_path, folder, "lacks tensors the index lists there: vit.embeddings.mask_token")


def test_a_tensor_the_index_puts_in_another_shard_is_refused(tmp_path):
    _, folder = sharded(tmp_path)
    shards = sorted({*json.loads((folder / INDEX).read_text())["weight_map"].values()})
    where = json.loads((folder / INDEX).read_text())["weight_map"]["classifier.weight"]
    edit_index(folder, lambda m: m.__setitem__("classifier.weight", shards[0] if where != shards[0] else shards[1]))
    refused(tmp_path, folder, f"{where}: holds tensors the index does not list there: classifier.weight")


def test_one_shard_given_alone_asks_for_the_directory(tmp_path):
    _, folder = sharded(tmp_path)
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    with pytest.raises(VitConvertError, match=f"one shard of the checkpoint {INDEX} indexes: give the directory"):
        convert(shard, tmp_path / "out.safetensors", source="hf")
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("text", ["[]", '{"weight_map": {}}', '{"weight_map": {"a": "../x.safetensors"}}', "{"],
                         ids=["a list", "no tensors", "a shard outside the directory", "not JSON"])
def test_an_index_that_is_not_a_shard_index_is_refused(tmp_path, text):
    _, folder = sharded(tmp_path)
    (folder / INDEX).write_text(text)
    refused(tmp_path, folder, "weight_map|cannot read it as JSON")
