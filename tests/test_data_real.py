"Real-data readers on small fixtures written in each release's exact format; missing files name the fetch command."
import gzip
import pickle
import struct
import numpy as np
import pytest
from PIL import Image
from kattn.data import DataMissingError
from kattn.data import real as R
from kattn.data import images as I
from kattn.data.text import WordTokenizer


def _w(path, text):
    path.parent.mkdir(parents=True, exist_ok=True); path.write_text(text, encoding="utf-8"); return path


def test_wikitext_tokens_and_raw(tmp_path):
    body = [" = Valkyria Chronicles III = ", "", " Senjō no Valkyria 3 : <unk> Chronicles is a 2011 @-@ era game . ", "",
            " = = Gameplay = = ", "", " It costs 1 @,@ 000 yen . ", "", " = Tower Building = ", "", " The tower is 3 @.@ 5 m . ", ""]
    _w(tmp_path / "wikitext-103" / "wiki.valid.tokens", "\n".join([""] + body))
    _w(tmp_path / "wikitext-103-raw" / "wiki.valid.raw", "\n".join([""] + body).replace("<unk>", "Unrecorded"))
    lines = R.read_wikitext(tmp_path, "valid")
    arts = R.wikitext_articles(lines)
    assert [t for t, _ in arts] == ["Valkyria Chronicles III", "Tower Building"]
    assert len(arts[0][1]) == 8            # the section heading stays inside its article
    tok = WordTokenizer.build(lines)
    ids = R.wikitext_ids(lines, tok)
    assert ids.count(tok.eos_id) == 6 and len(ids) == sum(len(l.split()) for l in lines) + 6
    assert tok.itos[ids[ids.index(tok.stoi["@-@"]) - 1]] == "2011"
    assert ids.count(tok.unk_id) == 1
    assert "Unrecorded" in " ".join(R.read_wikitext(tmp_path, "valid", raw=True))
    with pytest.raises(DataMissingError, match=r"wiki\.test\.tokens.*prepare-wikitext-103"):
        R.read_wikitext(tmp_path, "test")
    with pytest.raises(DataMissingError, match="kattn data fetch enwiki-106"):
        R.read_wikitext(tmp_path, "train", name="enwiki-106")


def test_parallel_iwslt_and_wmt(tmp_path):
    d = tmp_path / "iwslt14.tokenized.de-en"
    _w(d / "test.de", "".join(f"das ist satz@@ teil {i} .\n" for i in range(10)))
    _w(d / "test.en", "".join(f"this is sentence {i} .\n" for i in range(10)))
    p = R.read_parallel(d, "test")
    assert len(p) == 10 and R.undo_bpe(p[7][0]) == "das ist satzteil 7 ." and p[7][1] == "this is sentence 7 ."
    _w(d / "code", "e n\ni n\ne r\nc h\ns t\n")  # BPE merges file is not needed by the reader
    w = tmp_path / "wmt14_en_de"
    _w(w / "valid.en", "a\nb\n"); _w(w / "valid.de", "x\ny\n")
    assert R.read_parallel(w, "valid", src="en", tgt="de", fetch="wmt14") == [("a", "x"), ("b", "y")]
    with pytest.raises(DataMissingError, match="prepare-wmt14en2de"): R.read_parallel(w, "train", "en", "de", fetch="wmt14")


GLUE = {  # task: (file, rows incl. header, expected (text_a, text_b, label) of the first data row, expected row count)
    "CoLA": ("train", [["gj04", "1", "", "Our friends won't buy this analysis, let alone the next one we propose."],
                       ["gj04", "0", "*", "One more pseudo generalization and I'm giving up."]],
             ("Our friends won't buy this analysis, let alone the next one we propose.", None, 1), 2),
    "SST-2": ("dev", [["sentence", "label"], ["it 's a charming and often affecting journey . ", "1"]],
              ("it 's a charming and often affecting journey . ", None, 1), 1),
    "MRPC": ("train", [["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"], ["1", "702876", "702977", 'He said "no".', "He refused."]],
             ('He said "no".', "He refused.", 1), 1),
    "QQP": ("train", [["id", "qid1", "qid2", "question1", "question2", "is_duplicate"], ["133273", "213221", "213222", "How is the life?", "How is life?", "1"],
                      ["363362", "no second question"]], ("How is the life?", "How is life?", 1), 1),
    "STS-B": ("dev", [["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score"],
                      ["0", "main-captions", "MSRvid", "2012test", "0000", "none", "none", "A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.", "5.000"]],
              ("A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.", 5.0), 1),
    "MNLI": ("dev_mismatched", [["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse", "sentence1_parse",
                                 "sentence2_parse", "sentence1", "sentence2", "label1", "label2", "label3", "label4", "label5", "gold_label"],
                                ["0", "75290", "75290c", "letters", "( ( Your gift ) )", "( ( Your gift ) )", "(ROOT)", "(ROOT)", "Your gift is appreciated.",
                                 "Hundreds of donors received this.", "neutral", "neutral", "neutral", "neutral", "neutral", "neutral"]],
             ("Your gift is appreciated.", "Hundreds of donors received this.", 2), 1),
    "QNLI": ("train", [["index", "question", "sentence", "label"], ["0", "When did it open?", "It opened in 1887.", "entailment"]],
             ("When did it open?", "It opened in 1887.", 0), 1),
    "RTE": ("train", [["index", "sentence1", "sentence2", "label"], ["0", "No weapons were found.", "Weapons were found.", "not_entailment"]],
            ("No weapons were found.", "Weapons were found.", 1), 1),
}


@pytest.mark.parametrize("task", list(GLUE))
def test_glue_tasks(tmp_path, task):
    split, rows, first, n = GLUE[task]
    _w(tmp_path / "glue_data" / task / f"{split}.tsv", "\n".join("\t".join(r) for r in rows) + "\n")
    out = R.read_glue(tmp_path, task, split)
    assert len(out) == n and (out[0]["text_a"], out[0]["text_b"], out[0]["label"]) == first


def test_glue_test_files_have_no_labels(tmp_path):
    _w(tmp_path / "glue_data" / "SST-2" / "test.tsv", "index\tsentence\n0\tuneasy mishmash .\n")
    _w(tmp_path / "glue_data" / "CoLA" / "test.tsv", "index\tsentence\n0\tBill whistled past the house.\n")
    assert R.read_glue(tmp_path, "SST-2", "test") == [{"text_a": "uneasy mishmash .", "text_b": None, "label": None}]
    assert R.read_glue(tmp_path, "CoLA", "test")[0]["text_a"] == "Bill whistled past the house."
    with pytest.raises(DataMissingError, match="download_glue_data.py"): R.read_glue(tmp_path, "RTE", "dev")


def test_imdb_tree_and_lra_bytes(tmp_path):
    for split in ("train", "test"):
        for d, rs in (("pos", (7, 10)), ("neg", (1, 4))):
            for i, r in enumerate(rs): _w(tmp_path / "aclImdb" / split / d / f"{(i + 1) * 11}_{r}.txt", f"{split} {d} {i}<br /><br />Très bien")
    _w(tmp_path / "aclImdb" / "train" / "unsup" / "0_0.txt", "unlabelled")
    ex = R.read_imdb(tmp_path, "train")
    assert [y for _, y in ex] == [0, 0, 1, 1] and ex[3][0] == "train pos 1<br /><br />Très bien"
    ids, labels = R.lra_text(ex, max_len=4000)
    assert ids[0] == [b + 1 for b in ex[0][0].encode()] and labels == [0, 0, 1, 1]
    assert len(R.lra_text([("é" * 3000, 1)], 4000)[0][0]) == 4000
    with pytest.raises(DataMissingError, match="aclImdb_v1.tar.gz"): R.read_imdb(tmp_path / "nowhere", "test")


def test_aan_tsv(tmp_path):
    _w(tmp_path / "lra_release" / "tsv_data" / "new_aan_pairs.test.tsv",
           '0.0\tW06-2914\tP05-1044\tWe "propose" a model.\tAbstract two.\n1.0\tA00-1\tA00-2\tx\ty\n')
    rows = R.read_aan(tmp_path, "test")
    assert rows[0] == (0, "W06-2914", "P05-1044", 'We "propose" a model.', "Abstract two.") and rows[1][0] == 1
    a, b = R.aan_encode("a" * 20000, "é" * 6000)
    assert len(a) == 4000 and len(b) == 4000 and b[:2] == [0xC3 + 1, 0xA9 + 1]
    _w(tmp_path / "bad.tsv", "1.0\tonly\tthree\n")
    with pytest.raises(ValueError, match="5 tab-separated"): R.read_aan(path=tmp_path / "bad.tsv")


def _cifar_fixture(root, n_train=8, n_test=4, py2=True):
    c = root / "cifar-10-batches-py"; c.mkdir(parents=True)
    rng = np.random.default_rng(1)
    X = rng.integers(0, 256, (n_train + n_test, 32, 32, 3), dtype=np.uint8)
    rows = X.transpose(0, 3, 1, 2).reshape(len(X), 3072)
    k = (lambda s: s.encode()) if py2 else (lambda s: s)
    for name, sl in (("data_batch_1", slice(0, n_train)), ("test_batch", slice(n_train, None))):
        with open(c / name, "wb") as f:
            pickle.dump({k("batch_label"): k(name), k("labels"): list(range(10))[:len(rows[sl])] if name == "test_batch" else [i % 10 for i in range(n_train)],
                         k("data"): rows[sl], k("filenames"): [k("f.png")] * len(rows[sl])}, f, protocol=2)
    with open(c / "batches.meta", "wb") as f:
        pickle.dump({k("label_names"): [k(x) for x in ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]],
                     k("num_cases_per_batch"): 10000, k("num_vis"): 3072}, f, protocol=2)
    return X


@pytest.mark.parametrize("py2", [True, False])
def test_cifar10_pickles_and_lra_image(tmp_path, py2):
    X = _cifar_fixture(tmp_path, py2=py2)
    x, y, names = I.read_cifar10(tmp_path, "train")
    np.testing.assert_array_equal(x, X[:8]); assert y.tolist() == list(range(8)) and names[3] == "cat"
    xt, yt, _ = I.read_cifar10(tmp_path, "test")
    np.testing.assert_array_equal(xt, X[8:]); assert yt.tolist() == [0, 1, 2, 3]
    sp = I.lra_image_splits(tmp_path)
    assert sp["train"][0].shape == (7, 1024) and sp["val"][0].shape == (1, 1024) and sp["test"][0].shape == (4, 1024)
    # TF's rgb_to_grayscale + convert_image_dtype, computed here independently in float64 (same result away from ties)
    g = np.floor((X[0].astype(np.float64) / 255 @ np.array([0.2989, 0.5870, 0.1140])) * 255.5).astype(int)
    assert np.abs(sp["train"][0][0] - g.reshape(-1)).max() <= 1 and (sp["train"][0][0] == g.reshape(-1)).mean() > 0.99
    with pytest.raises(DataMissingError, match="cifar-10-python.tar.gz"): I.read_cifar10(tmp_path / "none")


def test_unsafe_pickle_refused(tmp_path):
    import os
    with open(tmp_path / "data_batch_1", "wb") as f: pickle.dump({"data": os.system}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing"): I.load_pickle(tmp_path / "data_batch_1")


def test_imagefolder_and_imagenet32(tmp_path):
    rng = np.random.default_rng(0)
    for wnid in ("n01440764", "n01443537"):
        for k in range(2):
            p = tmp_path / "train" / wnid / f"{wnid}_{k}.JPEG"; p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(p)
    items, classes = I.image_folder(tmp_path / "train")
    assert classes == ["n01440764", "n01443537"] and [y for _, y in items] == [0, 0, 1, 1]
    ds = I.ImageFolderDataset(tmp_path / "train", size=24)
    x, y = ds[2]
    assert x.shape == (3, 24, 24) and y == 1 and 0 <= x.min() and x.max() <= 1
    X = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    for name, sl in (("train_data_batch_1", slice(0, 3)), ("train_data_batch_2", slice(3, 5)), ("val_data", slice(0, 2))):
        with open(tmp_path / name, "wb") as f:
            pickle.dump({"data": X[sl].transpose(0, 3, 1, 2).reshape(-1, 3072), "labels": [1000, 1, 5][: len(X[sl])] + [7] * max(0, len(X[sl]) - 3)}, f)
    xi, yi = I.read_imagenet32_batches(tmp_path, "train")
    np.testing.assert_array_equal(xi, X); assert yi.tolist() == [999, 0, 4, 999, 0]
    for k in range(4): Image.fromarray(X[k]).save(tmp_path / f"{k:05d}.png")
    np.testing.assert_array_equal(I.read_png_folder(tmp_path), X[:4])


def test_idx(tmp_path):
    imgs = np.arange(2 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(2, 28, 28)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(struct.pack(">HBBIII", 0, 8, 3, 2, 28, 28) + imgs.tobytes()))
    np.testing.assert_array_equal(I.read_idx(tmp_path / "train-images-idx3-ubyte.gz"), imgs)
    (tmp_path / "bad").write_bytes(struct.pack(">HBBI", 0, 0x0D, 1, 1) + b"\0\0\0\0")
    with pytest.raises(ValueError, match="not a uint8 IDX"): I.read_idx(tmp_path / "bad")


@pytest.mark.parametrize("cut", ["header", "dims", "gzip", "empty"])
def test_idx_truncated_names_file(tmp_path, cut):
    imgs = np.arange(2 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(2, 28, 28)
    raw = struct.pack(">HBBIII", 0, 8, 3, 2, 28, 28) + imgs.tobytes()
    f = tmp_path / "train-images-idx3-ubyte.gz"
    f.write_bytes({"header": raw[:3], "dims": raw[:9], "gzip": gzip.compress(raw)[:-30], "empty": b""}[cut])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"): I.read_idx(f)


@pytest.mark.parametrize("cut", ["empty", "half"])
def test_load_pickle_damaged_names_file(tmp_path, cut):
    f = tmp_path / "data_batch_1"
    b = pickle.dumps({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2, 3]})
    f.write_bytes(b"" if cut == "empty" else b[: len(b) // 2])
    with pytest.raises(ValueError, match="data_batch_1"): I.load_pickle(f)


def test_text_readers_reject_empty_files(tmp_path):
    (tmp_path / "wikitext-103").mkdir(); (tmp_path / "wikitext-103" / "wiki.valid.tokens").write_text("")
    with pytest.raises(ValueError, match=r"wiki\.valid\.tokens.*empty"): R.read_wikitext(tmp_path, "valid")
    (tmp_path / "glue_data" / "SST-2").mkdir(parents=True); (tmp_path / "glue_data" / "SST-2" / "dev.tsv").write_text("")
    with pytest.raises(ValueError, match=r"dev\.tsv.*empty"): R.read_glue(tmp_path, "SST-2", "dev")
    f = tmp_path / "aan.tsv"; f.write_text("")
    with pytest.raises(ValueError, match=r"aan\.tsv.*empty"): R.read_aan(path=f)
