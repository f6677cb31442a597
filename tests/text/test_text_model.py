"""The text tower's own behaviour, from its config: the causal mask, the pooling, the config's checks. Its
numbers against each source are tests/conversion/test_open_clip.py's and test_hf_two_towers.py's."""

from __future__ import annotations

import pytest
import torch

from vitconvert.core.errors import VitConvertError
from vitconvert.core.text_config import TextConfig, text_param_shapes
from vitconvert.text.model import TextTransformer

BASE = dict(vocab_size=50, context_length=12, width=32, depth=2, num_heads=4, mlp_dim=64, embed_dim=16)


def _tower(**changes: object) -> TextTransformer:
    torch.manual_seed(0)
    model = TextTransformer(TextConfig(**{**BASE, **changes})).eval()
    with torch.no_grad():
        model.pos_embed.normal_()
    return model


def test_a_causal_tower_ignores_later_tokens_and_a_bidirectional_one_does_not() -> None:
    ids = torch.randint(0, 50, (1, 12), generator=torch.Generator().manual_seed(1))
    changed = ids.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 50
    for causal, same in ((True, True), (False, False)):
        model = _tower(causal=causal)
        with torch.no_grad():
            a, b = model.forward_tokens(ids)[:, :8], model.forward_tokens(changed)[:, :8]
        assert torch.allclose(a, b, atol=1e-6) is same


@pytest.mark.parametrize(("pool", "extra"), [("argmax", {}), ("eos", {"eos_id": 7}), ("last", {}), ("first", {})])
def test_pooling_reads_the_token_the_config_names(pool: str, extra: dict) -> None:
    model = _tower(pool=pool, **extra)
    ids = torch.tensor([[1, 7, 3, 49, 7, 0, 0, 0, 0, 0, 0, 0], [2, 3, 7, 4, 5, 6, 8, 9, 10, 11, 12, 13]])
    position = {"argmax": ids.argmax(-1), "eos": torch.tensor([1, 2]), "last": torch.tensor([11, 11]),
                "first": torch.tensor([0, 0])}[pool]
    with torch.no_grad():
        tokens = model.forward_tokens(ids)
        expected = tokens[torch.arange(2), position] @ model.proj.weight.T
        assert torch.allclose(model(ids), expected, atol=1e-6)


def test_the_tensor_names_are_the_configs() -> None:
    for changes in ({}, {"pool": "map"}, {"proj_bias": True}, {"embed_dim": 0}, {"qkv_bias": False}):
        cfg = TextConfig(**{**BASE, **changes})
        ours = {f"text.{k}": tuple(v.shape) for k, v in TextTransformer(cfg).state_dict().items()}
        assert ours == text_param_shapes(cfg)


def test_a_text_config_names_each_wrong_field() -> None:
    with pytest.raises(VitConvertError, match="pool 'eos' needs eos_id"):
        TextConfig(**BASE, pool="eos")
    with pytest.raises(VitConvertError, match="width 32 is not divisible by num_heads 5"):
        TextConfig(**{**BASE, "num_heads": 5})
    with pytest.raises(VitConvertError, match="act must be .*got 'swish'"):
        TextConfig(**BASE, act="swish")
    with pytest.raises(VitConvertError, match="unknown text config fields: colour"):
        TextConfig.from_dict({**BASE, "colour": 1})
