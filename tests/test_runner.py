"kattn.runner: papermill runs into runs/ atomically, with provenance; CLI errors; suite registry."
import json, os, subprocess, sys
from pathlib import Path
import nbformat
import pytest
from kattn import runner

ROOT = Path(__file__).resolve().parents[1]


def make_project(tmp_path, body):
    "A throwaway project with one experiment template whose parameters cell is tagged."
    (tmp_path / "settings.ini").write_text("[kattn]\nruns_dir = runs\npreset = smoke\nseed = 0\n")
    exp = tmp_path / "nbs" / "experiments"; exp.mkdir(parents=True)
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell('preset = "smoke"\nx = 2\nfail = False'); p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, exp / "tiny.ipynb")
    return tmp_path


BODY = ("from kattn.runner import save_metrics\n"
        "if fail: raise RuntimeError('asked to fail')\n"
        "save_metrics({'y': x * x, 'preset': preset})")


def test_run_writes_record_and_keeps_it_on_failure(tmp_path):
    root = make_project(tmp_path, BODY)
    rec = runner.run_experiment("tiny", preset="cpu", params={"x": 3}, root=root)
    out = root / "runs" / "tiny"
    assert rec["slug"] == "cpu__x=3" and rec["metrics"] == {"y": 9, "preset": "cpu"}
    on_disk = json.loads((out / "cpu__x=3.json").read_text())
    assert on_disk["metrics"]["y"] == 9 and on_disk["parameters"] == {"preset": "cpu", "x": 3, "fail": False}
    assert on_disk["provenance"]["torch"] and on_disk["wall_time_s"] > 0
    executed = nbformat.read(out / "cpu__x=3.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    good_json = (out / "cpu__x=3.json").read_text()
    # a failing run with the same slug must not replace the good record
    with pytest.raises(RuntimeError, match="last good record is untouched"):
        runner.run_experiment("tiny", preset="cpu", params={"x": 3, "fail": True}, root=root)
    assert (out / "cpu__x=3.json").read_text() == good_json
    assert (out / "cpu__fail=True__x=3.failed.ipynb").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


def test_missing_save_metrics_is_a_failure(tmp_path):
    root = make_project(tmp_path, "y = x + 1")
    with pytest.raises(RuntimeError, match="without calling kattn.runner.save_metrics"):
        runner.run_experiment("tiny", root=root)
    assert not (root / "runs" / "tiny" / "smoke.json").exists()
    assert (root / "runs" / "tiny" / "smoke.failed.ipynb").exists()


def test_unknown_name_and_parameter_list_valid_ones(tmp_path):
    root = make_project(tmp_path, BODY)
    with pytest.raises(ValueError, match=r"valid experiments: tiny"):
        runner.run_experiment("nope", root=root)
    with pytest.raises(ValueError, match=r"valid parameters: \['fail', 'preset', 'x'\]"):
        runner.run_experiment("tiny", params={"z": 1}, root=root)


def test_export_script_runs_without_papermill_and_writes_metrics(tmp_path, monkeypatch):
    root = make_project(tmp_path, BODY)
    dest = runner.export_script("tiny", preset="cpu", params={"x": 5}, dest=tmp_path / "tiny.py", root=root)
    text = dest.read_text()
    assert "x = 5" in text and "preset = 'cpu'" in text and 'matplotlib.use("Agg")' in text
    assert text.index("x = 2") < text.index("x = 5") < text.index("save_metrics(")     # injected after the defaults
    env = {**os.environ, "KATTN_METRICS_PATH": str(tmp_path / "m.json")}
    subprocess.run([sys.executable, str(dest)], check=True, env=env, cwd=ROOT, capture_output=True)
    assert json.loads((tmp_path / "m.json").read_text()) == {"y": 25, "preset": "cpu"}
    with pytest.raises(ValueError, match=r"valid parameters: \['fail', 'preset', 'x'\]"):
        runner.export_script("tiny", params={"z": 1}, root=root)
    monkeypatch.chdir(root)                                       # the CLI resolves the project from the working folder
    assert runner.main(["script", "tiny", "--preset", "cpu", "-p", "x", "4", "-o", "cli.py"]) == 0
    assert "x = 4" in (root / "cli.py").read_text()


def test_export_script_refuses_magics(tmp_path):
    root = make_project(tmp_path, "%time y = x + 1")
    with pytest.raises(ValueError, match="magic or shell escape"):
        runner.export_script("tiny", root=root, dest=tmp_path / "t.py")
    assert not (tmp_path / "t.py").exists()


def test_cli_errors_exit_nonzero():
    r = subprocess.run([sys.executable, "-c", "import sys; from kattn.runner import main; sys.exit(main(['run', 'nope']))"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "valid experiments:" in r.stderr and "toeplitz_fft" in r.stderr


def test_data_subcommand_help_reaches_the_data_cli():
    r = subprocess.run([sys.executable, "-c", "import sys; from kattn.runner import main; sys.exit(main(['data', '-h']))"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "kattn data" in r.stdout and "fetch" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-c", "import sys; from kattn.runner import main; sys.exit(main(['data', 'fetch', 'no-such-set']))"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "no-such-set" in r.stderr


def test_suite_names_exist_and_templates_default_to_smoke():
    names = runner.list_experiments(ROOT)
    for name, params in runner.SUITE:
        assert name in names
        defaults = runner.notebook_parameters(ROOT / "nbs" / "experiments" / f"{name}.ipynb")
        assert set(params) <= set(defaults)
    for name in names:
        assert runner.notebook_parameters(ROOT / "nbs" / "experiments" / f"{name}.ipynb")["preset"] == "smoke"


def test_committed_records_are_complete():
    recs = list((ROOT / "runs").glob("*/*.json"))
    assert recs, "no committed experiment records under runs/"
    for p in recs:
        r = json.loads(p.read_text())
        assert r["metrics"] and r["provenance"]["git_sha"] and (p.parent / r["notebook"]).exists(), p


def test_committed_paper_results_are_valid():
    # every row a committed record carries is what paper_row builds (known id, finite numbers, a note where ours is None)
    for p in (ROOT / "runs").glob("*/*.json"):
        for row in json.loads(p.read_text()).get("paper_results", []):
            assert runner.paper_row(**row) == row, (p, row)
    for name, paper_id in (("conversion", "luo-fig2"), ("lm", "luo-table2"), ("feature_maps", "luo-fig3"),
                           ("mt", "luo-table3"), ("mlm_finetune", "luo-table1")):
        rows = json.loads((ROOT / "runs" / name / "cpu.json").read_text())["paper_results"]
        assert len(rows) >= 4 and {r["id"] for r in rows} == {paper_id} and all(r["ours"] is not None for r in rows), name
