"""Inference fast paths: dtype, torch.compile, worker-process prefetch, the last block's shortcut.

Correctness only; the speed itself is measured by `python -m benchmarks` (no timings here).
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from helpers.vit_weights import TINY, our_vit, write_test_weights

from vitconvert import Predictor, VitConvertError, load_model
from vitconvert.core.errors import VitConvertWarning
from vitconvert.inference.runtime import inference_dtype, keep_freed_memory, run_compiled

CPU = torch.device("cpu")


# --- the model's shortcut for the last block -----------------------------------------------------

@pytest.mark.parametrize("change", [{}, {"distilled": True}, {"pool": "gap"}, {"qkv_bias": False}])
def test_forward_equals_the_full_computation(change):
    model = our_vit(TINY.replace(img_size=(64, 64), num_classes=10, **change))
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        fast = model(x)
        full = model.forward_intermediates(x).logits  # every token through every block
    assert (fast - full).abs().max().item() <= 1e-5  # measured: <= 2.3e-6


def test_block_forward_first_is_forward_of_the_first_tokens():
    model = our_vit(TINY.replace(img_size=(64, 64), num_classes=10))
    x = torch.randn(2, 17, 64, generator=torch.Generator().manual_seed(2))
    block = model.blocks[0]
    with torch.inference_mode():
        # measured: 4.8e-7
        assert (block.forward_first(x, 2) - block(x)[:, :2]).abs().max().item() <= 2e-6


# --- dtypes --------------------------------------------------------------------------------------

def test_dtype_names_and_refusals():
    assert inference_dtype(None, CPU) is torch.float32
    assert inference_dtype("float32", CPU) is torch.float32
    assert inference_dtype("int8", CPU) is torch.qint8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VitConvertWarning)
        assert inference_dtype("bf16", CPU) is torch.bfloat16
        assert inference_dtype(torch.float16, CPU) is torch.float16
    with pytest.raises(VitConvertError, match="must be one of float32, bfloat16, float16, int8, got 'int4'"):
        inference_dtype("int4", CPU)
    with pytest.raises(VitConvertError, match="got torch.float64"):
        inference_dtype(torch.float64, CPU)
    with pytest.raises(VitConvertError, match="int8 is dynamic quantisation for the CPU, not for device cuda"):
        inference_dtype("int8", torch.device("cuda"))


@pytest.mark.parametrize("flags, slowdown, warning", [
    ({"avx512_bf16", "amx_bf16", "amx_tile"}, None, None),  # tiles: no need to time anything
    ({"avx512_bf16"}, 0.3, None),  # AMD EPYC here: a matrix product 0.3x the float32 time
    ({"avx512_bf16"}, 1.7, "this CPU has AVX512-BF16 but no AMX tiles, and here a matrix product in bfloat16 "
                           "took 1.7x the float32 time; float32 is the faster choice"),  # the Intel Xeon of issue 17
    ({"avx2", "fma"}, None, "no native bfloat16 arithmetic .* emulated"),
])
def test_bfloat16_on_a_cpu_warns_when_it_is_slower_than_float32(monkeypatch, flags, slowdown, warning):
    from vitconvert.inference import runtime

    def timed(dtype):
        assert slowdown is not None, "timed a CPU whose flags already answer"
        return slowdown

    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset(flags | {"fpu", "sse2"}))
    monkeypatch.setattr(runtime, "matmul_slowdown", timed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert inference_dtype("bfloat16", CPU) is torch.bfloat16
    said = [str(w.message) for w in caught if issubclass(w.category, VitConvertWarning)]
    if warning is None:
        assert said == []
    else:
        assert len(said) == 1 and re.search(warning, said[0]), said


def test_float16_on_a_cpu_without_it_warns_that_it_is_slow():
    if torch.ops.mkldnn._is_mkldnn_fp16_supported():
        pytest.skip("this CPU has native float16")
    with pytest.warns(VitConvertWarning, match="float16 on CPU: .* usually several times slower than float32"):
        inference_dtype("float16", CPU)


def test_bfloat16_model_and_float32_probabilities(tiny_weights, cat_jpg, gray_png):
    exact = Predictor(tiny_weights).probabilities([cat_jpg, gray_png])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VitConvertWarning)  # a CPU without native bfloat16
        fast = Predictor(tiny_weights, dtype="bfloat16")
    assert fast.dtype is torch.bfloat16 and fast.model.head.weight.dtype is torch.bfloat16
    probs = fast.probabilities([cat_jpg, gray_png])
    assert probs.dtype is torch.float32
    assert probs.sum(-1).tolist() == pytest.approx([1, 1], abs=1e-5)
    assert (probs - exact).abs().max().item() < 0.02  # measured: 0.011 (bfloat16 keeps 8 bits)
    # attention maps follow the model's dtype, rollout in float32
    assert fast.attention_rollout([cat_jpg]).dtype is torch.float32


# --- worker processes ----------------------------------------------------------------------------

def test_workers_give_the_serial_results_in_input_order(tiny_weights, photos):
    predictor = Predictor(tiny_weights)
    serial = predictor.predict(photos, top_k=3, batch_size=3)
    parallel = predictor.predict(photos, top_k=3, batch_size=3, workers=2)
    assert [r.image for r in parallel] == [str(p) for p in photos]
    assert parallel == serial  # bit-identical inputs, so identical probabilities


def test_a_bad_image_under_workers_is_the_serial_error(tiny_weights, photos, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(photos[0].read_bytes()[:400])  # a truncated JPEG: the header reads, decoding fails
    images = [*photos[:4], bad, *photos[4:]]
    predictor = Predictor(tiny_weights)
    outcomes = []
    for workers in (0, 2):
        done = []
        with pytest.raises(VitConvertError) as e:
            for result in predictor.iter_predict(images, batch_size=2, workers=workers):
                done.append(result.image)
        outcomes.append((done, str(e.value)))
    assert outcomes[0] == outcomes[1]
    done, message = outcomes[1]
    assert done == [str(p) for p in photos[:4]]  # the batches before the bad one
    assert message.startswith(f"{bad}: cannot ")  # names the file, says what went wrong


@pytest.mark.parametrize("ahead", [1, 2])
def test_batches_launched_ahead_give_the_same_results_in_order(tiny_weights, photos, tmp_path, ahead):
    """On a GPU the next batch is launched before a batch's outputs are read (`_batches_ahead` 1): the
    predictions, embeddings, their order and a bad image's error are those of one batch at a time.
    The look-ahead is forced here, on the CPU, where it is otherwise off."""
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(photos[0].read_bytes()[:400])
    images = [*photos[:5], bad, *photos[5:]]
    serial, looking_ahead = Predictor(tiny_weights), Predictor(tiny_weights)
    assert serial._batches_ahead == 0
    looking_ahead._batches_ahead = ahead
    assert (list(looking_ahead.iter_predict(images, top_k=3, batch_size=2, errors="report"))
            == list(serial.iter_predict(images, top_k=3, batch_size=2, errors="report")))
    expected = list(serial.iter_embed(images, batch_size=3, errors="report"))
    got = list(looking_ahead.iter_embed(images, batch_size=3, errors="report"))
    assert [(r.image, r.error) for r in got] == [(r.image, r.error) for r in expected]
    assert all(a.embedding is b.embedding is None or np.array_equal(a.embedding, b.embedding)
               for a, b in zip(got, expected, strict=False))
    done = []
    with pytest.raises(VitConvertError, match=f"^{bad}: cannot "):
        for result in looking_ahead.iter_predict(images, batch_size=2):
            done.append(result.image)
    assert done == [str(p) for p in photos[:5]]  # every image before the bad one, as without look-ahead


def test_a_model_compiled_for_static_shapes_sees_only_full_batches(tiny_weights, photos, tmp_path):
    """torch.compile compiles again for each new batch size (6.4 s for a tiny ViT in bfloat16 here): a
    short batch, the last one or one with an unreadable image, runs padded to the batch size and its
    padding's outputs are dropped. The compiled model is stood in for by the eager one with its batch
    sizes recorded; results are the unpadded run's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VitConvertWarning)  # no native bfloat16; packing timed slower
        assert Predictor(tiny_weights, dtype="bfloat16", compile=True)._static_shapes  # torch.compile'd
        assert not Predictor(tiny_weights, compile=True)._static_shapes  # CPU float32: packed or eager
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(photos[0].read_bytes()[:400])
    images = [*photos[:3], bad, *photos[3:6]]  # batches of 3: (3), (bad + 2), (1)
    plain, padded = Predictor(tiny_weights), Predictor(tiny_weights)
    padded._static_shapes = True
    seen = []
    for method in ("forward", "forward_pooled"):
        run = getattr(padded.model, method)
        setattr(padded.model, method, lambda x, run=run: seen.append(x.shape[0]) or run(x))
    got = padded.predict(images, top_k=3, batch_size=3, errors="report")
    expected = plain.predict(images, top_k=3, batch_size=3, errors="report")
    assert seen == [3, 3, 3]
    assert [(r.image, r.error, [p.index for p in r.predictions]) for r in got] == \
        [(r.image, r.error, [p.index for p in r.predictions]) for r in expected]
    # observed 1.8e-7: other GEMM shapes
    assert max(abs(a.probability - b.probability) for r, e in zip(got, expected, strict=True)
               for a, b in zip(r.predictions, e.predictions, strict=True)) <= 5e-7
    seen.clear()
    embedded = padded.embed(photos[:5], batch_size=2)
    assert seen == [2, 2, 2] and embedded.shape[0] == 5
    assert np.abs(embedded - plain.embed(photos[:5], batch_size=2)).max() <= 1e-6  # observed 4.8e-7


def test_default_workers_leave_the_cores_to_the_model_on_a_cpu(monkeypatch):
    from vitconvert.inference.batches import default_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(8)), raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert default_workers(100, 8, "cpu") == 0  # torch's threads use every core
    assert default_workers(100, 8, "cuda") == 7  # the model is elsewhere: every core but the feeder decodes
    assert default_workers(8, 8, "cuda") == 0  # one batch: nothing to overlap
    monkeypatch.setattr(torch, "get_num_threads", lambda: 7)
    assert default_workers(100, 8, "cpu") == 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert default_workers(100, 8, "cpu") == 2  # idle cores, but decoding outruns a CPU model with two
    for cores, workers in [(1, 1), (2, 2), (3, 2), (16, 15)]:
        monkeypatch.setattr("os.sched_getaffinity", lambda _pid, n=cores: set(range(n)), raising=False)
        assert default_workers(1000, 8, "cuda") == workers


def test_negative_workers_are_refused(tiny_weights, cat_jpg):
    with pytest.raises(VitConvertError, match="workers at least 0"):
        Predictor(tiny_weights).predict([cat_jpg], workers=-1)


# --- torch.compile -------------------------------------------------------------------------------

def test_compile_errors_become_one_clear_error():
    from torch._dynamo.exc import BackendCompilerFailed

    def broken(_batch):
        raise BackendCompilerFailed(lambda *a: None, RuntimeError("no C++ compiler found\nmore"), None)

    message = r"^torch.compile failed \(RuntimeError: no C\+\+ compiler found\); run without --compile"
    with pytest.raises(VitConvertError, match=message):
        run_compiled(broken, torch.zeros(1))
    with pytest.raises(ValueError):  # anything else is not the compiler's and passes through
        run_compiled(lambda _b: (_ for _ in ()).throw(ValueError("x")), torch.zeros(1))


@pytest.fixture
def packing_wins(monkeypatch):
    """compile=True takes the packed path whatever this CPU times for these small layers (ViT-B/16's fc1
    timed 1.16-1.44x packed on the AMD EPYC; TINY's, 0.72x in one CI run): the path itself is under test."""
    monkeypatch.setattr("vitconvert.model.optimize.packing_speedup", lambda *_shape: 1.2)


@pytest.mark.parametrize("change", [{}, {"act": "gelu_tanh"}, {"pool": "gap", "fc_norm": True}, {"distilled": True}])
def test_compile_true_equals_eager(tmp_path, change, packing_wins):
    from vitconvert.model.optimize import PackedLinear

    config = TINY.replace(img_size=(32, 32), depth=2, num_classes=10, **change)
    path = write_test_weights(tmp_path / "small.safetensors", our_vit(config).state_dict(), config, labels=None)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        eager = load_model(path)(x)
        model = load_model(path, compile=True)
        compiled = model(x)
    assert isinstance(model.blocks[0].mlp.fc1, PackedLinear)
    assert (compiled - eager).abs().max().item() <= 1e-4  # the bound; observed 1.6e-6 to 3.4e-6


def test_compile_true_on_the_cpu_runs_onednn_linears_with_the_gelu_fused(tiny_weights, packing_wins):
    from vitconvert.model.optimize import PackedLinear

    model = load_model(tiny_weights, compile=True)
    mlp = model.blocks[0].mlp
    assert (mlp.fc1.attr, type(mlp.act)) == ("gelu", torch.nn.Identity) and isinstance(mlp.fc2, PackedLinear)
    assert type(model.blocks[-1].attn.qkv) is torch.nn.Linear  # sliced by the class-token shortcut


def test_compile_true_keeps_the_eager_model_where_packing_times_slower(tiny_weights, monkeypatch):
    """A CPU whose plain linear layers outrun oneDNN's packed ones (not seen here: Intel's MKL on an
    Intel CPU may be one) keeps the eager model, and says so, rather than run the slower path."""
    from vitconvert.model.optimize import PackedLinear

    shapes = []
    monkeypatch.setattr("vitconvert.model.optimize.packing_speedup", lambda *shape: shapes.append(shape) or 0.9)
    with pytest.warns(VitConvertWarning, match=r"packed linear layers ran at 0.90x .* stays as it is"):
        model = load_model(tiny_weights, compile=True)
    assert shapes == [(TINY.embed_dim, TINY.mlp_dim)]  # timed on the widest layer, fc1
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
    x = torch.randn(2, 3, *TINY.img_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(model(x), load_model(tiny_weights)(x))


def test_packing_speedup_times_both_layers_once_per_shape():
    from vitconvert.model.optimize import packing_speedup

    speedup = packing_speedup(64, 256, rows=32)
    assert speedup > 0 and packing_speedup(64, 256, rows=32) == speedup  # cached: the same figure, not retimed


def test_compiled_predictor_matches_eager(tmp_path, cat_jpg, packing_wins):
    from vitconvert.model.optimize import PackedLinear

    config = TINY.replace(img_size=(32, 32), depth=1, num_classes=10)
    path = write_test_weights(tmp_path / "small.safetensors", our_vit(config).state_dict(), config, labels=None)
    eager, compiled = Predictor(path), Predictor(path, compile=True)
    assert any(isinstance(m, PackedLinear) for m in compiled.model.modules())
    diff = compiled.probabilities([cat_jpg]) - eager.probabilities([cat_jpg])
    assert diff.abs().max().item() <= 1e-6  # measured: 1.6e-7
    # embed compiles the model's feature method too (features of spread ~1: measured 9.5e-7).
    assert np.abs(compiled.embed([cat_jpg]) - eager.embed([cat_jpg])).max() <= 3e-6


# --- int8 ----------------------------------------------------------------------------------------

# The bound docs/speed.md states for --dtype int8: the logits move by at most 0.2 of their standard deviation.
# Observed: 0.17 on TINY over these 11 images; 0.13 on ViT-B/16 over the 5 sample photos (docs/speed.md).
INT8_BOUND = 0.2


def test_int8_logits_stay_within_the_stated_bound(tmp_path, photos):
    path = write_test_weights(tmp_path / "tiny.safetensors", our_vit(TINY).state_dict(), TINY)
    exact, int8 = Predictor(path), Predictor(path, dtype="int8")
    assert int8.dtype is torch.qint8
    batch = torch.stack([exact.transform(p) for p in photos])
    with torch.inference_mode():
        reference, quantized = exact.model(batch), int8.model(batch)
    error = (quantized - reference).abs().max().item()
    assert 0 < error <= INT8_BOUND * reference.std().item()  # int8 did run: not bit-identical
    kinds = [type(m) for m in int8.model.modules()]
    # every linear but the last block's qkv, which the class-token shortcut slices: 4 a block, and the head
    assert kinds.count(torch.ao.nn.quantized.dynamic.Linear) == 4 * TINY.depth and kinds.count(torch.nn.Linear) == 1


def test_int8_needs_the_cpu_and_float32(tmp_path):
    from vitconvert.model.optimize import quantize_int8

    with pytest.raises(VitConvertError, match="int8 quantises a float32 model"):
        quantize_int8(our_vit(TINY).to(torch.bfloat16))


# --- vitpredict ----------------------------------------------------------------------------------

def test_vitpredict_workers_print_what_the_serial_path_prints(vitpredict, tiny_weights, photos):
    folder = photos[0].parent  # the photos' folder: every image but the grayscale one
    serial = vitpredict(folder, "--weights", tiny_weights, "--batch-size", "4", "--workers", "0", "--json")
    parallel = vitpredict(folder, "--weights", tiny_weights, "--batch-size", "4", "--workers", "2", "--json")
    assert serial.code == parallel.code == 0 and parallel.err == ""
    assert parallel.out == serial.out
    assert [e["image"] for e in parallel.json()] == sorted(e["image"] for e in serial.json())


def test_vitpredict_dtype(vitpredict, tiny_weights, cat_jpg):
    exact = vitpredict(cat_jpg, "--weights", tiny_weights, "--json").json()[0]["predictions"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VitConvertWarning)
        fast = vitpredict(cat_jpg, "--weights", tiny_weights, "--json", "--dtype", "bfloat16")
    assert fast.code == 0
    probs = [p["probability"] for p in fast.json()[0]["predictions"]]
    assert probs == pytest.approx([p["probability"] for p in exact], abs=0.02)
    int8 = vitpredict(cat_jpg, "--weights", tiny_weights, "--json", "--dtype", "int8")
    assert int8.code == 0 and int8.err == ""
    assert [p["index"] for p in int8.json()[0]["predictions"][:1]] == [exact[0]["index"]]
    bad = vitpredict(cat_jpg, "--weights", tiny_weights, "--dtype", "int4")
    assert bad.code == 2 and "'int4' is not one of" in bad.err


def test_vitpredict_float16_on_cpu_warns_in_one_line(vitpredict, tiny_weights, cat_jpg):
    if torch.ops.mkldnn._is_mkldnn_fp16_supported():
        pytest.skip("this CPU has native float16")
    result = vitpredict(cat_jpg, "--weights", tiny_weights, "--dtype", "float16", "--top", "1")
    assert result.code == 0 and result.out.startswith(str(cat_jpg))
    assert result.err.startswith("warning: float16 on CPU: ") and result.err.count("\n") == 1


def test_keep_freed_memory_takes_effect_on_glibc():
    import os

    try:
        glibc = os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (ValueError, OSError):
        glibc = False
    assert keep_freed_memory() is glibc
