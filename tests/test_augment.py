"""Data augmentation (nni_adabert.teacher.augment) on real SST-2 / MRPC rows with the offline MiniLM
teacher (embedding-neighbour path) and a tiny random BertForMaskedLM (masked-LM path)."""

import csv
import os
import re

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from nni_adabert.teacher.augment import AugmentConfig, Augmenter, default_copies  # noqa: E402
from nni_adabert.errors import UserError  # noqa: E402


def read_tsv(path, n):
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return rows[:n]


@pytest.fixture(scope="module")
def sst2(glue_dir):
    return [r["sentence"] for r in read_tsv(glue_dir / "SST-2" / "train.tsv", 20)]


@pytest.fixture(scope="module")
def mrpc(glue_dir):
    rows = read_tsv(glue_dir / "MRPC" / "train.tsv", 10)
    return [r["#1 String"] for r in rows], [r["#2 String"] for r in rows]


@pytest.fixture(scope="module")
def aug():
    return Augmenter(None, config=AugmentConfig(copies=4, seed=0), progress=False)


@pytest.fixture(scope="module")
def out0(aug, sst2):
    return aug.augment(sst2)


def vocab_word_checker(tokenizer):
    vocab = tokenizer.get_vocab()
    special = set(tokenizer.all_special_tokens)

    def ok(word):
        w = word.lower()
        return (w in vocab and w not in special and not w.startswith("##")
                and not re.fullmatch(r"\[unused\d+\]", w) and any(c.isalnum() for c in w))
    return ok


def changed_words(original, copy):
    a, b = original.split(), copy.split()
    assert len(a) == len(b), (original, copy)  # one word replaced by one word
    return [(x, y) for x, y in zip(a, b) if x != y]


def test_embedding_path_on_minilm(aug):
    assert aug.method == "embedding"  # all-MiniLM-L6-v2 has no masked-LM head
    assert aug.to_dict() == {"copies": 4, "replace_prob": 0.4, "top_k": 15, "seed": 0,
                             "candidates": "embedding"}


def test_deterministic_under_seed(aug, sst2, out0):
    again = Augmenter(None, config=AugmentConfig(copies=4, seed=0), progress=False).augment(sst2)
    assert again == out0
    # A copy depends on its own text only, not on its neighbours in the batch.
    assert aug.augment(sst2[::-1]) == out0[::-1]
    assert aug.augment(sst2[3:5]) == out0[3:5]


def test_different_seeds_differ(sst2, out0):
    out1 = Augmenter(None, config=AugmentConfig(copies=4, seed=1), progress=False).augment(sst2)
    differ = sum(a != b for a, b in zip(out0, out1))
    assert differ >= 0.9 * len(sst2)


def test_copies_differ_from_original_and_each_other(sst2, out0):
    assert len(out0) == len(sst2)
    full = 0
    for text, copies in zip(sst2, out0):
        assert all(isinstance(c, str) for c in copies)
        assert " ".join(text.split()) not in copies
        assert len(set(copies)) == len(copies) <= 4
        full += len(copies) == 4
    assert full >= 0.9 * len(sst2)


def test_replacements_are_vocabulary_words_at_about_p(aug, sst2, out0):
    ok = vocab_word_checker(aug.tokenizer)
    replaced = total = 0
    for text, copies in zip(sst2, out0):
        words = [w for w in text.split() if any(c.isalnum() for c in w)]
        for copy in copies:
            pairs = changed_words(text, copy)
            assert pairs, copy
            for old, new in pairs:
                assert any(c.isalnum() for c in old), (old, new)  # punctuation stays
                assert ok(new), (old, new, copy)
            replaced += len(pairs)
            total += len(words)
    assert 0.25 <= replaced / total <= 0.6  # replace_prob = 0.4


def test_nearest_neighbours_are_sensible(aug):
    ids = aug.tokenizer("good", add_special_tokens=False)["input_ids"]
    cands = aug._neighbours([tuple(ids)])[tuple(ids)]
    assert len(cands) == 15 and "good" not in cands
    assert {"great", "excellent", "bad"} <= set(cands)


def test_capitalisation_follows_the_word(aug):
    copies = Augmenter(None, config=AugmentConfig(copies=3, replace_prob=1.0), progress=False) \
        .augment(["Movie GOOD"])[0]
    assert len(copies) == 3
    for c in copies:
        first, second = c.split()
        assert first[0].isupper() and first[1:].islower(), c
        assert second.isupper(), c


def test_pairs_keep_structure(aug, mrpc):
    a, b = mrpc
    out = aug.augment_pairs(a, b)
    assert len(out) == len(a)
    changed_a = changed_b = 0
    for x, y, copies in zip(a, b, out):
        assert 1 <= len(copies) <= 4
        for ca, cb in copies:
            assert isinstance(ca, str) and isinstance(cb, str)
            changed_a += bool(changed_words(x, ca))
            changed_b += bool(changed_words(y, cb))
    n = sum(map(len, out))
    assert changed_a >= 0.8 * n and changed_b >= 0.8 * n  # both texts are augmented
    # The copies of a pair vary on each side.
    assert all(len({c[0] for c in copies}) > 1 for copies in out)


def test_zero_copies_and_empty_input(aug, sst2, mrpc):
    zero = Augmenter(None, config=AugmentConfig(copies=0), progress=False)
    assert zero.augment(sst2) == [[] for _ in sst2]
    assert zero.augment_pairs(*mrpc) == [[] for _ in mrpc[0]]
    assert aug.augment([]) == []
    never = Augmenter(None, config=AugmentConfig(copies=4, replace_prob=0.0), progress=False)
    assert never.augment(sst2[:3]) == [[], [], []]
    # Nothing to replace: no copy rather than a copy equal to the original.
    assert aug.augment([". , !", ""]) == [[], []]


def test_the_default_number_of_copies_grows_as_the_train_set_shrinks():
    """About 70,000 augmented rows, 4 to 20 copies per example; set explicitly, a number is kept."""
    assert [default_copies(n) for n in (1, 3500, 3668, 5444, 14_000, 17_500, 67_349, 10**6)] == \
        [20, 20, 20, 13, 5, 4, 4, 4]
    assert AugmentConfig().copies is None
    assert AugmentConfig().for_examples(3668) == AugmentConfig(copies=20)
    assert AugmentConfig(copies=2).for_examples(3668).copies == 2
    assert AugmentConfig(copies=0).for_examples(10).copies == 0
    with pytest.raises(UserError, match="resolve it for the train set first"):
        Augmenter(None, config=AugmentConfig(), progress=False)
    assert Augmenter(None, progress=False).config.copies == 4   # no config: the smallest default


@pytest.mark.parametrize("field,value", [
    ("copies", -1), ("copies", 1.5), ("replace_prob", -0.1), ("replace_prob", 1.5),
    ("top_k", 0), ("seed", -3), ("candidates", "glove"),
])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(UserError, match=field):
        AugmentConfig(**{field: value})


def test_bad_inputs(aug, tmp_path):
    with pytest.raises(UserError, match="single string"):
        aug.augment("a sentence")
    with pytest.raises(UserError, match="same length"):
        aug.augment_pairs(["a"], ["b", "c"])
    with pytest.raises(UserError, match="does not exist"):
        Augmenter(str(tmp_path / "missing"), progress=False)
    with pytest.raises(UserError, match="masked-LM head"):
        Augmenter(None, config=AugmentConfig(copies=4, candidates="mlm"), progress=False)


@pytest.fixture(scope="module")
def tiny_mlm_dir(tmp_path_factory, aug):
    from transformers import BertConfig, BertForMaskedLM

    path = tmp_path_factory.mktemp("tiny_mlm")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=aug.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64)
    BertForMaskedLM(config).save_pretrained(path)
    aug.tokenizer.save_pretrained(path)
    return str(path)


def test_mlm_path(tiny_mlm_dir, sst2):
    from transformers import BertForMaskedLM

    cfg = AugmentConfig(copies=20, replace_prob=1.0, top_k=5, seed=0)
    mlm = Augmenter(tiny_mlm_dir, config=cfg, progress=False, batch_size=7)
    assert mlm.method == "mlm" and mlm.to_dict()["candidates"] == "mlm"
    text = sst2[1]  # "contains no wit , only labored gags"
    words = text.split()
    copies = mlm.augment([text])[0]
    assert len(copies) == 20 and mlm.augment([text])[0] == copies
    ok = vocab_word_checker(mlm.tokenizer)
    assert all(ok(new) for c in copies for _, new in changed_words(text, c))

    # Every replacement of a single-piece word is one of the MLM's top-k for that word
    # masked in the original sentence (computed here with the plain full-logits forward).
    model = BertForMaskedLM.from_pretrained(tiny_mlm_dir).eval()
    tok = mlm.tokenizer
    enc = tok(words, is_split_into_words=True, return_tensors="pt")
    word_ids = enc.word_ids(0)
    valid = mlm.valid_mask.cpu()
    checked = 0
    for j, w in enumerate(words):
        if not any(c.isalnum() for c in w) or len(tok(w, add_special_tokens=False)["input_ids"]) != 1:
            continue
        pos = word_ids.index(j)
        ids = enc["input_ids"].clone()
        original = int(ids[0, pos])
        ids[0, pos] = tok.mask_token_id
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=enc["attention_mask"]).logits[0, pos]
        logits[~valid] = -float("inf")
        logits[original] = -float("inf")
        top = set(tok.convert_ids_to_tokens(logits.topk(5).indices.tolist()))
        seen = {c.split()[j] for c in copies}
        assert seen <= top, (w, seen, top)
        assert len(seen) >= 3  # uniform over the 5 candidates, 20 draws
        checked += 1
    assert checked >= 4

    # Multi-piece words still get replaced (embedding neighbours) on the MLM path.
    multi = mlm.augment(["unflinchingly"])[0]
    assert multi and all(ok(c) for c in multi)
    # Forcing the embedding path on the same checkpoint gives other copies.
    emb = Augmenter(tiny_mlm_dir, config=AugmentConfig(copies=20, replace_prob=1.0, top_k=5,
                                                       candidates="embedding"), progress=False)
    assert emb.method == "embedding" and emb.augment([text])[0] != copies
