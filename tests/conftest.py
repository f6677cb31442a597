"""Shared test support: timm reference models with random, non-zero weights; test images, small
weights files, and `vitpredict` run in-process."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from helpers.fuzz import FUZZ_COUNTS
from PIL import Image

torch.set_num_threads(2)


DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def _no_user_weights(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The tester's own weights file and cache must not leak into a test."""
    monkeypatch.delenv("VITCONVERT_WEIGHTS", raising=False)
    monkeypatch.setenv("VITCONVERT_CACHE", str(tmp_path_factory.getbasetemp() / "empty-cache"))


@pytest.fixture(scope="session")
def cat_jpg() -> Path:
    return DATA / "cat.jpg"  # 451x300 RGB JPEG


@pytest.fixture(scope="session")
def gray_png() -> Path:
    return DATA / "camera_gray.png"  # 128x128 grayscale


@pytest.fixture(scope="module")
def photos(tmp_path_factory, cat_jpg, gray_png):
    """Eleven varied images: sizes, crops, flips, a grayscale and a palette PNG."""
    folder = tmp_path_factory.mktemp("photos")
    cat = Image.open(cat_jpg).convert("RGB")
    paths = []
    for i in range(9):
        image = cat.resize((120 + 37 * i, 300 - 17 * i)) if i % 2 else cat.crop((i * 10, 0, 300 + i * 10, 290))
        if i % 3 == 0:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        paths.append(folder / f"{i:02d}.jpg")
        image.save(paths[-1], quality=90)
    paths.append(gray_png)
    paths.append(folder / "palette.png")
    cat.convert("P").save(paths[-1])
    return paths


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Embed 64, depth 2, 4 heads, patch 16 at 224, 1000 classes, AugReg preprocessing."""
    from helpers.vit_weights import TINY, TINY_TIMM_KWARGS, timm_classifier, write_test_weights

    model = timm_classifier("vit_tiny_patch16_224", **TINY_TIMM_KWARGS)
    return write_test_weights(tmp_path_factory.mktemp("tiny") / "tiny.safetensors", model.state_dict(), TINY)


@pytest.fixture(scope="module")
def one_thread():
    """For modules that train tiny models: their matrix products are too small to share, and on the test
    machine's 2 busy cores 2 threads ran fine-tuning runs 3 to 6 times slower than 1."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 2020-style checkpoint converted from the vit_jax layout (helpers.finetune.converted_tiny)."""
    from helpers.finetune import converted_tiny

    return converted_tiny(tmp_path_factory.mktemp("parent") / "tiny.safetensors")


@pytest.fixture
def vitpredict(capsys: pytest.CaptureFixture[str]):
    """Run `vitpredict ARGS...` in this process, through our error contract; returns a helpers.cli.Result."""
    from helpers.cli import invoke

    from vitconvert.cli.predict import command

    return functools.partial(invoke, capsys, command)


@pytest.fixture
def vitconvert(capsys: pytest.CaptureFixture[str]):
    """Run `vitconvert ARGS...` in this process, through our error contract; returns a helpers.cli.Result."""
    from helpers.cli import vitconvert_cli

    return functools.partial(vitconvert_cli, capsys)


def pytest_terminal_summary(terminalreporter, config) -> None:
    counts = config.stash.get(FUZZ_COUNTS, None)
    if not counts:
        return
    terminalreporter.section("fuzz examples run")
    for prop, tally in counts.items():
        terminalreporter.write_line(f"{tally['examples']:6d}  {prop}  ({tally['ok']} ok, "
                                    f"{tally['error']} VitConvertError)")
    terminalreporter.write_line(f"{sum(t['examples'] for t in counts.values()):6d}  in all")
