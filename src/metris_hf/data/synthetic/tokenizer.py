"""The synthetic set's tokenizer: a fixed vocabulary built offline, so the demo model needs no download."""

from __future__ import annotations

from .grammar import COLOURS, GENERIC_NOUNS, SHAPES, SUPERLATIVES

SYNTHETIC_WORDS = (
    *("the", "a", "an", "on", "at", "of", "to", "left", "right", "top", "bottom", "above", "below"),
    *SUPERLATIVES,
    *("small", "big", "large"),
    *COLOURS,
    *SHAPES,
    *GENERIC_NOUNS,
)


def synthetic_vocabulary() -> dict[str, int]:
    """The fixed WordPiece vocabulary: specials 0–4, `the`/`a`/`an` 5–7, every generator word, then letters and
    a few suffixes so that any lowercase word a user types still tokenises without [UNK]."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = ["##s", "##es", "##er", "##est", ",", ".", "'", "-"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = specials + list(SYNTHETIC_WORDS) + pieces + letters + ["##" + letter for letter in letters]
    return {token: index for index, token in enumerate(dict.fromkeys(tokens))}


def build_synthetic_tokenizer():
    """A BERT tokenizer over `synthetic_vocabulary()` (< 256 ids, fits `tiny_bert_config`), built offline."""
    from transformers import BertTokenizer

    return BertTokenizer(vocab=synthetic_vocabulary())
