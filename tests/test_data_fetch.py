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


# ---- damaged caches: detected, named, restored (a toy stand-in in a temporary cache; never downloads) ----------------

TOY = {"pkg/a_gut.txt": b"one two three\n" * 40, "pkg/b_gut.txt": b"four five six\n" * 40}


@pytest.fixture
def toy(tmp_path, monkeypatch):
    "A registered stand-in `toy` (prose) whose 'download' hands back TOY; the cache is tmp_path/cache."
    spec = dict(pypi="toy==0", files=r"_gut\.txt$", build=lambda files, out: F._prose(
        {k[4:-8]: v.decode().splitlines() for k, v in sorted(files.items())}, out, "toy"), dirs=("toy",),
        digest=F.digest(TOY), licence="test", about="toy prose")
    monkeypatch.setitem(F.STANDINS, "toy", spec)
    calls = []
    def fake_download(spec_, dest, kind="wheel"):
        calls.append(spec_); p = dest / "toy-0.zip"
        import zipfile
        with zipfile.ZipFile(p, "w") as z:
            for k, v in TOY.items(): z.writestr(k, v)
        return p
    monkeypatch.setattr(F, "download_pypi", fake_download)
    root = tmp_path / "cache"
    F.fetch("toy", root)
    calls.clear()
    return root, calls


def _cli(argv, capsys):
    rc = F.cli_main(argv); out = capsys.readouterr(); return rc, out.out + out.err


@pytest.mark.parametrize("damage", ["truncate", "empty", "byte", "delete"])
def test_fetch_restores_damaged_file(toy, capsys, damage):
    root, calls = toy
    f = root / "toy" / "valid.txt"; good = f.read_bytes()
    if damage == "truncate": f.write_bytes(good[: len(good) // 2])
    elif damage == "empty": f.write_bytes(b"")
    elif damage == "byte": f.write_bytes(good[:5] + bytes([good[5] ^ 1]) + good[6:])
    else: f.unlink()
    rc, out = _cli(["fetch", "toy", "--root", str(root)], capsys)
    assert rc == 0 and "toy: restored valid.txt" in out, out
    if damage == "delete": assert "(was missing)" in out
    assert calls and f.read_bytes() == good                 # rebuilt from the (fake) package
    rc, out = _cli(["fetch", "toy", "--root", str(root)], capsys)
    assert rc == 0 and "toy: ok" in out and "restored" not in out


@pytest.mark.parametrize("damage", ["truncate", "empty", "byte"])
def test_read_prose_rejects_damaged_file(toy, damage):
    root, _ = toy
    f = root / "toy" / "train.txt"; good = f.read_bytes()
    assert F.read_prose("toy", "train", root) == good.decode()
    f.write_bytes({"truncate": good[:-7], "empty": b"", "byte": good[:3] + b"X" + good[4:]}[damage])
    with pytest.raises(ValueError, match=r"train\.txt") as e: F.read_prose("toy", "train", root)
    assert "kattn data fetch toy" in str(e.value)


def test_read_prose_rejects_empty_file_without_manifest(tmp_path):
    (tmp_path / "austen").mkdir(); (tmp_path / "austen" / "train.txt").write_text("")
    with pytest.raises(ValueError, match=r"train\.txt.*empty"): F.read_prose("austen", "train", tmp_path)


def test_verify_command(toy, capsys):
    root, calls = toy
    rc, out = _cli(["verify", "toy", "--root", str(root)], capsys)
    assert rc == 0 and "toy: ok" in out
    f = root / "toy" / "documents" / "a.txt"; b = f.read_bytes(); f.write_bytes(b[:-2] + b"?\n")   # same size
    rc, out = _cli(["verify", "toy", "--root", str(root)], capsys)
    assert rc == 1 and "documents/a.txt" in out and "SHA-256" in out and not calls   # verify never rebuilds


def test_corrupt_manifest_is_named_and_repaired(toy, capsys):
    root, calls = toy
    (root / "toy" / "MANIFEST.json").write_text('{"name": "toy", "fil')
    rc, out = _cli(["list", "--root", str(root)], capsys)
    assert rc == 0 and "MANIFEST.json" in out and "enwiki-106" in out       # the listing goes on past it
    with pytest.raises(ValueError, match="MANIFEST.json"): F.manifest("toy", root)
    rc, out = _cli(["fetch", "toy", "--root", str(root)], capsys)
    assert rc == 0 and "toy: restored" in out and "MANIFEST.json" in out and calls
    assert F.verify("toy", root)["name"] == "toy"


def test_list_reports_damage_by_size(toy, capsys):
    root, _ = toy
    (root / "toy" / "test.txt").write_bytes(b"")
    rc, out = _cli(["list", "--root", str(root)], capsys)
    assert "toy" in out and "damaged" in out and "test.txt" in out


def test_interrupted_fetch_leaves_nothing(toy, monkeypatch):
    root, _ = toy
    def boom(files, out): (out / "toy").mkdir(parents=True); (out / "toy" / "x").write_text("partial"); raise KeyboardInterrupt
    monkeypatch.setitem(F.STANDINS["toy"], "build", boom)
    with pytest.raises(KeyboardInterrupt): F.fetch("toy", root, force=True)
    assert not list(root.glob(".fetch-*"))


def test_stale_fetch_dirs_removed(toy):
    root, _ = toy
    import os
    dead, old, live = root / ".fetch-toy-p999999999-abc", root / ".fetch-web-bible-x1y2", root / f".fetch-toy-p{os.getppid()}-z"
    for d in (dead, old, live): (d / "out").mkdir(parents=True); (d / "out" / "junk").write_text("x")
    os.utime(old, (1e9, 1e9))                                # no pid in the name: removed once it is old
    F.fetch("toy", root)
    assert not dead.exists() and not old.exists() and live.exists()   # a running fetch's folder stays


def test_sigterm_during_fetch_leaves_nothing(tmp_path):
    import os, signal, subprocess, sys
    script = f'''
import time, zipfile
from kattn.data import fetch as F
TOY = {TOY!r}
def slow(files, out): (out / "toy").mkdir(parents=True); (out / "toy" / "x").write_text("partial"); print("building", flush=True); time.sleep(60)
F.STANDINS["toy"] = dict(pypi="toy==0", files=r"_gut\\.txt$", build=slow, dirs=("toy",), digest=F.digest(TOY), licence="t", about="t")
def dl(spec, dest, kind="wheel"):
    p = dest / "toy-0.zip"
    with zipfile.ZipFile(p, "w") as z:
        for k, v in TOY.items(): z.writestr(k, v)
    return p
F.download_pypi = dl
F.cli_main(["fetch", "toy", "--root", {str(tmp_path)!r}])
'''
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.stdout.readline().strip() == "building"
    assert list(tmp_path.glob(".fetch-toy-p*"))
    p.send_signal(signal.SIGTERM); p.wait(timeout=60)
    assert p.returncode != 0 and not list(tmp_path.glob(".fetch-*")) and not (tmp_path / "toy").exists()


def test_manifest_without_sizes_still_checked_and_upgraded(toy, capsys):
    import json
    root, calls = toy
    mf = root / "toy" / "MANIFEST.json"; m = json.loads(mf.read_text()); m.pop("bytes", None); mf.write_text(json.dumps(m))
    f = root / "toy" / "train.txt"; good = f.read_bytes(); f.write_bytes(good[:-1] + b"?")      # same size
    rc, out = _cli(["list", "--root", str(root)], capsys)
    assert "damaged" in out and "toy/train.txt" in out
    f.write_bytes(good)
    rc, out = _cli(["fetch", "toy", "--root", str(root)], capsys)
    assert rc == 0 and "toy: ok" in out and not calls
    assert json.loads(mf.read_text())["bytes"]["toy/train.txt"] == len(good)    # sizes recorded once the hashes passed


def test_failed_rebuild_names_the_damage(toy, capsys, monkeypatch):
    root, _ = toy
    (root / "toy" / "valid.txt").unlink()
    def offline(*a, **k): raise RuntimeError("pip download failed: no network")
    monkeypatch.setattr(F, "download_pypi", offline)
    rc, out = _cli(["fetch", "toy", "--root", str(root)], capsys)
    assert rc == 1 and "valid.txt (was missing)" in out and "no network" in out, out
