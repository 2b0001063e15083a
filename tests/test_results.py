"""kattn.results: the README's results section and the site's Results page are generated from the committed records'
`paper_results`; the README must agree with the records, and the renderer prints the right numbers."""
import base64, json, subprocess, sys
from pathlib import Path

import nbformat
import pytest

from kattn import results
from kattn.runner import PAPER_IDS, paper_row

ROOT = Path(__file__).resolve().parents[1]
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
CLI = "import sys; from kattn.runner import main; sys.exit(main({!r}))"


def cli(args, cwd):
    "The `kattn` command line in a fresh interpreter, run from `cwd`."
    return subprocess.run([sys.executable, "-c", CLI.format(list(args))], cwd=cwd, capture_output=True, text=True, timeout=300)


def row(**kw):
    return paper_row(**{"id": "luo-table2", "quantity": "validation perplexity", "unit": "ppl", "n_seeds": 3, **kw})


LM = {"notebook": "cpu.ipynb", "paper_results": [
    row(setting="vanilla softmax", paper=33.0, ours=115.51279, ours_sd=0.441763),
    row(setting="NPRF + RPE", paper=30.6, ours=114.810312, ours_sd=0.0596420, holds=True, note="claim: best"),
    row(setting="TRF", paper=None, ours=346.98789, ours_sd=12.15787),
    row(id="luo-fig1b", setting="R = 1, m = 1024", quantity="relative error", unit="", paper=0.05, ours=0.0529871, n_seeds=None)]}


def make_project(tmp_path, readme="# p\n\n<!-- results:start -->\n<!-- results:end -->\n\nprose\n"):
    "A throwaway project (not a git checkout): an lm record with rows and an image, a speed record without rows."
    (tmp_path / "settings.ini").write_text("[kattn]\nruns_dir = runs\npreset = smoke\nseed = 0\n")
    (tmp_path / "README.md").write_text(readme)
    for name, rec, png in (("lm", LM, PNG), ("speed", {"notebook": "cpu.ipynb"}, None), ("lm", LM, None)):
        slug = "cpu" if png is not None or name == "speed" else "smoke"        # a smoke record: never counted
        d = tmp_path / "runs" / name; d.mkdir(parents=True, exist_ok=True)
        (d / f"{slug}.json").write_text(json.dumps({**rec, "notebook": f"{slug}.ipynb"}))
        out = nbformat.v4.new_output("display_data", {"text/plain": "<Figure>", **({"image/png": base64.b64encode(png).decode()} if png else {})})
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# Experiment: the {name} study\n> x"),
                                             nbformat.v4.new_code_cell("plot()", outputs=[out])])
        nbformat.write(nb, d / f"{slug}.ipynb")
    return tmp_path


def test_readme_agrees_with_the_committed_records():
    ok, diff = results.sync_readme(ROOT, check=True)
    assert ok, "README.md's results section and the records disagree; run `.venv/bin/kattn results`:\n" + diff[:6000]


def test_every_record_row_is_in_the_readme():
    # independent of the renderer's layout: each committed row's setting and our number appear in the README
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index(results.START):readme.index(results.END)]
    recs = results.load_records(ROOT)
    assert recs and all(p.startswith("runs/") and not Path(p).stem.startswith("smoke") for p, _ in recs)
    for path, rec in recs:
        for r in rec.get("paper_results", []):
            line = next((l for l in section.splitlines() if l.startswith(f"| {r['setting']} |")), None)
            assert line and results.fmt_mean_sd(r["ours"], r["ours_sd"]) in line and results.record_key(path) in line, (path, r)


def test_renderer_on_a_synthetic_record():
    md = results.render_results([("runs/lm/cpu.json", LM), ("runs/speed/cpu.json", {"notebook": "cpu.ipynb"})])
    lines = md.splitlines()
    # PAPER_IDS order: luo-fig1b before luo-table2, whatever the order inside the record
    assert lines.index("### luo-fig1b: Luo et al. 2021, Fig. 1b: PRF error vs the norm of q, k") < \
        lines.index("### luo-table2: Luo et al. 2021, Table 2: language modelling")
    link = "[`lm/cpu`](runs/lm/cpu.ipynb)"
    assert f"| R = 1, m = 1024 | 0.05299 | 0.05 | – | – | – | {link} |" in lines
    assert "Quantity: validation perplexity [ppl]." in lines
    assert f"| vanilla softmax | 115.51 ± 0.44 | 33 | – | 3 | – | {link} |" in lines
    assert f"| NPRF + RPE | 114.810 ± 0.060 | 30.6 | yes | 3 | claim: best | {link} |" in lines
    assert f"| TRF | 347 ± 12 | – | – | 3 | – | {link} |" in lines
    missing = [i for i in PAPER_IDS if i not in ("luo-fig1b", "luo-table2")]
    assert lines[-3] == "No record has rows for: " + ", ".join(f"`{i}`" for i in missing) + "."
    assert lines[-1] == "No paper rows: [`speed/cpu`](runs/speed/cpu.ipynb)."


@pytest.mark.parametrize("mean,sd,text", [(115.51279, 0.441763, "115.51 ± 0.44"), (346.98789, 12.15787, "347 ± 12"),
                                          (0.1242285, 0.005565, "0.1242 ± 0.0056"), (5.8737, None, "5.874"),
                                          (1.4e-14, None, "1.400e-14"), (None, None, "–"), (-2.5, 0.25, "-2.50 ± 0.25")])
def test_significant_digits(mean, sd, text):
    assert results.fmt_mean_sd(mean, sd) == text


def test_unknown_id_is_named():
    with pytest.raises(ValueError, match="luo-fig9"):
        results.render_results([("runs/x/cpu.json", {"paper_results": [{"id": "luo-fig9"}]})])


def test_cli_writes_the_section_and_check_fails_with_a_diff(tmp_path):
    root = make_project(tmp_path)
    r = cli(["results", "--check"], root)
    assert r.returncode == 1 and "+| vanilla softmax | 115.51 ± 0.44 |" in r.stdout and "kattn results" in r.stderr
    assert "115.51" not in (root / "README.md").read_text()                     # --check writes nothing
    r = cli(["results"], root)
    assert r.returncode == 0 and "2 committed records" in r.stdout, r.stderr    # lm/cpu and speed/cpu, not the smoke record
    text = (root / "README.md").read_text()
    assert text.startswith("# p\n\n<!-- results:start -->\n") and text.endswith("<!-- results:end -->\n\nprose\n")
    assert "No paper rows: [`speed/cpu`](runs/speed/cpu.ipynb)." in text and "lm/smoke" not in text
    assert cli(["results", "--check"], root).returncode == 0
    # a record changes: the README no longer agrees
    rec = json.loads((root / "runs/lm/cpu.json").read_text()); rec["paper_results"][0]["ours"] = 116.0
    (root / "runs/lm/cpu.json").write_text(json.dumps(rec))
    r = cli(["results", "--check"], root)
    assert r.returncode == 1 and "-| vanilla softmax | 115.51 ± 0.44 |" in r.stdout and "+| vanilla softmax | 116.00 ± 0.44 |" in r.stdout


def test_readme_without_markers_is_an_error(tmp_path):
    root = make_project(tmp_path, readme="# p\n")
    r = cli(["results"], root)
    assert r.returncode == 2 and "results:start" in r.stderr


def test_committed_records_only(tmp_path):
    # in a git checkout only tracked records count: an untracked record is left out until it is committed
    root = make_project(tmp_path)
    git = lambda *a: subprocess.run(["git", *a], cwd=root, check=True, capture_output=True)
    try: git("init", "-q")
    except (OSError, subprocess.CalledProcessError): pytest.skip("git is not available")
    git("add", "runs/lm/cpu.json", "runs/lm/cpu.ipynb")
    assert results.record_paths(root) == ["runs/lm/cpu.json"]
    git("add", "runs")
    assert results.record_paths(root) == ["runs/lm/cpu.json", "runs/speed/cpu.json"]


QUARTO = """website:
  title: p
  navbar:
    left:
      - text: Home
        href: runs/lm/cpu.ipynb
      - text: Results
        href: paper-results.html
  sidebar:
    contents:
      - section: Results
        contents: "runs/**/*.ipynb"
"""


def test_site_results_page_has_tables_figures_and_links(tmp_path):
    root = make_project(tmp_path)
    (root / "_quarto.yml").write_text(QUARTO)
    code = f"from kattn.site import build_site; build_site({str(root)!r}, out='_site', use_quarto=False)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    site = root / "_site"
    page = (site / "paper-results.html").read_text()
    assert "<table>" in page and "115.51 ± 0.44" in page and "114.810 ± 0.060" in page
    assert 'href="runs/lm/cpu.html"' in page and (site / "runs/lm/cpu.html").is_file()       # record links go to its page
    assert 'src="paper-results_files/lm__cpu.png"' in page and 'src="data:' not in page         # the figure is a file
    assert (site / "paper-results_files/lm__cpu.png").read_bytes() == PNG
    assert not (site / "paper-results_files/speed__cpu.png").exists()                                # no image, no figure
    assert "the lm study" in page
    # the navbar's Results entry opens it, from every page, and is marked active on it
    assert 'href="../../paper-results.html"' in (site / "runs/lm/cpu.html").read_text()
    assert '<a class="active" href="paper-results.html">Results</a>' in page


def test_project_navbar_results_opens_the_generated_page():
    from kattn.site import RESULTS_PAGE, site_nav, site_pages
    assert {"text": "Results", "src": RESULTS_PAGE} in site_nav(ROOT)["navbar"]
    outs = {p["out"] for p in site_pages(ROOT)}
    assert RESULTS_PAGE not in outs and "results.html" in outs          # kattn.results' own page is another page
