"""Format version 3: a two-tower file's record (the text section, the tokenizer beside it), and files of the
versions before it still read as they were written."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
import torch
from helpers.two_towers import save_state_dict
from safetensors import safe_open
from safetensors.torch import save_file

import vitconvert
from vitconvert.core.errors import VitConvertError
from vitconvert.formats.weights_file import META_KEY, READABLE_VERSIONS, TOKENIZER_KEY, read_record

open_clip = pytest.importorskip("open_clip")

CFG = dict(embed_dim=16, quick_gelu=True, vision_cfg=dict(image_size=16, layers=1, width=32, patch_size=8,
                                                          head_width=16),
           text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))


@pytest.fixture(scope="module")
def two_tower(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("two-tower")
    torch.manual_seed(0)
    src = save_state_dict(open_clip.CLIP(**CFG).eval(), folder / "ck", CFG)
    vitconvert.convert(src, folder / "clip.safetensors")
    return folder / "clip.safetensors"


def _metadata(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def _rewrite(path: Path, dst: Path, **metadata: str | None) -> Path:
    meta, tensors = _metadata(path)
    meta = {k: v for k, v in {**meta, **metadata}.items() if v is not None}
    save_file(tensors, dst, metadata=meta)
    return dst


def test_the_text_section_records_the_tower_its_tokenizer_and_the_logit_scale(two_tower: Path) -> None:
    meta, tensors = _metadata(two_tower)
    record = json.loads(meta[META_KEY])
    assert record["version"] == 3 and READABLE_VERSIONS == (1, 2, 3)
    text = record["text"]
    assert set(text) == {"config", "tokenizer", "logit_scale", "logit_bias", "probability"}
    assert text["probability"] == "softmax" and text["logit_bias"] == 0.0
    assert text["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-6)  # open_clip's initial t = log(1 / 0.07)
    assert text["tokenizer"]["kind"] == "tokenizers" and text["tokenizer"]["context_length"] == 77
    assert (text["tokenizer"]["bos_id"], text["tokenizer"]["eos_id"], text["tokenizer"]["pad_id"]) == (49406, 49407, 0)
    blob = base64.b64decode(meta[TOKENIZER_KEY])
    assert hashlib.sha256(blob).hexdigest() == text["tokenizer"]["sha256"]
    assert "model" in json.loads(blob)  # a tokenizers JSON, in its own key: not in the record's JSON
    assert {k for k in tensors if k.startswith("text.")} >= {"text.token_embed.weight", "text.pos_embed",
                                                            "text.proj.weight", "text.norm.weight"}
    assert "patch_embed.proj.weight" in tensors and "head.weight" in tensors  # the image tower in timm's names


def test_a_damaged_tokenizer_is_refused_when_the_file_is_read(two_tower: Path, tmp_path: Path) -> None:
    meta, _ = _metadata(two_tower)
    blob = bytearray(base64.b64decode(meta[TOKENIZER_KEY]))
    blob[100] ^= 1
    bad = _rewrite(two_tower, tmp_path / "bad.safetensors", **{TOKENIZER_KEY: base64.b64encode(blob).decode()})
    with pytest.raises(VitConvertError, match="tokenizer file is damaged"):
        read_record(bad)
    gone = _rewrite(two_tower, tmp_path / "gone.safetensors", **{TOKENIZER_KEY: None})
    with pytest.raises(VitConvertError, match="tokenizer.*is missing from the metadata"):
        read_record(gone)


def test_a_text_tensor_of_the_wrong_shape_is_named_when_the_file_is_read(two_tower: Path, tmp_path: Path) -> None:
    meta, tensors = _metadata(two_tower)
    tensors["text.pos_embed"] = tensors["text.pos_embed"][:, :10]
    save_file(tensors, tmp_path / "bad.safetensors", metadata=meta)
    with pytest.raises(VitConvertError, match=r"inconsistent text-tower shapes: text.pos_embed"):
        read_record(tmp_path / "bad.safetensors")


def test_a_version_2_file_reads_as_it_was_written(two_tower: Path, tmp_path: Path) -> None:
    meta, tensors = _metadata(two_tower)
    record = json.loads(meta[META_KEY])
    old = {k: v for k, v in record.items() if k != "text"} | {"version": 2}
    image = {k: v for k, v in tensors.items() if not k.startswith("text.")}
    save_file(image, tmp_path / "v2.safetensors", metadata={META_KEY: json.dumps(old)})
    read = read_record(tmp_path / "v2.safetensors")
    assert read.text is None and read.head_is_embedding
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        old_out, new_out = vitconvert.load_model(tmp_path / "v2.safetensors")(x), vitconvert.load_model(two_tower)(x)
    assert (old_out - new_out).abs().max() < 1e-6  # the same weights (the kernels may pick another order)


def test_an_image_file_of_version_3_has_no_text_section(tmp_path: Path) -> None:
    from vitconvert import ViTConfig
    from vitconvert.model.vit import VisionTransformer

    model = VisionTransformer(ViTConfig(img_size=(32, 32), patch_size=16, embed_dim=32, depth=1, num_heads=2,
                                        mlp_dim=64, num_classes=3))
    vitconvert.save_weights(model, tmp_path / "m.safetensors")
    meta, _ = _metadata(tmp_path / "m.safetensors")
    assert set(meta) == {META_KEY} and "text" not in json.loads(meta[META_KEY])
