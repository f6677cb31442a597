"""Our tokenizers against the sources' own: open_clip's SimpleTokenizer (CLIP's BPE, its three cleanings) and
transformers' SiglipTokenizer (SentencePiece, padded to the maximum length), ids identical."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from helpers.two_towers import train_sentencepiece

from vitconvert.conversion.text_towers import clip_tokenizer, file_tokenizer
from vitconvert.core.errors import VitConvertError
from vitconvert.core.text_config import TokenizerConfig
from vitconvert.text.tokenizer import Tokenizer

open_clip = pytest.importorskip("open_clip")

# Cases, punctuation, contractions, digits, accents, CJK, emoji, HTML entities, mojibake (ftfy fixes it),
# whitespace runs, underscores, the special tokens' own spellings, and nothing at all.
TEXTS = ["a photo of a cat.", "A PHOTO of THE Dog's toy!!", "it's they're we'll I'd I'M 'S", "naïve café — 1234 5",
         "中文 日本語 한국어", "emoji 🐶🎉 ok", "&amp;lt;b&amp;gt; &quot;quoted&quot;", "cafÃ© mojibake",
         "tabs\tand\nnewlines   runs", "snake_case_name", "<start_of_text> hi <end_of_text>", "", "x"]


@pytest.mark.parametrize("clean", ["lower", "whitespace", "canonicalize"])
def test_clip_ids_are_open_clips_for_every_kind_of_text(clean: str) -> None:
    ours = Tokenizer(*clip_tokenizer(77, clean))
    reference = open_clip.tokenizer.SimpleTokenizer(context_length=77, clean=clean)
    assert ours.encode_ids(TEXTS) == reference(TEXTS).tolist()


def test_a_text_longer_than_the_context_is_cut_as_open_clip_cuts_it_and_said_once() -> None:
    ours = Tokenizer(*clip_tokenizer(77))
    long = ["a very long caption " * 40, "another one " * 60]
    with pytest.warns(UserWarning, match="2 text.s. longer than the text tower's context of 77 tokens were cut") as w:
        ids = ours(long)
    assert len(w) == 1
    assert ids.tolist() == open_clip.tokenizer.SimpleTokenizer(context_length=77)(long).tolist()
    assert ids[:, -1].tolist() == [49407, 49407]  # the end-of-text id kept last
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per tokenizer
        ours(long)


@pytest.fixture(scope="module")
def siglip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import SiglipTokenizer

    folder = tmp_path_factory.mktemp("siglip-tok")
    SiglipTokenizer(str(train_sentencepiece(folder)), model_max_length=16).save_pretrained(folder / "tok")
    return folder / "tok"


def test_sentencepiece_ids_are_siglip_tokenizers_padded_to_the_maximum_length(siglip_folder: Path) -> None:
    from transformers import SiglipTokenizer

    reference = SiglipTokenizer.from_pretrained(siglip_folder)
    config, data = file_tokenizer(siglip_folder / "spiece.model", 16, "siglip", "test")
    assert (config.bos_id, config.eos_id, config.pad_id) == (None, 1, 1)
    texts = [t for t in TEXTS if t.isascii()] + ["a photo of a dog " * 10]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the long text is cut by both
        expected = reference(texts, padding="max_length", max_length=16, truncation=True).input_ids
        assert Tokenizer(config, data).encode_ids(texts) == expected


def test_a_tokenizer_file_that_is_not_its_records_is_refused(siglip_folder: Path) -> None:
    config, data = file_tokenizer(siglip_folder / "spiece.model", 16, "siglip", "test")
    wrong = TokenizerConfig(**{**config.to_dict(), "vocab_size": config.vocab_size + 1})
    with pytest.raises(VitConvertError, match=r"the tokenizer file has \d+ tokens, its record says"):
        Tokenizer(wrong, data)
    with pytest.raises(VitConvertError, match="not a SentencePiece model"):
        Tokenizer(config, b"not a model")


def test_a_tokenizer_config_names_each_wrong_field() -> None:
    with pytest.raises(VitConvertError, match="pad_id 99 is not in the tokenizer's vocabulary of 10"):
        TokenizerConfig(kind="sentencepiece", context_length=8, vocab_size=10, pad_id=99)
    with pytest.raises(VitConvertError, match="clean must be .*got 'shout'"):
        TokenizerConfig(kind="sentencepiece", context_length=8, vocab_size=10, pad_id=0, clean="shout")
    with pytest.raises(VitConvertError, match="context_length 2 leaves no room"):
        TokenizerConfig(kind="tokenizers", context_length=2, vocab_size=10, pad_id=0, bos_id=1, eos_id=2)


def test_random_ascii_texts_tokenize_as_open_clips() -> None:
    # printable ASCII skips ftfy (which leaves it unchanged) unless it holds '&', '\r' or control characters
    import random
    import string

    rng = random.Random(0)
    texts = ["".join(rng.choice(string.printable) for _ in range(rng.randint(0, 40))) for _ in range(300)]
    for clean in ("lower", "whitespace", "canonicalize"):
        ours = Tokenizer(*clip_tokenizer(77, clean))
        assert ours.encode_ids(texts) == open_clip.tokenizer.SimpleTokenizer(clean=clean)(texts).tolist()


def test_a_tokenizer_json_adds_the_ids_its_post_processor_adds(tmp_path: Path) -> None:
    from helpers.two_towers import CORPUS
    from tokenizers import Tokenizer as HfTokenizer
    from tokenizers import models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = HfTokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS * 5, trainers.BpeTrainer(vocab_size=60, special_tokens=["<pad>", "</s>", "<unk>"]))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    reference = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    reference.save_pretrained(tmp_path)
    config, data = file_tokenizer(tmp_path / "tokenizer.json", 12, "none", "test")
    assert (config.kind, config.bos_id, config.eos_id, config.pad_id) == ("tokenizers", None, 1, 0)
    texts = ["a photo of a cat", "the lazy dog", "hello world this is a test of sentencepiece again"]
    expected = reference(texts, padding="max_length", max_length=12, truncation=True).input_ids
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert Tokenizer(config, data).encode_ids(texts) == expected
