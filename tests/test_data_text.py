"Tokenizers and batching: exact ids, round trips, unk handling, padding masks, bucketing, splits."
import numpy as np
import pytest
from kattn.data.text import ByteTokenizer, CharTokenizer, WordTokenizer, SubwordTokenizer
from kattn.data import batching as B


def test_byte_tokenizer_matches_tfds_convention():
    t = ByteTokenizer()
    assert t.encode("Hi é") == [73, 106, 33, 196, 170] and t.vocab_size == 257
    assert t.decode(t.encode("naïve 文字") + [0]) == "naïve 文字"
    with pytest.raises(TypeError, match="text must be a str"): t.encode(b"x")


def test_word_tokenizer_vocab_order_unk_and_save(tmp_path):
    texts = ["b a b c", "a b", "d <unk>"]
    w = WordTokenizer.build(texts)
    assert w.itos == ["<pad>", "<unk>", "<eos>", "<bos>", "b", "a", "c", "d"]      # counts 3,2,1,1; ties by token
    assert w.encode("a zzz d <unk>") == [5, 1, 7, 1]
    assert WordTokenizer.build(texts, min_freq=2).itos[4:] == ["b", "a"]
    assert WordTokenizer.build(["A a"], lower=True).itos[4:] == ["a"]
    w2 = WordTokenizer.load(w.save(tmp_path / "v.json"))
    assert w2.itos == w.itos and w2.encode("c") == [6]


def test_char_tokenizer():
    c = CharTokenizer.build(["aab", "b"])
    assert c.itos == ["<pad>", "<unk>", "a", "b"] and c.encode("abz") == [2, 3, 1]
    assert c.decode([2, 3, 0]) == "ab"


def test_subword_roundtrip_and_determinism(tmp_path):
    sents = [f"der Hund {w} nicht" for w in ("läuft", "schläft", "bellt", "frisst")] * 10 + \
            [f"the dog does not {w}" for w in ("run", "sleep", "bark", "eat")] * 10
    a = SubwordTokenizer.train(sents, vocab_size=60); b = SubwordTokenizer.train(sents, vocab_size=60)
    assert a.model == b.model
    for s in ("der Hund bellt nicht", "the dog does not sleep"):
        ids = a.encode(s, add_bos=True, add_eos=True)
        assert ids[0] == 2 and ids[-1] == 3 and a.decode(ids) == s
    c = SubwordTokenizer.load(a.save(tmp_path / "sp.model"))
    assert c.encode("Hund") == a.encode("Hund")
    assert a.encode("Ω")[-1] == a.unk_id                        # unseen character -> unk


def test_pad_batch_masks_and_sides():
    ids, m = B.pad_batch([[3, 4], [5, 6, 7], []])
    assert ids.tolist() == [[3, 4, 0], [5, 6, 7], [0, 0, 0]]
    assert m.tolist() == [[False, False, True], [False] * 3, [True] * 3]
    idl, ml = B.pad_batch([[3, 4], [5, 6, 7]], side="left")
    assert idl.tolist() == [[0, 3, 4], [5, 6, 7]] and ml[0].tolist() == [True, False, False]


def test_collate_and_lm_blocks():
    ds = B.SequenceDataset([[1, 2, 3, 4], [5]], [1, 0], max_len=3)
    b = B.collate_classification([ds[0], ds[1]])
    assert b["ids"].tolist() == [[1, 2, 3], [5, 0, 0]] and b["labels"].tolist() == [1, 0]
    assert ds.lengths() == [3, 1]
    blk = B.lm_blocks(list(range(11)), 5)
    assert blk["ids"].tolist() == [[0, 1, 2, 3, 4, 5], [5, 6, 7, 8, 9, 10]]


def test_bucketing_covers_every_index_and_cuts_padding():
    L = np.random.default_rng(1).integers(1, 500, 2000)
    bb = B.bucket_batches(L, 32, seed=0)
    assert sorted(i for b in bb for i in b) == list(range(2000))
    assert max(len(b) for b in bb) == 32
    waste = sum(len(b) * L[b].max() - L[b].sum() for b in bb) / L.sum()
    assert waste < 0.05, waste          # random batches of 32 waste ~ (E max / E len - 1) ~ 90%
    assert B.bucket_batches(L, 32, seed=0) == bb and B.bucket_batches(L, 32, seed=1) != bb
    capped = B.bucket_batches(L, 64, max_tokens=4000)
    assert all(len(b) * L[b].max() <= 4000 for b in capped)
    srt = B.bucket_batches(L, 32, shuffle=False)
    assert [L[i] for b in srt for i in b] == sorted(L)


def test_splits():
    parts = B.split_indices(101, (0.8, 0.1, 0.1), seed=0)
    assert [len(p) for p in parts] == [80, 10, 11]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(101))
    keys = [f"k{i % 50}" for i in range(500)]
    hs = B.hash_split(keys, (0.5, 0.5))
    sets = [{keys[i] for i in p} for p in hs]
    assert not (sets[0] & sets[1]) and sum(map(len, hs)) == 500
    # stable: the split of a key does not depend on the other keys
    assert B.hash_split(["k3"], (0.5, 0.5))[0].size == (1 if "k3" in sets[0] else 0)
    with pytest.raises(ValueError, match="fractions"): B.split_indices(5, (-1, 2))
