"""The website: nav/glob expansion and outside-URL stripping (pure Python), then the whole offline site opened page by
page in headless Chromium over the DevTools protocol (math typeset, images decoded, links resolve, nothing fetched
from outside the machine). The browser part skips with a reason when Chromium or websocket-client is missing."""
import functools
import http.server
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from kattn.site import RESULTS_PAGE, expand_glob, page_out, site_nav, site_options, site_pages, strip_external

ROOT = Path(__file__).resolve().parents[1]
# the test build executes one library notebook (all of them take minutes): this one draws a figure
EXECUTED = "nbs/08b_data_pathfinder.ipynb"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1200,1400", "--remote-debugging-port=0",
                  "--remote-allow-origins=*"]


# ---------------------------------------------------------------- pure Python

def test_nav_from_quarto_yml_expands_globs(tmp_path):
    for f in ["nbs/index.ipynb", "nbs/00_a.ipynb", "nbs/01b_c.ipynb", "nbs/_draft.ipynb", "nbs/experiments/e.ipynb",
              "nbs/.ipynb_checkpoints/00_a-checkpoint.ipynb", "runs/e/cpu.ipynb", "runs/e/cpu.failed.ipynb",
              "runs/e/.tmp-x.ipynb", "runs/deep/er/cpu__n=8.ipynb", "runs/e/smoke.ipynb", "runs/deep/er/smoke__n=8.ipynb",
              "nbs/experiments/train_smoke.ipynb"]:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("{}")
    shutil.copy(ROOT / "_quarto.yml", tmp_path)
    nav = site_nav(tmp_path)
    got = {s["section"]: [i["src"] for i in s["items"]] for s in nav["sidebar"]}
    assert got == {None: ["nbs/index.ipynb"], "Library": ["nbs/00_a.ipynb", "nbs/01b_c.ipynb"],
                   "Experiments": ["nbs/experiments/e.ipynb", "nbs/experiments/train_smoke.ipynb"],
                   "Results": ["runs/deep/er/cpu__n=8.ipynb", "runs/e/cpu.ipynb"]}          # smoke records are not pages
    assert [i["text"] for i in nav["navbar"]] == ["Home", "Library", "Experiments", "Results"]
    assert expand_glob(tmp_path, "runs/**/*.ipynb") == ["runs/deep/er/cpu__n=8.ipynb", "runs/e/cpu.ipynb"]
    # a notebook added later shows up without touching _quarto.yml
    (tmp_path / "nbs/02_new.ipynb").write_text("{}")
    assert "nbs/02_new.ipynb" in [i["src"] for i in site_nav(tmp_path)["sidebar"][1]["items"]]
    assert [page_out(s) for s in ["nbs/index.ipynb", "nbs/01b_c.ipynb", "nbs/experiments/e.ipynb", "runs/e/cpu.ipynb"]] == \
        ["index.html", "c.html", "experiments/e.html", "runs/e/cpu.html"]


def test_project_pages_cover_every_section():
    pages = site_pages(ROOT)
    srcs = [p["src"] for p in pages]
    assert srcs[0] == "nbs/index.ipynb" and pages[0]["out"] == "index.html"
    assert {"nbs/00_toeplitz.ipynb", "nbs/12_site.ipynb", "nbs/experiments/toeplitz_fft.ipynb"} <= set(srcs)
    assert any(s.startswith("runs/") for s in srcs)
    assert len(set(p["out"] for p in pages)) == len(pages)


def test_strip_external_removes_every_fetch():
    html = ('<script src="https://cdn.jsdelivr.net/npm/require.js"></script>'
            "<script src='//unpkg.com/@jupyter-widgets/html-manager'> </script>"
            '<script src="mathjax/MathJax.js?config=x"></script>'
            '<link rel="stylesheet" href="https://fonts.googleapis.com/css?family=Roboto">'
            '<link rel="stylesheet" href="local.css"><iframe src="https://www.youtube.com/embed/x"></iframe>'
            '<img src="http://example.org/fig.png" alt="f"><img src="data:image/png;base64,AAAA">'
            '<style>@import url("https://fonts.example/x.css"); p {color: red}</style>'
            '<a href="https://github.com/kattn/kattn/blob/main/kattn/site.py#L1">[source]</a>')
    out = strip_external(html)
    fetched = re.findall(r'<(?:script|link|img|iframe)\b[^>]*?(?:src|href)=["\']([^"\']+)', out)
    assert fetched == ["mathjax/MathJax.js?config=x", "local.css", "data:image/png;base64,AAAA"]
    assert "@import" not in out and "p {color: red}" in out
    assert '<a href="http://example.org/fig.png">' in out                       # outside image kept as a plain link
    assert 'href="https://github.com/kattn/kattn/blob/main/kattn/site.py#L1"' in out  # outside hyperlinks stay


# ---------------------------------------------------------------- headless Chromium over CDP

def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name): return shutil.which(name)
    return None


class Browser:
    "Minimal Chrome DevTools Protocol client: one page target, events buffered."
    def __init__(self, exe):
        import websocket
        self.profile = tempfile.mkdtemp(prefix="kattn-chromium-")
        self.proc = subprocess.Popen([exe, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file, t0 = Path(self.profile) / "DevToolsActivePort", time.time()
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.time() - t0 > 30 or self.proc.poll() is not None: self.close(); raise RuntimeError("Chromium did not start")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.n, self.events = 0, []
        for dom in ("Page", "Network", "Runtime"): self.call(f"{dom}.enable")

    def call(self, method, **params):
        self.n += 1; self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                if "error" in msg: raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]
            self.events.append(msg)

    def wait_event(self, method, timeout=30):
        t0 = time.time()
        while time.time() - t0 < timeout:
            for i, e in enumerate(self.events):
                if e.get("method") == method: return self.events.pop(i)
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(method)

    def js(self, expr):
        r = self.call("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True, timeout=30000)
        if "exceptionDetails" in r: raise RuntimeError(r["exceptionDetails"])
        return r["result"].get("value")

    def open(self, url):
        "Navigate, wait for load and MathJax's startup typeset; return (requested URLs, failed loads)."
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")
        self.js("new Promise((ok, no) => { if (!window.MathJax || !MathJax.Hub) no('no MathJax'); "
                "setTimeout(() => no('MathJax timeout'), 25000); MathJax.Hub.Register.StartupHook('End', () => ok(true)); })")
        self.js("new Promise(ok => MathJax.Hub.Queue(() => ok(true)))")
        self.call("Runtime.evaluate", expression="1")  # flush pending network events into self.events
        reqs = [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]
        urls = {e["params"]["requestId"]: e["params"]["request"]["url"] for e in self.events
                if e.get("method") == "Network.requestWillBeSent"}
        # MathJax probes web-font support with a font at about:blank; that load fails by design
        failed = [(e["params"]["errorText"], urls.get(e["params"]["requestId"], "?")) for e in self.events
                  if e.get("method") == "Network.loadingFailed" and not urls.get(e["params"]["requestId"], "?").startswith("about:")]
        return reqs, failed

    def screenshot(self, path):
        import base64
        Path(path).write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self):
        try: self.ws.close()
        except Exception: pass
        self.proc.terminate()
        try: self.proc.wait(10)
        except subprocess.TimeoutExpired: self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


_PAGE_STATE = """(() => {
  const q = s => Array.from(document.querySelectorAll(s));
  return {
    tex: q('script[type^="math/tex"]').length,
    rendered: q('span.MathJax, div.MathJax_Display, .MathJax_Preview + span.MathJax').length,
    errors: q('.MathJax_Error, .noError, merror, .merror').map(e => e.textContent.slice(0, 80)),
    imgs: q('img').map(i => [i.src.slice(0, 60), i.complete, i.naturalWidth]),
    nav: q('nav.kattn-navbar a, aside.kattn-sidebar a').map(a => a.href),
    links: q('main a[href]').map(a => a.href),
    title: document.querySelector('.kattn-title h1') && document.querySelector('.kattn-title h1').textContent,
  };
})()"""


def _has_tex(nb_path):
    "Whether the notebook's markdown holds TeX (code spans and fenced blocks removed), judged from the source."
    nb = json.loads(Path(nb_path).read_text())
    for c in nb["cells"]:
        if c["cell_type"] != "markdown": continue
        s = re.sub(r"```.*?```|`[^`\n]*`", "", "".join(c["source"]), flags=re.S)
        if re.search(r"\$\$.+?\$\$|(?<![\\$])\$[^$\n]+\$", s, re.S): return True
    return False


def _local(url):
    "Whether loading `url` stays on this machine."
    u = urlparse(url)
    return u.scheme in ("file", "data", "about", "blob") or (u.scheme in ("http", "https") and u.hostname in ("127.0.0.1", "localhost"))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    "The offline site built into a temporary folder, and its pages (listed just before the build: records may land meanwhile)."
    pages = site_pages(ROOT)
    out = tmp_path_factory.mktemp("site") / "_site"
    # in a child process: nbdev executes the notebooks' exported cells to render show_doc; keep that out of pytest's process
    code = (f"from kattn.site import build_site; "
            f"build_site({str(ROOT)!r}, out={str(out)!r}, use_quarto=False, execute=[{EXECUTED!r}], timeout=300)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"site: \d+ pages built", r.stdout), r.stdout[-2000:]
    assert "site: executed 1 notebooks" in r.stdout and "warning" not in r.stdout, r.stdout[-2000:]
    return out, pages


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("websocket", reason="websocket-client is needed to drive Chromium (pip install websocket-client)")
    exe = _chromium()
    if exe is None: pytest.skip("headless Chromium not found (Debian: apt-get install -y chromium; .ci/run installs it)")
    b = Browser(exe)
    yield b
    b.close()


@pytest.mark.browser
def test_every_page_in_chromium(site, browser):
    site, pages = site
    built = {p.relative_to(site).as_posix() for p in site.rglob("*.html") if "mathjax" not in p.parts}
    assert {p["out"] for p in pages} <= built
    problems, typeset = [], 0
    for p in pages:
        url = (site / p["out"]).as_uri()
        reqs, failed = browser.open(url)
        st = browser.js(_PAGE_STATE)
        where = p["out"]
        outside = [r for r in reqs if not _local(r)]
        if outside: problems.append(f"{where}: requests left the machine: {outside}")
        if failed: problems.append(f"{where}: failed loads: {failed}")
        if _has_tex(ROOT / p["src"]):
            typeset += 1
            if st["tex"] == 0 or st["rendered"] == 0: problems.append(f"{where}: TeX in the notebook but MathJax typeset nothing {st['tex'], st['rendered']}")
        if st["errors"]: problems.append(f"{where}: MathJax errors {st['errors']}")
        bad_imgs = [i for i in st["imgs"] if not (i[1] and i[2] > 0)]
        if bad_imgs: problems.append(f"{where}: images not decoded {bad_imgs}")
        if not st["title"]: problems.append(f"{where}: no page title")
        # every navbar/sidebar link, and every link to a page of the site, resolves to a built file
        for href in st["nav"] + [h for h in st["links"] if h.startswith("file:") and ".html" in h]:
            f = Path(unquote(urlparse(href).path))
            if href.startswith("file:") and not f.is_file(): problems.append(f"{where}: link to missing {f}")
        nav_srcs = {p2["out"] for p2 in pages}
        nav_targets = {Path(unquote(urlparse(h).path)).relative_to(site).as_posix() for h in st["nav"] if h.startswith("file:")}
        if not nav_srcs <= nav_targets | {"index.html"}: problems.append(f"{where}: sidebar misses {nav_srcs - nav_targets}")
    assert not problems, "\n".join(problems)
    assert typeset >= 2, "expected math on several pages (index and the module notebooks)"


@contextmanager
def _serve(folder):
    "A static server for `folder` on a free loopback port; yields its base URL."
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try: yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally: srv.shutdown(); srv.server_close()


@pytest.mark.browser
def test_served_over_http_math_renders(site, browser, tmp_path):
    site = site[0]
    with _serve(site) as base:
        reqs, failed = browser.open(f"{base}/toeplitz.html")
        st = browser.js(_PAGE_STATE)
        browser.screenshot(Path(os.environ.get("KATTN_SITE_SCREENSHOT", tmp_path / "toeplitz.png")))
    assert st["rendered"] > 0 and not st["errors"] and not failed
    assert [r for r in reqs if not _local(r)] == []
    assert any(r.endswith("fonts/HTML-CSS/STIX-Web/fontdata.js") or "STIX-Web" in r for r in reqs), "STIX-Web fonts not loaded"


# ---------------------------------------------------------------- search, executed pages, tables of contents, anchors, favicon

class _Page(HTMLParser):
    "Element ids, `<a href>`s and `<link rel=icon>` hrefs of one built page."
    def __init__(self):
        super().__init__(); self.ids, self.dup_ids, self.hrefs, self.icons = set(), [], [], []
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            if a["id"] in self.ids: self.dup_ids.append(a["id"])
            self.ids.add(a["id"])
        if tag == "a" and a.get("href") is not None: self.hrefs.append(a["href"])
        if tag == "link" and "icon" in (a.get("rel") or "").split(): self.icons.append(a.get("href"))


def _parse_site(site):
    res = {}
    for f in site.rglob("*.html"):
        if "mathjax" in f.parts or "site_libs" in f.parts: continue
        p = _Page(); p.feed(f.read_text(encoding="utf-8")); res[f.relative_to(site).as_posix()] = p
    return res


def _broken_anchors(pages):
    "In-site links `page.html#frag` / `#frag` whose fragment is no element id of the target page (matched as browsers do:"
    " as written, then percent-decoded; case-sensitive), and links to pages that were not built."
    bad, checked = [], 0
    for out, p in pages.items():
        for href in p.hrefs:
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//", href) or "#" not in href: continue
            path, frag = href.split("#", 1)
            tgt = posixpath.normpath(posixpath.join(posixpath.dirname(out), path)) if path else out
            if tgt not in pages: bad.append(f"{out}: {href} (no page {tgt})"); continue
            if not frag: continue
            checked += 1
            if frag not in pages[tgt].ids and unquote(frag) not in pages[tgt].ids: bad.append(f"{out}: {href}")
    return bad, checked


def test_anchor_checker_catches_case_mismatch(tmp_path):
    "The checker itself: a lower-cased link to a `FeatureMap` heading is broken, the exact and percent-encoded ones are not."
    (tmp_path / "a.html").write_text('<h2 id="FeatureMap">F</h2><h2 id="a→b">x</h2>'
                                     '<a href="#featuremap">1</a><a href="#FeatureMap">2</a><a href="#a%E2%86%92b">3</a>')
    bad, checked = _broken_anchors(_parse_site(tmp_path))
    assert (bad, checked) == (["a.html: #featuremap"], 3)


def test_no_broken_anchors(site):
    pages = _parse_site(site[0])
    bad, checked = _broken_anchors(pages)
    assert checked > 300, checked        # nbdev's doc links, heading anchors and the tables of contents
    assert not bad, f"{len(bad)} broken anchors:\n" + "\n".join(bad[:40])
    dups = {out: p.dup_ids for out, p in pages.items() if p.dup_ids}
    assert not dups, f"ids used twice on a page (a link can reach only the first): {dups}"


def test_favicon_linked_from_every_page(site):
    site = site[0]
    fav = site_options(ROOT)["favicon"]
    assert fav and (ROOT / fav).is_file()
    svg = ET.fromstring((site / "favicon.svg").read_text())
    assert svg.tag == "{http://www.w3.org/2000/svg}svg" and (site / "favicon.svg").read_bytes() == (ROOT / fav).read_bytes()
    for out, p in _parse_site(site).items():
        assert len(p.icons) == 1, (out, p.icons)
        assert posixpath.normpath(posixpath.join(posixpath.dirname(out), p.icons[0])) == "favicon.svg", (out, p.icons)


def test_library_notebooks_are_committed_without_outputs():
    "Why the build executes them: the figures on the library pages can only come from running the notebooks."
    nb = json.loads((ROOT / EXECUTED).read_text())
    assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")
    assert any("plt.show()" in "".join(c["source"]) for c in nb["cells"])


def test_search_index_covers_every_page(site):
    site, pages = site
    js = (site / "site_libs/kattn/search-index.js").read_text(encoding="utf-8")
    assert js.startswith("window.kattnSearchDocs = ")
    docs = json.loads(js[js.index("["):js.rindex("]") + 1])
    assert {d["u"].split("#")[0] for d in docs} == {p["out"] for p in pages} | {RESULTS_PAGE}
    assert any(d["u"].startswith("toeplitz.html#") and "circulant" in (d["t"] + d["b"]).lower() for d in docs)
    assert (site / "site_libs/lunr/lunr.min.js").is_file() and "Permission is hereby granted" in (site / "site_libs/lunr/LICENSE").read_text()


_SEARCH = """(text => new Promise((ok, no) => {
  const box = document.getElementById('kattn-search-input'), list = document.getElementById('kattn-search-results');
  if (!box || !list) return no('no search box');
  box.focus(); box.value = text; box.dispatchEvent(new Event('input'));
  const t0 = Date.now();
  (function poll() {
    if (!list.hidden && list.children.length)
      return ok({hits: Array.from(list.querySelectorAll('a.kattn-search-hit')).map(a => [a.getAttribute('href'), a.href, a.textContent]),
                 empty: !!list.querySelector('.kattn-search-empty')});
    if (Date.now() - t0 > 20000) return no('no results shown');
    setTimeout(poll, 50);
  })();
}))"""


def _search(browser, text):
    return browser.js(f"{_SEARCH}({json.dumps(text)})")


def _check_search(browser, base, here, shot=None):
    "Search from page `here` of the site at URL `base`: known words find their pages, links resolve, nonsense finds nothing."
    browser.open(f"{base}/{here}")
    r = _search(browser, "circulant")
    assert r["hits"] and not r["empty"], r
    assert urlparse(r["hits"][0][1]).path.endswith("/toeplitz.html"), r["hits"][:3]
    if shot: browser.screenshot(shot)
    r2 = _search(browser, "pathfinder")
    assert any(urlparse(h[1]).path.endswith("/data_pathfinder.html") for h in r2["hits"][:3]), r2["hits"][:5]
    assert _search(browser, "zqxjkvw")["empty"]
    assert _search(browser, "the toeplitz:~^ *")["hits"]            # stop words and lunr's query syntax are harmless
    # following the first hit lands on the page, at an element that exists
    browser.open(r["hits"][0][1])
    assert browser.js("location.pathname.endsWith('/toeplitz.html') && (!location.hash || !!document.querySelector(':target'))")


@pytest.mark.browser
def test_search_from_file_urls(site, browser, tmp_path):
    site = site[0]
    _check_search(browser, site.as_uri(), "index.html", tmp_path / "search.png")
    _check_search(browser, site.as_uri(), "runs/toeplitz_fft/cpu.html")      # from a page two folders down


@pytest.mark.browser
def test_search_over_http(site, browser):
    with _serve(site[0]) as base:
        _check_search(browser, base, "experiments/toeplitz_fft.html")


@pytest.mark.browser
def test_executed_library_page_shows_its_figure(site, browser, tmp_path):
    site = site[0]
    browser.open((site / page_out(EXECUTED)).as_uri())
    imgs = browser.js("Array.from(document.querySelectorAll('main .jp-OutputArea-output img'))"
                      ".map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
    browser.js("document.querySelector('main .jp-OutputArea-output img').scrollIntoView()")
    browser.screenshot(Path(os.environ.get("KATTN_FIGURE_SCREENSHOT", tmp_path / "figure.png")))
    assert imgs and all(ok and w > 100 and h > 20 for ok, w, h in imgs), imgs
    # text outputs too, besides the figure
    assert browser.js("document.querySelectorAll('main .jp-OutputArea-output').length") > len(imgs)


@pytest.mark.browser
def test_table_of_contents(site, browser):
    site = site[0]
    assert site_options(ROOT)["toc"] is True
    for page, want in [("toeplitz.html", "Derivation"), ("data_pathfinder.html", "PathfinderSpec")]:
        browser.open((site / page).as_uri())
        st = browser.js("""(() => {
          const toc = document.querySelector('nav.kattn-toc'); if (!toc) return null;
          const links = Array.from(toc.querySelectorAll('a'));
          const target = a => { const h = a.getAttribute('href').slice(1); return document.getElementById(h) || document.getElementById(decodeURIComponent(h)); };
          const r = toc.getBoundingClientRect();
          return {n: links.length, text: links.map(a => a.textContent), broken: links.filter(a => !target(a)).map(a => a.getAttribute('href')),
                  visible: r.width > 100 && r.height > 100, sticky: getComputedStyle(toc).position};
        })()""")
        assert st is not None, f"{page}: no table of contents"
        assert st["n"] >= 3 and not st["broken"] and st["visible"] and st["sticky"] == "sticky", (page, st)
        assert any(t.startswith(want) for t in st["text"]), (page, st["text"])


@pytest.mark.browser
def test_favicon_renders(site, browser):
    browser.open((site[0] / "index.html").as_uri())
    w = browser.js("new Promise(ok => { const i = new Image(); i.onload = () => ok(i.naturalWidth); i.onerror = () => ok(-1);"
                   " i.src = document.querySelector('link[rel=icon]').href; })")
    assert w > 0
