"""The shipped class names and templates are their sources' lists; class and template specs are resolved
and refused as the CLI promises; canonicalization is big_vision's."""

from __future__ import annotations

import pytest
from helpers.big_vision_layouts import canonicalize_text as big_vision_canonicalize_text  # written out
from open_clip import zero_shot_metadata as oc

from vitconvert.core.errors import VitConvertError
from vitconvert.zeroshot.prompts import (
    canonicalize_text,
    class_sets,
    prompts,
    resolve_classes,
    resolve_templates,
    template_sets,
)


def test_the_imagenet_class_names_are_openclips():
    assert class_sets()["imagenet-1k"] == tuple(oc.IMAGENET_CLASSNAMES)


def test_the_imagenet_set_keeps_its_two_repeated_names_as_the_source_has_them():
    names = resolve_classes("imagenet-1k")
    assert (names[657], names[744], names[836], names[837]) == ("missile", "missile", "sunglasses", "sunglasses")


def test_the_imagenet_templates_are_openais_80_and_its_7_as_openclip_ships_them():
    assert template_sets()["imagenet"] == tuple(t("{}") for t in oc.OPENAI_IMAGENET_TEMPLATES)
    assert len(template_sets()["imagenet"]) == 80
    assert template_sets()["imagenet-simple"] == tuple(t("{}") for t in oc.SIMPLE_IMAGENET_TEMPLATES)


def test_big_visions_template_sets_add_the_bare_class_name():
    # big_vision's prompt_engineering_constants: CLIP_PAPER = OpenAI's 80 + '{}', CLIP_BEST = the 7 + '{}'.
    assert template_sets()["clip_paper"] == template_sets()["imagenet"] + ("{}",)
    assert template_sets()["clip_best"] == template_sets()["imagenet-simple"] + ("{}",)


def test_classes_come_from_a_set_a_file_or_a_comma_list(tmp_path):
    assert resolve_classes("cat, dog ,bird") == ["cat", "dog", "bird"]
    (tmp_path / "c.txt").write_text("tabby cat\n\ngolden retriever\n")
    assert resolve_classes(tmp_path / "c.txt") == ["tabby cat", "golden retriever"]
    assert len(resolve_classes("imagenet-1k")) == 1000


@pytest.mark.parametrize(("spec", "message"), [
    ("cat,,dog", "class 2 of 3 is an empty name"),
    ("cat,dog,cat", "repeated class name 'cat'"),
    ("", "class 1 of 1 is an empty name"),
])
def test_a_class_list_with_empty_or_repeated_names_is_refused_in_one_line(spec, message):
    with pytest.raises(VitConvertError, match=message) as e:
        resolve_classes(spec)
    assert "\n" not in str(e.value)


def test_a_template_is_one_template_even_with_commas():
    assert resolve_templates("a photo of a {}, a type of pet.") == ["a photo of a {}, a type of pet."]


@pytest.mark.parametrize("spec", ["a photo of a cat.", "a {} and a {}."])
def test_a_template_without_exactly_one_slot_is_refused(spec):
    with pytest.raises(VitConvertError, match="must hold '{}' exactly once"):
        resolve_templates(spec)


def test_prompts_are_filled_by_substitution_class_major():
    assert prompts(["a", "b"], ["x {}", "{} y {z}"]) == ["x a", "a y {z}", "x b", "b y {z}"]


@pytest.mark.parametrize("keep", [None, ",", "{}"])
def test_canonicalization_is_big_visions(keep):
    texts = ["A  Photo_of the {}.", "St. Bernard, dog", "Geoffroy's spider-monkey {x}", *class_sets()["imagenet-1k"]]
    assert [canonicalize_text(t, keep) for t in texts] == [
        big_vision_canonicalize_text(t, keep_punctuation_exact_string=keep) for t in texts]
