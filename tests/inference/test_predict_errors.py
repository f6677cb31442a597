"""`Predictor.iter_predict` with images it cannot read: the others of their batch are still
classified, in the serial path and in worker processes alike."""

from __future__ import annotations

import pytest

from vitconvert import Predictor, VitConvertError


@pytest.fixture
def broken(tmp_path, cat_jpg):
    path = tmp_path / "broken.jpg"
    path.write_bytes(cat_jpg.read_bytes()[:2000])  # the header reads; decoding fails
    return path


@pytest.mark.parametrize("workers", [0, 2])
def test_report_puts_an_error_result_in_the_bad_images_place(tiny_weights, cat_jpg, gray_png, broken, workers):
    predictor = Predictor(tiny_weights)
    images = [cat_jpg, broken, gray_png, broken, broken, cat_jpg]  # batch 2 has nothing good in it
    results = predictor.predict(images, top_k=3, batch_size=2, workers=workers, errors="report")
    assert [r.image for r in results] == [str(p) for p in images]
    for r in results[1], results[3], results[4]:
        assert r.error == f"{broken}: cannot decode image (image file is truncated (61 bytes not processed))"
        assert r.predictions == () and r.to_dict() == {"image": str(broken), "error": r.error}
    good = [results[i] for i in (0, 2, 5)]
    alone = predictor.predict([cat_jpg, gray_png, cat_jpg], top_k=3, batch_size=1)
    for got, want in zip(good, alone, strict=False):
        assert got.error is None and set(got.to_dict()) == {"image", "predictions"}
        assert [p.index for p in got.predictions] == [p.index for p in want.predictions]
        # other batch compositions round differently: observed <= 3.6e-7
        assert [p.probability for p in got.predictions] == pytest.approx(
            [p.probability for p in want.predictions], abs=1e-6)


@pytest.mark.parametrize("workers", [0, 2])
def test_raise_comes_after_every_image_before_the_bad_one(tiny_weights, cat_jpg, gray_png, broken, workers):
    predictor = Predictor(tiny_weights)
    done = []
    with pytest.raises(VitConvertError, match=f"^{broken}: cannot decode image"):
        for result in predictor.iter_predict([cat_jpg, gray_png, broken, cat_jpg], batch_size=3, workers=workers):
            done.append(result.image)
    assert done == [str(cat_jpg), str(gray_png)]  # the bad image's own batch up to it, too


def test_errors_is_raise_or_report(tiny_weights, cat_jpg):
    with pytest.raises(VitConvertError, match="errors must be 'raise' or 'report'"):
        Predictor(tiny_weights).predict([cat_jpg], errors="ignore")
