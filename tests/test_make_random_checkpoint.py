"""examples/make_random_checkpoint.py: a real command line that writes only where it is told."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPT = EXAMPLES / "make_random_checkpoint.py"


def script(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120, check=False)


def test_help_answers_and_writes_nothing(tmp_path):
    before = (EXAMPLES / "vit-tiny-random.npz").stat().st_mtime_ns
    proc = script("--help", cwd=tmp_path)
    assert proc.returncode == 0 and "--size" in proc.stdout and "OUT.npz" in proc.stdout
    assert list(tmp_path.iterdir()) == [] and (EXAMPLES / "vit-tiny-random.npz").stat().st_mtime_ns == before
    assert script(cwd=tmp_path).returncode == 2  # no OUT: a usage error, not the bundled file rewritten


def test_the_documented_command_reproduces_the_bundled_file_byte_for_byte(tmp_path):
    out = tmp_path / "vit-tiny-random.npz"  # the docstring's command, written elsewhere
    assert script(out, cwd=tmp_path).returncode == 0
    assert out.read_bytes() == (EXAMPLES / "vit-tiny-random.npz").read_bytes()
    refused = script(out, cwd=tmp_path)
    assert refused.returncode == 2 and "exists; pass --force" in refused.stderr


def test_a_size_preset_and_overrides_shape_the_arrays(tmp_path):
    out = tmp_path / "s.npz"
    assert script(out, "--size", "S/16", "--depth", "1", "--classes", "10", "--img-size", "96", cwd=tmp_path
                  ).returncode == 0
    arrays = np.load(out)
    assert arrays["embedding/kernel"].shape == (16, 16, 3, 384)  # S/16: width 384, patch 16
    assert arrays["Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"].shape == (384, 6, 64)
    assert arrays["Transformer/posembed_input/pos_embedding"].shape == (1, 1 + 6 * 6, 384)
    assert arrays["head/kernel"].shape == (384, 10)
    assert not any(k.startswith("Transformer/encoderblock_1/") for k in arrays.files)
