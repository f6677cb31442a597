"""A zero-shot classifier's config runs as its formula says: the pooled features through the projection
(a Linear without tanh), scaled to unit length, then the head; its record keeps a sigmoid probability and
reads back; a file of the fields before them is written as before."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from vitconvert.core.config import ViTConfig
from vitconvert.core.errors import VitConvertError
from vitconvert.formats.weights_file import Preprocess, Source, WeightsRecord
from vitconvert.model.vit import VisionTransformer

TINY = ViTConfig(img_size=(32, 32), patch_size=16, embed_dim=32, depth=1, num_heads=2, mlp_dim=64, num_classes=5,
                 pool="gap", representation_size=12, pre_logits_act="none", head_norm="l2")


def test_the_head_reads_the_unit_length_projection_of_the_pooled_features():
    torch.manual_seed(0)
    model = VisionTransformer(TINY).eval()
    for p in model.parameters():
        p.data.normal_()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pooled = model.forward_pooled(x)
        fc, head = model.pre_logits.fc, model.head
        expected = F.normalize(pooled @ fc.weight.T + fc.bias, dim=-1) @ head.weight.T + head.bias
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)


def test_without_a_projection_the_head_reads_the_unit_length_pooled_features():
    cfg = TINY.replace(representation_size=None, pre_logits_act="tanh")
    model = VisionTransformer(cfg).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = F.normalize(model.forward_pooled(x), dim=-1) @ model.head.weight.T + model.head.bias
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("changes", "message"), [
    ({"num_classes": 0, "representation_size": None, "pre_logits_act": "tanh"}, "head_norm .* needs a head"),
    ({"representation_size": None}, "pre_logits_act .* needs representation_size"),
])
def test_the_zero_shot_fields_need_what_they_act_on(changes, message):
    with pytest.raises(VitConvertError, match=message):
        TINY.replace(**changes)


def test_a_config_without_the_zero_shot_fields_is_written_as_before():
    d = TINY.replace(head_norm="none", pre_logits_act="tanh").to_dict()
    assert "head_norm" not in d and "pre_logits_act" not in d
    assert TINY.to_dict()["head_norm"] == "l2"
    assert ViTConfig.from_dict(TINY.to_dict()) == TINY


def record(**kw) -> WeightsRecord:
    return WeightsRecord(config=TINY, preprocess=Preprocess(size=(32, 32)), source=Source("test", "x"), **kw)


def test_a_sigmoid_probability_is_recorded_and_read_back_and_softmax_is_not_written():
    sig = record(labels=tuple("abcde"), probability="sigmoid")
    assert WeightsRecord.from_json(sig.to_json()).probability == "sigmoid"
    assert "probability" not in json.loads(record().to_json())
    with pytest.raises(VitConvertError, match="probability must be 'softmax' or 'sigmoid'"):
        record(probability="tanh")
