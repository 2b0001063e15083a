"Stand-ins: converters offline; fetched stand-ins (if in the cache) match their checksums, sizes and splits. Never downloads."
import gzip
import io
import struct
import tarfile
import zlib
import numpy as np
import pytest
from kattn.data import DataMissingError, data_dir
from kattn.data import corpora as C
from kattn.data import fetch as F
from kattn.data.real import read_wikitext, wikitext_articles, read_glue, read_parallel


def needs(name):
    try: F.manifest(name); present = True
    except DataMissingError: present = False
    return pytest.mark.skipif(not present, reason=f"stand-in {name} not in {data_dir()}: run `kattn data fetch {name}` (or `make data`)")


# ---- converters, offline -------------------------------------------------------------------------------------------

def test_wikitext_article_markup():
    txt = ("{{Infobox|a={{b}}}}The '''[[Moon|moon]]''' has a 3,474.8-km diameter.<ref name=x>cite</ref>\n"
           "<!-- hidden -->== Orbit ==\nIt orbits [[Earth]] every 27.3 days [http://x.org source].\n"
           "=== Tides ===\n[[Image:T.png|thumb|Tidal [[bulge]]]]Tides rise and fall twice daily.\n"
           "== External links ==\n* [http://nasa.gov NASA]\nDropped text here too.\n[[Category:Moons]]")
    assert C.wikitext_article("Moon", txt) == [
        " = Moon = ", "", " The moon has a 3 @,@ 474 @.@ 8 @-@ km diameter . ", "", " = = Orbit = = ", "",
        " It orbits Earth every 27 @.@ 3 days source . ", "", " = = = Tides = = = ", "", " Tides rise and fall twice daily . ", ""]


def test_ding_pairs_rules():
    text = ("Er kommt morgen. | Sie kommt heute. :: He comes tomorrow. | She comes today.\n"
            "Hund {m}; Köter {m} :: dog; cur\nZu kurz. :: Too short.\nEin [ugs.] Satz hier. :: A sentence here.\n")
    assert C.ding_pairs(text) == [("Er kommt morgen.", "He comes tomorrow."), ("Sie kommt heute.", "She comes today."),
                                  ("Ein Satz hier.", "A sentence here.")]


def test_ztext_two_blocks():
    a, b = ['<chapter osisID="John.1" sID="John.1"/>', "In the beginning was the Word."], ["<w>Jesus</w> wept."]
    blobs = ["".join(a).encode(), "".join(b).encode()]
    zs = [zlib.compress(x) for x in blobs]
    bzs = struct.pack("<III", 0, len(zs[0]), len(blobs[0])) + struct.pack("<III", len(zs[0]), len(zs[1]), len(blobs[1]))
    bzv = struct.pack("<IIH", 0, 0, len(a[0])) + struct.pack("<IIH", 0, len(a[0]), len(a[1])) + struct.pack("<IIH", 0, 0, 0) \
        + struct.pack("<IIH", 1, 0, len(blobs[1]))
    ents = C.ztext_entries(bzs, b"".join(zs), bzv)
    assert ents == [a[0], a[1], "", "<w>Jesus</w> wept."]
    assert C.web_verses(ents) == [("John", "In the beginning was the Word."), ("John", "Jesus wept.")]


def test_r_lazyload_roundtrip():
    def chars(*ss): return struct.pack(">ii", 16, len(ss)) + b"".join(struct.pack(">ii", 0x00040009, len(s)) + s for s in ss)
    hdr = b"X\n" + struct.pack(">iii", 3, 0x040200, 0x030500) + struct.pack(">i", 5) + b"UTF-8"
    obj = zlib.compress(hdr + chars(b"It is a truth", b""))
    rdb = struct.pack(">i", len(obj)) + obj
    # index: named list(variables = named list(emma = c(0, len)))  -- VECSXP with names attribute
    def intv(*v): return struct.pack(">ii", 13, len(v)) + struct.pack(f">{len(v)}i", *v)
    def named(items):  # VECSXP (19) with attr bit; attributes: pairlist tag 'names' -> STRSXP
        body = struct.pack(">ii", 19 | (1 << 9), len(items)) + b"".join(v for _, v in items)
        sym = struct.pack(">i", 1) + struct.pack(">ii", 0x00040009, 5) + b"names"
        return body + struct.pack(">i", 2 | (1 << 10)) + sym + chars(*[k for k, _ in items]) + struct.pack(">i", 254)
    idx = gzip.compress(hdr + named([(b"variables", named([(b"emma", intv(0, len(rdb)))]))]))
    assert C.r_lazyload(idx, rdb) == {"emma": ["It is a truth", ""]}


def test_deb_members_and_errors():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        ti = tarfile.TarInfo("./usr/share/x/data.txt"); ti.size = 3; tf.addfile(ti, io.BytesIO(b"abc"))
    data = buf.getvalue()
    deb = b"!<arch>\n" + f"{'data.tar.gz':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode() + data
    assert C.deb_members(deb) == {"usr/share/x/data.txt": b"abc"}
    with pytest.raises(ValueError, match="not a Debian package"): C.deb_members(b"PK\x03\x04")


def test_fetch_rejects_unknown_and_bad_checksum(tmp_path):
    with pytest.raises(ValueError, match="unknown stand-in"): F.fetch("wikitext-103", tmp_path)
    with pytest.raises(RuntimeError, match="checksum mismatch"): F.fetch("ding-de-en", tmp_path, files={"usr/share/trans/de-en": b"x"})
    with pytest.raises(DataMissingError, match="kattn data fetch rt-snippets"): F.manifest("rt-snippets", tmp_path)
    assert F.cli_main(["list", "--root", str(tmp_path)]) == 0 and F.cli_main(["fetch", "bogus", "--root", str(tmp_path)]) == 2


# ---- fetched stand-ins (skipped when absent) --------------------------------------------------------------------------

SIZES = {  # measured on the pinned package versions (kattn data fetch all, 2026-11)
    "enwiki-106": {"articles": 106, "vocab": 13115, "train": {"articles": 96, "tokens": 451611, "lm_tokens": 458165},
                   "valid": {"articles": 5, "tokens": 21712, "lm_tokens": 22008}, "test": {"articles": 5, "tokens": 17343, "lm_tokens": 17609}},
    "austen": {"documents": 6, "train": {"words": 644803}, "valid": {"words": 35955}, "test": {"words": 36779}},
    "shakespeare": {"documents": 42, "train": {"words": 814841}, "valid": {"words": 44266}, "test": {"words": 45911}},
    "web-bible": {"documents": 80, "train": {"words": 812761}, "valid": {"words": 45615}, "test": {"words": 46125}},
    "fashion-mnist": {"train": {"images": 60000, "per_class": [6000] * 10}, "test": {"images": 10000, "per_class": [1000] * 10}},
    "rt-snippets": {"train": {"snippets": 11485, "positive": 6643}, "dev": {"snippets": 654, "positive": 377}, "test": {"snippets": 613, "positive": 348}},
    "ding-de-en": {"train": {"pairs": 17856}, "valid": {"pairs": 929}, "test": {"pairs": 994}},
}


def _sub(want, got):
    for k, v in want.items():
        if isinstance(v, dict): _sub(v, got[k])
        else: assert got[k] == v, (k, got[k], v)


@pytest.mark.parametrize("name", list(F.STANDINS))
def test_standin_checksums_and_sizes(name):
    try: F.manifest(name)
    except DataMissingError: pytest.skip(f"stand-in {name} not in {data_dir()}: run `kattn data fetch {name}` (or `make data`)")
    m = F.verify(name)                                  # every written file re-hashed against the manifest
    assert m["digest"] == F.STANDINS[name]["digest"]    # built from the pinned package files
    _sub(SIZES[name], m["sizes"])


@needs("enwiki-106")
def test_enwiki_reads_as_wikitext():
    counts = {}
    for s, n in (("train", 96), ("valid", 5), ("test", 5)):
        lines = read_wikitext(data_dir(), s, name="enwiki-106")
        assert len(wikitext_articles(lines)) == n and all(l == "" or (l[0] == " " and l[-1] == " ") for l in lines)
        counts[s] = sum(len(l.split()) for l in lines)
    assert counts == {s: SIZES["enwiki-106"][s]["tokens"] for s in counts}
    raw = read_wikitext(data_dir(), "valid", raw=True, name="enwiki-106")
    assert "<unk>" not in " ".join(raw) and "<unk>" in " ".join(read_wikitext(data_dir(), "valid", name="enwiki-106"))


@needs("rt-snippets")
def test_rt_snippets_read_as_sst2():
    rows = {s: read_glue(data_dir() / "rt-snippets", "SST-2", s) for s in ("train", "dev", "test")}
    assert [len(r) for r in rows.values()] == [11485, 654, 613]
    texts = [set(r["text_a"] for r in v) for v in rows.values()]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2])
    assert {r["label"] for r in rows["train"]} == {0, 1}


@needs("ding-de-en")
def test_ding_reads_as_parallel_text():
    p = {s: read_parallel(data_dir() / "ding-de-en", s, "de", "en") for s in ("train", "valid", "test")}
    assert [len(v) for v in p.values()] == [17856, 929, 994]
    de = [set(d for d, _ in v) for v in p.values()]
    assert not (de[0] & de[1]) and not (de[0] & de[2]) and not (de[1] & de[2])
    assert all(d[-1] in ".?!" and e[-1] in ".?!" for d, e in p["valid"])


@needs("fashion-mnist")
def test_fashion_mnist_arrays():
    x, y = F.read_fashion_mnist("test")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8 and np.bincount(y).tolist() == [1000] * 10
    assert 70 < x.mean() < 80                    # Fashion-MNIST test mean pixel is ~73


@pytest.mark.parametrize("name", ["austen", "shakespeare", "web-bible"])
def test_prose_splits(name):
    try: F.manifest(name)
    except DataMissingError: pytest.skip(f"stand-in {name} not in {data_dir()}: run `kattn data fetch {name}`")
    for s in ("train", "valid", "test"):
        assert len(F.read_prose(name, s).split()) == SIZES[name][s]["words"]
