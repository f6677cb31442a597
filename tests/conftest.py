"""Shared test support: timm reference models with random, non-zero weights."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter non-zero and of a realistic scale, so a mapping mistake cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith(".weight") and p.ndim == 1:  # norm scales around 1
                p.copy_(1 + 0.1 * noise)
            elif p.ndim == 1:
                p.copy_(0.05 * noise)
            else:
                p.copy_(noise * (0.5 / p[0].numel() ** 0.5) if p.ndim > 1 else noise)
            if name in ("cls_token", "dist_token", "pos_embed"):
                p.copy_(0.1 * noise)
    return model.eval()


def timm_vit(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    import timm

    return randomize(timm.create_model(name, pretrained=False, **kwargs), seed)


@pytest.fixture
def images(tmp_path_factory):
    return tmp_path_factory.mktemp("images")


# test_fuzz.py records how many examples each property ran; the numbers go into tests/FUZZING.md.
FUZZ_COUNTS = pytest.StashKey[dict]()


def pytest_terminal_summary(terminalreporter, config) -> None:
    counts = config.stash.get(FUZZ_COUNTS, None)
    if not counts:
        return
    terminalreporter.section("fuzz examples run")
    for prop, tally in counts.items():
        terminalreporter.write_line(f"{tally['examples']:6d}  {prop}  ({tally['ok']} ok, "
                                    f"{tally['error']} VitConvertError)")
    terminalreporter.write_line(f"{sum(t['examples'] for t in counts.values()):6d}  in all")
