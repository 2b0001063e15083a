"ListOps: labels equal the exact evaluator, lengths within bounds, determinism, LRA format and statistics."
import random
import numpy as np
import pytest
from kattn.data import listops as L


@pytest.fixture(scope="module")
def data():
    return L.generate(400, seed=0)


def _len(s): return sum(t not in ("(", ")") for t in s.split())


def test_labels_equal_evaluator(data):
    assert all(L.evaluate(s) == y for s, y in data)
    assert all(isinstance(y, int) and 0 <= y <= 9 for _, y in data)


def test_lengths_strictly_within_bounds(data):
    lens = np.array([_len(s) for s, _ in data])
    assert lens.min() > 500 and lens.max() < 2000
    small = L.generate(100, seed=3, min_length=20, max_length=40)
    assert all(20 < _len(s) < 40 and L.evaluate(s) == y for s, y in small)


def test_deterministic_and_distinct(data):
    assert L.generate(25, seed=0) == data[:25]
    assert L.generate(25, seed=1) != data[:25]
    assert len({s for s, _ in data}) == len(data)


def test_length_and_label_statistics(data):
    # reference (data.md §3.1, 2,000 trees): mean ~1,061 tokens; labels 0 and 9 ~17% each, 1..8 ~7.5-9.6%.
    lens = np.array([_len(s) for s, _ in data]); n = len(data)
    se = lens.std() / np.sqrt(n)
    assert abs(lens.mean() - 1061) < 5 * se + 30, lens.mean()
    y = np.array([t for _, t in data])
    p_edge = np.mean((y == 0) | (y == 9))           # ~0.34
    assert abs(p_edge - 0.34) < 4 * np.sqrt(0.34 * 0.66 / n), p_edge


def test_evaluator_independent_of_tree():
    rng = random.Random(7)
    for _ in range(300):
        t = L.sample_tree(rng, max_depth=6)
        assert L.evaluate(L.to_source(t)) == L.naive_evaluate(t)
    # MED is int(numpy.median): even counts average the middle two and truncate
    for c in ([1, 2], [0, 3], [2, 9, 4, 7], [5, 5, 6]):
        assert L.evaluate("[MED " + " ".join(map(str, c)) + " ]") == int(np.median(c))
    assert L.evaluate("( ( ( [SM 7 ) 8 ) ] )") == 5


def test_source_format_and_tokens():
    assert L.to_source(("[MAX", [2, 9])) == "( ( ( [MAX 2 ) 9 ) ] )"
    s = L.to_source(("[MIN", [3, ("[SM", [4, 9]), 8]))
    assert L.tokenize(s) == ["[MIN", "3", "[SM", "4", "9", "X", "8", "X"]
    assert L.encode(s)[0] == L.VOCAB.index("[MIN") and L.encode("( 7 )") == [L.VOCAB.index("7")]


def test_tsv_roundtrip(tmp_path, data):
    f = L.write_tsv(data[:5], tmp_path / "listops-1000" / "basic_test.tsv")
    lines = f.read_text().split("\n")
    assert lines[0] == "Source\tTarget" and lines[1] == f"{data[0][0]}\t{data[0][1]}"
    assert L.read_tsv(f) == data[:5]


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="unknown token"): L.evaluate("[MAX 12 ]")
    with pytest.raises(ValueError, match="complete"): L.evaluate("[MAX 1 2")
    with pytest.raises(ValueError, match="min_length"): L.generate(1, min_length=10, max_length=5)
    with pytest.raises(FileNotFoundError, match="basic_train.tsv"): L.read_tsv(tmp_path / "basic_train.tsv")


def test_release_layout(tmp_path):
    top = L.write_release(tmp_path, sizes=(5, 2, 3), seed=2, min_length=30, max_length=90)
    parts = [L.read_tsv(top / f"basic_{n}.tsv") for n in ("train", "val", "test")]
    assert [len(p) for p in parts] == [5, 2, 3]
    flat = sum(parts, [])
    assert flat == L.generate(10, seed=2, min_length=30, max_length=90) and len({s for s, _ in flat}) == 10


@pytest.mark.parametrize("target", ["12", "2.7", "-1", "x", ""])
def test_read_tsv_rejects_bad_targets(tmp_path, target):
    p = tmp_path / "t.tsv"; p.write_text(f"Source\tTarget\n( [MAX 2 9 ] )\t9\n( [MIN 2 9 ] )\t{target}\n")
    with pytest.raises(ValueError, match=r"t\.tsv.*(line 3|row 2).*0.*9"): L.read_tsv(p)


def test_read_tsv_accepts_release_floats(tmp_path):
    p = tmp_path / "t.tsv"; p.write_text("Source\tTarget\n( [MAX 2 9 ] )\t9.0\n( [MIN 2 9 ] )\t2\n")
    assert L.read_tsv(p) == [("( [MAX 2 9 ] )", 9), ("( [MIN 2 9 ] )", 2)]
