"""`vitconvert serve` as a real process on 127.0.0.1, spoken to over HTTP with httpx: its answers against
`vitpredict --json`'s on the sample photos, batching under concurrent load, a bad request among good ones,
SIGTERM under load, and the same app on a local Ray Serve (`--ray`).

One request at a time, a request runs alone through the model, as `vitpredict IMAGE` runs one image: the
answer is the same to the bit. Concurrent requests run in batches, whose rows the matrix products round
differently from a batch of one: up to 6.6e-7 apart in a probability (the tiny model on these photos, 2-core
AMD EPYC), so concurrent answers are held to serial ones within PROB_ATOL, with the same classes in the same
order.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys

import httpx
import pytest
from helpers.server import as_form, running_server, sample_photos, server_env

PROB_ATOL = 1e-6  # observed 6.6e-7 between a batch of one and rows of larger batches


@pytest.fixture(scope="module")
def server(tiny_weights):
    with running_server(tiny_weights, "--max-batch", "8", "--max-wait-ms", "50") as server:
        yield server


def vitpredict_json(weights, photos, *args: str) -> list[dict]:
    """`vitpredict PHOTOS --json` as a process beside the server's, with its environment (its torch threads:
    their number moves the last bits), one image a batch, as the server runs a lone request."""
    result = subprocess.run([sys.executable, "-m", "vitconvert.cli.predict", *map(str, photos), "--weights",
                             str(weights), "--json", "--batch-size", "1", *args],
                            capture_output=True, text=True, env=server_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def assert_same_answers(got: dict, expected: dict) -> None:
    """The same image and classes in the same order; probabilities within PROB_ATOL."""
    assert got["image"] == expected["image"]
    assert [(p["rank"], p["index"], p["label"]) for p in got["predictions"]] == \
        [(p["rank"], p["index"], p["label"]) for p in expected["predictions"]]
    for a, b in zip(got["predictions"], expected["predictions"], strict=True):
        assert a["probability"] == pytest.approx(b["probability"], abs=PROB_ATOL)


def test_an_answer_is_the_entry_vitpredict_json_prints_for_the_photo(server, tiny_weights):
    photos = sample_photos()
    for top in ("5", "3"):
        expected = vitpredict_json(tiny_weights, photos, "--top", top)
        got = [httpx.post(f"{server.url}/predict", params={"top": top}, files=as_form(p), timeout=60) for p in photos]
        assert [r.status_code for r in got] == [200] * len(photos)
        assert [r.json() for r in got] == expected


def test_a_raw_body_is_answered_as_its_multipart_form(server, cat_jpg):
    raw = httpx.post(f"{server.url}/predict", content=cat_jpg.read_bytes(), timeout=60).json()
    form = httpx.post(f"{server.url}/predict", files=as_form(cat_jpg), timeout=60).json()
    assert raw["image"] == "<body>" and form["image"] == str(cat_jpg)
    assert raw["predictions"] == form["predictions"]


async def post_all(url: str, photos, concurrency: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        async def one(photo):
            return await client.post(f"{url}/predict", files=as_form(photo))
        return await asyncio.gather(*(one(p) for p in photos))


def test_32_concurrent_requests_answer_as_32_serial_ones_in_batches(server):
    photos = [sample_photos()[i % len(sample_photos())] for i in range(32)]
    before = httpx.get(f"{server.url}/health").json()["batching"]
    serial = [httpx.post(f"{server.url}/predict", files=as_form(p), timeout=60).json() for p in photos]
    middle = httpx.get(f"{server.url}/health").json()["batching"]
    assert middle["batches"] - before["batches"] == 32  # one at a time: each ran alone
    concurrent = asyncio.run(post_all(server.url, photos, 32))
    after = httpx.get(f"{server.url}/health").json()["batching"]
    assert [r.status_code for r in concurrent] == [200] * 32
    for got, expected in zip(concurrent, serial, strict=True):
        assert_same_answers(got.json(), expected)
    assert after["requests"] - middle["requests"] == 32
    assert after["batches"] - middle["batches"] < 32 and after["max_batch_seen"] > 1


def test_a_bad_request_among_good_ones_fails_alone(server, cat_jpg, tmp_path):
    from helpers.images import png_header

    good = cat_jpg.read_bytes()
    bad = {"not an image": b"hello, not an image", "truncated": good[: len(good) // 3],
           "bomb": png_header(tmp_path / "bomb.png", 20_000, 20_000).read_bytes()}

    async def load() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            bodies = [good] * 3 + list(bad.values()) + [good] * 3
            return await asyncio.gather(*(client.post(f"{server.url}/predict", content=b) for b in bodies))

    responses = asyncio.run(load())
    assert [r.status_code for r in responses] == [200] * 3 + [400] * 3 + [200] * 3
    errors = [r.json()["error"] for r in responses[3:6]]
    assert "not an image file" in errors[0] and "cannot decode image" in errors[1]
    assert "decompression bomb" in errors[2]
    assert all("\n" not in r.text for r in responses[3:6])
    expected = responses[0].json()["predictions"]
    for r in responses[:3] + responses[6:]:
        assert [p["index"] for p in r.json()["predictions"]] == [p["index"] for p in expected]
    assert server.process.poll() is None


def test_sigterm_answers_every_request_in_flight_then_exits_0(tiny_weights, cat_jpg):
    body = cat_jpg.read_bytes()
    # A batch waits 5 s for company: at the signal every request is in flight, none answered yet.
    with running_server(tiny_weights, "--max-batch", "64", "--max-wait-ms", "5000") as server:
        async def load() -> tuple[list[httpx.Response], Exception | None]:
            async with httpx.AsyncClient(timeout=120) as client:
                requests = [asyncio.ensure_future(client.post(f"{server.url}/predict", content=body))
                            for _ in range(24)]
                await asyncio.sleep(1.5)  # time to connect and send, on a busy machine too
                assert not any(r.done() for r in requests)
                server.process.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.3)
                try:  # a request after the signal is turned away at the door
                    async with httpx.AsyncClient(timeout=10) as late:
                        await late.post(f"{server.url}/predict", content=body)
                    refused = None
                except httpx.TransportError as e:
                    refused = e
                return await asyncio.gather(*requests), refused

        answered, refused = asyncio.run(load())
        code = server.process.wait(60)
    assert [r.status_code for r in answered] == [200] * 24
    assert all(len(r.json()["predictions"]) == 5 for r in answered)
    assert refused is not None
    assert code == 0, "".join(server.stderr)
    assert any("stopped: 24 images answered" in line for line in server.stderr)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_on_a_local_ray_serve_the_answers_are_the_same(server, tiny_weights):
    photos = sample_photos()
    here = [httpx.post(f"{server.url}/predict", files=as_form(p), timeout=60).json() for p in photos]
    with running_server(tiny_weights, "--ray", "--replicas", "2", "--port", str(free_port()),
                        start_timeout=300) as on_ray:
        async def load() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=120) as client:
                return await asyncio.gather(*(client.post(f"{on_ray.url}/predict", files=as_form(p))
                                              for p in photos * 2))

        answers = asyncio.run(load())
        model = httpx.get(f"{on_ray.url}/model", timeout=60).json()
        assert on_ray.stop(120) == 0, "".join(on_ray.stderr)
    assert [r.status_code for r in answers] == [200] * len(photos) * 2
    for got, expected in zip(answers, here * 2, strict=True):
        assert_same_answers(got.json(), expected)
    assert model["file"] == str(tiny_weights)
