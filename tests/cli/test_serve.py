"""`vitconvert serve`'s command line: what it refuses before it loads a model or binds a port, and what it says
at start. (The server itself: tests/serve/.)"""

from __future__ import annotations

import socket

import pytest
from helpers.server import running_server


def test_zero_shot_classes_need_a_two_tower_file(vitconvert, tiny_weights):
    code, out, err = vitconvert("serve", tiny_weights, "--classes", "cat,dog")
    assert code == 1 and out == ""
    assert err.startswith("error: --classes needs a two-tower file") and err.count("\n") == 1


@pytest.mark.parametrize("option", [("--replicas", "2"), ("--cpus-per-replica", "0.5")])
def test_replica_options_go_with_ray(vitconvert, tiny_weights, option):
    code, _, err = vitconvert("serve", tiny_weights, *option)
    assert code == 2 and f"{option[0]} goes with --ray" in err


def test_a_file_that_is_not_ours_is_refused_before_anything_starts(vitconvert, tmp_path):
    code, _, err = vitconvert("serve", tmp_path / "missing.safetensors")
    assert code == 1 and err.startswith("error: ") and "missing.safetensors" in err


def test_a_port_in_use_is_one_error_line(vitconvert, tiny_weights):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = vitconvert("serve", tiny_weights, "--port", port)
    assert code == 1 and err == f"error: cannot listen on 127.0.0.1:{port} (Address already in use)\n"


def test_it_binds_to_127_0_0_1_and_says_so_at_start(tiny_weights):
    with running_server(tiny_weights) as server:
        assert server.url.startswith("http://127.0.0.1:")
        assert "this machine only" in server.stderr[0] and str(tiny_weights) in server.stderr[0]
        assert server.stop() == 0
