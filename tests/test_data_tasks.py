"Stand-in LRA-shaped tasks: balance, no document leakage, AAN format round trip; on the real stand-ins when fetched."
import numpy as np
import pytest
from kattn.data import DataMissingError
from kattn.data import tasks as T
from kattn.data.real import read_aan


def _fake(ncorp=3, ndoc=30, lines=12, seed=0):
    rng = np.random.default_rng(seed)
    return {f"c{c}:d{k}": "\n".join(" ".join(f"c{c}d{k}w{rng.integers(50)}" for _ in range(10)) for _ in range(lines))
            for c in range(ncorp) for k in range(ndoc)}


def test_segments_respect_bytes_and_keep_text():
    t = "é" * 30 + "\nabc\n" + "z" * 5
    s = T.segments(t, max_bytes=16)
    assert all(len(x.encode()) <= 16 for x in s)
    assert "".join(s).replace("\n", "") == t.replace("\n", "")


def test_retrieval_pairs_balanced_and_split_by_document(tmp_path):
    p = T.retrieval_pairs(_fake(), 100, seed=1, max_bytes=200)
    assert [len(p[s]) for s in ("train", "eval", "test")] == [100, 10, 10]
    for rows in p.values():
        assert sum(r[0] for r in rows) == len(rows) // 2
        for y, a, b, ta, tb in rows:
            assert y == int(a.split("#")[0] == b.split("#")[0]) and a != b and "\t" not in ta + tb and "\n" not in ta + tb
    docs = {s: {x.split("#")[0] for r in rows for x in r[1:3]} for s, rows in p.items()}
    assert not (docs["train"] & docs["eval"]) and not (docs["train"] & docs["test"]) and not (docs["eval"] & docs["test"])
    assert T.retrieval_pairs(_fake(), 100, seed=1, max_bytes=200) == p
    f = T.write_aan_tsv(p["test"], tmp_path / "new_aan_pairs.test.tsv")
    assert f.read_text().split("\t")[0] in ("0.0", "1.0") and read_aan(path=f) == p["test"]


def test_source_chunks_labels_and_caps():
    fk = _fake(ncorp=2, ndoc=5, lines=40)
    corp = {c: {k: v for k, v in fk.items() if k.startswith(c)} for c in ("c0", "c1")}
    sc = T.source_chunks(corp, chunk_bytes=300, per_class=15)
    for s, (texts, y, names) in sc.items():
        assert names == ["c0", "c1"] and all(150 < len(t.encode()) <= 300 for t in texts)
        assert all(t.startswith(names[l]) for t, l in zip(texts, y))
    assert np.bincount(sc["train"][1]).tolist() == [15, 15]
    tr, te = set(sc["train"][0]), set(sc["test"][0])
    assert not (tr & te)


def test_missing_standin_names_fetch_command(tmp_path):
    with pytest.raises(DataMissingError, match="kattn data fetch austen"): T.documents("austen", tmp_path)
    with pytest.raises(DataMissingError, match="kattn data fetch fashion-mnist"): T.fashion_lra_image(tmp_path)
    with pytest.raises(ValueError, match="enwiki-106 or one of"): T.documents("imdb", tmp_path)


def _have(*names):
    from kattn.data.fetch import manifest
    try: [manifest(n) for n in names]; return True
    except DataMissingError: return False


@pytest.mark.skipif(not _have("fashion-mnist"), reason="run `kattn data fetch fashion-mnist`")
def test_fashion_lra_image_shapes():
    d = T.fashion_lra_image()
    assert [d[s][0].shape for s in ("train", "val", "test")] == [(54000, 1024), (6000, 1024), (10000, 1024)]
    x = d["test"][0].reshape(-1, 32, 32)
    assert x[:, :2].max() == 0 and x[:, :, -2:].max() == 0 and x.max() == 255


@pytest.mark.skipif(not _have("enwiki-106", "austen", "shakespeare", "web-bible"),
                    reason="run `kattn data fetch enwiki-106 austen shakespeare web-bible`")
def test_real_standin_tasks():
    docs = {n: T.documents(n) for n in ("enwiki-106",) + T.PROSE}
    assert [len(docs[n]) for n in ("enwiki-106",) + T.PROSE] == [106, 6, 42, 80]
    p = T.retrieval_pairs({k: v for d in docs.values() for k, v in d.items()}, 400)
    assert sum(r[0] for r in p["train"]) == 200 and max(len(r[3].encode()) for r in p["train"]) <= 4000
    sc = T.source_chunks(docs, per_class=100)
    assert np.bincount(sc["train"][1]).tolist() == [100] * 4


def test_documents_reject_damaged_files(tmp_path):
    import hashlib, json
    d = tmp_path / "austen" / "documents"; d.mkdir(parents=True)
    text = b"It is a truth universally acknowledged.\n" * 20
    (d / "emma.txt").write_bytes(text); (d / "persuasion.txt").write_bytes(text)
    files = {f"austen/documents/{n}": hashlib.sha256(text).hexdigest() for n in ("emma.txt", "persuasion.txt")}
    (tmp_path / "austen" / "MANIFEST.json").write_text(json.dumps({"name": "austen", "files": files, "bytes": {k: len(text) for k in files}}))
    assert T.documents("austen", tmp_path)["austen:emma"] == text.decode()
    (d / "emma.txt").write_bytes(text[:-9])
    with pytest.raises(ValueError, match=r"emma\.txt.*kattn data fetch austen"): T.documents("austen", tmp_path)
    (d / "emma.txt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"emma\.txt.*empty"): T.documents("austen", tmp_path)
