"kattn.runner: papermill runs into runs/ atomically, with provenance; CLI errors; suite registry."
import argparse, io, json, os, re, shlex, signal, subprocess, sys, time
from pathlib import Path
import nbformat
import pytest
from kattn import runner
from kattn.config import get_config

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
        seen = {}
        for r in json.loads(p.read_text()).get("paper_results", []):   # one setting, one number (a row may repeat whole)
            assert seen.setdefault((r["id"], r["setting"]), r["ours"]) == r["ours"], (p, r["setting"], "repeats with another number")
    for name, paper_id in (("conversion", "luo-fig2"), ("lm", "luo-table2"), ("feature_maps", "luo-fig3"),
                           ("mt", "luo-table3"), ("mlm_finetune", "luo-table1"), ("approx_error_randomized", "zheng-fig2"),
                           ("zheng_cost", "zheng-cost"), ("sparsity", "chowdhury-sparsity"),
                           ("approx_error_prf", "luo-fig1b"), ("speed", "luo-fig1a")):
        rows = json.loads((ROOT / "runs" / name / "cpu.json").read_text())["paper_results"]
        assert len(rows) >= 4 and {r["id"] for r in rows} == {paper_id} and all(r["ours"] is not None for r in rows), name
    rows = json.loads((ROOT / "runs" / "image_classification" / "cpu.json").read_text())["paper_results"]
    assert {r["id"] for r in rows} == {"luo-table4", "zheng-imagenet"} and len(rows) >= 8 and all(r["ours"] is not None for r in rows)
    rows = json.loads((ROOT / "runs" / "lra" / "cpu.json").read_text())["paper_results"]
    assert {r["id"] for r in rows} == {"chowdhury-lra", "zheng-lra", "chowdhury-analysis"}
    lra = [r for r in rows if r["id"] == "chowdhury-lra"]   # every task x (the LRA paper's baselines + the six learned maps)
    assert len(lra) >= 5 * 9 and all(r["ours"] is not None for r in lra)
    zheng = [r for r in rows if r["id"] == "zheng-lra"]     # softmax, RA, RFA, LARA: the average of all five tasks
    assert len(zheng) == 4 and all(r["ours"] is not None and r["paper"] is not None for r in zheng)


def test_committed_performance_verdicts_follow_their_numbers():
    # the records' verdicts are computed from their own ratios (no wall-clock assertion: the numbers are whatever ran)
    m = json.loads((ROOT / "runs" / "train_smoke" / "cpu.json").read_text())["metrics"]["throughput_target"]
    assert m["target"] == "<= 1.5" and m["met"] == (m["softmax_rpe_over_nprf_rpe_tokens_per_s"] <= 1.5)
    speed = json.loads((ROOT / "runs" / "speed" / "cpu.json").read_text())["metrics"]
    pc, rows = speed["path_choice"], speed["path_rows"]
    assert {r["n"] for r in rows} == {2 ** i for i in range(6, 17)} and {r["mode"] for r in rows} == {"fwd", "fwd+bwd"}
    worst = max(r["chosen_form_over_best"] for r in rows)
    assert abs(pc["worst"] - worst) < 1e-3 and pc["holds"] == (worst <= 1.15)
    for r in rows:      # the form the op chose is the one its rule names, and the ratio is that form's time over the best
        best = min(t for t in (r["fft"], r["dense"]) if t is not None)
        assert r["chosen_form"] == ("dense" if r["n"] <= pc["crossover_in_use"] and r["dense_within_budget"] else "fft")
        assert abs(r["chosen_form_over_best"] - r[r["chosen_form"]] / best) < 1e-9


CLI = "import sys; from kattn.runner import main; sys.exit(main({!r}))"


def cli(args, **kw):
    "The `kattn` command line in a fresh interpreter (the console script may import another checkout)."
    return subprocess.run([sys.executable, "-c", CLI.format(list(args))], **{"capture_output": True, "text": True, **kw})


def test_notebooks_name_their_kernel():
    nbs = sorted((ROOT / "nbs").glob("*.ipynb")) + sorted((ROOT / "nbs" / "experiments").glob("*.ipynb"))
    assert len(nbs) > 20
    for p in nbs:
        meta = json.loads(p.read_text())["metadata"]
        assert meta.get("kernelspec", {}).get("name") == "python3" and meta["kernelspec"].get("language") == "python", p
        assert meta.get("language_info", {}).get("name") == "python", p


def test_readme_papermill_command_runs_as_written(tmp_path):
    cmds = re.findall(r"`(\.venv/bin/papermill [^`]+)`", (ROOT / "README.md").read_text())
    assert len(cmds) == 1, cmds
    argv = shlex.split(cmds[0])
    assert argv[1].startswith("nbs/experiments/") and argv[2] == "out.ipynb" and argv[3:5] == ["-p", "preset"], argv
    exe = Path(sys.executable).parent / "papermill"                 # .venv/bin/papermill of the running venv
    out = tmp_path / "out.ipynb"
    # exactly the README's command, from the project root, at the seconds-long preset and writing into tmp_path
    cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "papermill"]),
           argv[1], str(out), "-p", "preset", "smoke", *argv[6:]]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    nb = nbformat.read(out, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert nb.metadata.papermill.parameters == {"preset": "smoke"}
    assert all(c.execution_count for c in code) and sum(bool(c.outputs) for c in code) >= 3
    assert not any(o.output_type == "error" for c in code for o in c.outputs)


def test_cli_help_lists_experiments_and_explains_every_argument():
    sub = next(a for a in runner._parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == {"run", "script", "reproduce", "site", "list", "results", "data", "bench"}
    for cmd, p in sub.choices.items():
        for a in p._actions: assert a.help, (cmd, a.dest)             # help= on every argument
    r = cli(["run", "--help"], cwd=ROOT)
    assert r.returncode == 0, r.stderr
    for name in runner.list_experiments(ROOT):                        # each experiment, with its title
        assert re.search(rf"^  {name} +\S", r.stdout, re.M), name
    assert re.search(r"^  toeplitz_fft +Toeplitz product by FFT vs dense$", r.stdout, re.M)
    flat = " ".join(r.stdout.split())
    assert f"default {get_config(ROOT).preset!r}" in flat and "-p KEY VALUE, --param KEY VALUE" in flat


def test_list_prints_a_table_with_the_default_preset(tmp_path, monkeypatch, capsys):
    root = make_project(tmp_path, BODY)                               # template default preset: smoke
    monkeypatch.chdir(root)
    monkeypatch.setenv("KATTN_PRESET", "paper")                         # what `kattn run tiny` would use
    assert runner.main(["list"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["experiment", "preset", "parameters"]
    assert lines[1].split() == ["tiny", "paper", "x=2,", "fail=False"]
    assert "KATTN_PRESET" in out.split("\n\n")[-1] and "{" not in out


@pytest.mark.parametrize("args", [["list"], ["data", "list"], ["run", "--help"]])
def test_closed_pipe_exits_quietly(tmp_path, args):
    root = make_project(tmp_path, BODY)
    rd, wr = os.pipe(); os.close(rd)                                  # the reader is gone (`kattn list | head -1`)
    try: r = cli(args, cwd=root, stdout=wr, stderr=subprocess.PIPE, capture_output=False,
                 env={**os.environ, "KATTN_DATA_DIR": str(tmp_path / "data")}, timeout=300)
    finally: os.close(wr)
    # argparse itself swallows the failed write of --help (exit 0); kattn's own output ends with exit status 1
    assert r.returncode == (0 if "--help" in args else 1) and r.stderr == "", r.stderr


def test_smoke_records_are_git_ignored():
    if subprocess.run(["git", "--version"], capture_output=True).returncode: pytest.skip("needs git")
    paths = ["runs/lm/smoke.json", "runs/lm/smoke.ipynb", "runs/lm/smoke__d=32.ipynb", "runs/lm/smoke.failed.ipynb",
             "runs/lm/cpu.json", "runs/lm/cpu__d=32.ipynb", "runs/lm/cpu__tag=smoke.json"]
    r = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], input="\n".join(paths), cwd=ROOT,
                       capture_output=True, text=True)
    assert r.stdout.split() == paths[:4]


def test_success_leaves_other_runs_files_alone(tmp_path):
    root = make_project(tmp_path, BODY)
    out = root / "runs" / "tiny"; out.mkdir(parents=True)
    now = time.time()
    stale, fresh = out / "cpu.failed.ipynb", out / "cpu+99.failed.ipynb"
    other_tmp, other_slug = out / ".tmp-cpu-99.ipynb", out / "cpu__x=5.failed.ipynb"
    for p, t in ((stale, now - 3600), (fresh, now + 3600), (other_tmp, now - 3600), (other_slug, now - 3600)):
        p.write_text("{}"); os.utime(p, (t, t))
    runner.run_experiment("tiny", preset="cpu", root=root)
    # the stale failure of this slug is superseded; a failure written during the run, another run's temporary file
    # and another slug's failure stay
    assert not stale.exists() and fresh.exists() and other_tmp.exists() and other_slug.exists()
    assert (out / "cpu.json").exists()
    with pytest.raises(RuntimeError, match=r"cpu__fail=True\.failed\.ipynb"):
        runner.run_experiment("tiny", preset="cpu", params={"fail": True}, root=root)
    os.utime(out / "cpu__fail=True.failed.ipynb", (now + 3600, now + 3600))   # as if a run still going had written it
    with pytest.raises(RuntimeError, match=rf"cpu__fail=True\+{os.getpid()}\.failed\.ipynb"):
        runner.run_experiment("tiny", preset="cpu", params={"fail": True}, root=root)
    assert (out / "cpu__fail=True.failed.ipynb").exists()


def test_cli_run_is_quiet_about_the_kernel_transport(tmp_path):
    zmq = pytest.importorskip("zmq")
    if not zmq.has("curve"): pytest.skip("pyzmq without CurveZMQ: the kernel's sockets cannot be encrypted")
    root = make_project(tmp_path, BODY)
    r = cli(["run", "tiny", "-p", "x", "4"], cwd=root, timeout=300)
    assert r.returncode == 0 and "wrote" in r.stdout, r.stderr
    assert json.loads((root / "runs" / "tiny" / "smoke__x=4.json").read_text())["metrics"]["y"] == 16
    assert "without encryption" not in r.stderr, r.stderr


SLEEPY = ("import os, pathlib, time\n"
          "pathlib.Path(os.environ['KATTN_TEST_MARK']).write_text(str(os.getpid()))\n"
          "time.sleep(300)")


def alive(pid):
    "Is process `pid` running (a zombie waiting for its parent to reap it is not)?"
    try: return " Z " not in Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1][:3]
    except FileNotFoundError: return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc to see the kernel go")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopped_run_keeps_failed_record_and_no_temp_files(tmp_path, sig):
    root = make_project(tmp_path, SLEEPY)
    mark = tmp_path / "kernel.pid"
    # a background job of a non-interactive shell inherits SIGINT ignored (and Python keeps that); a user's Ctrl-C does not
    p = subprocess.Popen([sys.executable, "-c", CLI.format(["run", "tiny"])], cwd=root, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "KATTN_TEST_MARK": str(mark)},
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    t0 = time.time()
    while not mark.exists():                                          # the kernel is in the template's sleeping cell
        assert p.poll() is None and time.time() - t0 < 120, p.communicate()
        time.sleep(0.1)
    kernel = int(mark.read_text())
    p.send_signal(sig)                                                # to the runner only, as `kill` or a scheduler does
    out, err = p.communicate(timeout=60)
    assert p.returncode == 128 + sig, err
    why = "terminated by SIGTERM" if sig == signal.SIGTERM else "interrupted"
    assert f"kattn run: error: experiment 'tiny' failed ({why}); kept " in err, err
    assert "kattn/runner.py" not in err, err          # no traceback from the runner (the kernel may log its own shutdown)
    runs = root / "runs" / "tiny"
    assert sorted(q.name for q in runs.iterdir()) == ["smoke.failed.ipynb"]   # no record, no temporary file
    assert any("injected-parameters" in c.metadata.get("tags", [])
               for c in nbformat.read(runs / "smoke.failed.ipynb", as_version=4).cells)
    t0 = time.time()
    while alive(kernel) and time.time() - t0 < 30: time.sleep(0.2)
    assert not alive(kernel), "the kernel outlived the run"


# ---- parameters checked before anything runs -------------------------------------------------------------------

DECLARED = ('preset = "smoke"  # [smoke | cpu | paper]\n'
            'd = 64            # [min 1] head dimension\n'
            'repeats = 3       # [int, min 1] timing repeats\n'
            'gamma = 2.0       # [> 0, max 10]\n'
            'device = "auto"   # [auto | cpu | cuda] where to run\n'
            'tag = "a"         # free text, no declaration\n'
            'fail = False')


def declared_project(tmp_path, body=BODY.replace("x * x", "d")):
    root = make_project(tmp_path, body)
    nb = nbformat.read(root / "nbs" / "experiments" / "tiny.ipynb", as_version=4)
    nb.cells[0].source = DECLARED
    nbformat.write(nb, root / "nbs" / "experiments" / "tiny.ipynb")
    return root


@pytest.fixture
def no_kernel(monkeypatch):
    "Fail the test if papermill is asked to execute anything (a check must come before any kernel starts)."
    import papermill
    calls = []
    def refuse(*a, **kw): calls.append(a); raise AssertionError("papermill.execute_notebook was called")
    monkeypatch.setattr(papermill, "execute_notebook", refuse)
    return calls


@pytest.mark.parametrize("key,value,says", [
    ("d", "abc", "parameter 'd' of tiny must be an int >= 1, got 'abc'"),
    ("repeats", "-1", "parameter 'repeats' of tiny must be an int >= 1, got -1"),
    ("repeats", "0", "parameter 'repeats' of tiny must be an int >= 1, got 0"),
    ("repeats", "2.5", "parameter 'repeats' of tiny must be an int >= 1, got 2.5"),
    ("gamma", "0", "parameter 'gamma' of tiny must be a finite number > 0 and <= 10, got 0"),
    ("gamma", "1e999", "parameter 'gamma' of tiny must be a finite number > 0 and <= 10, got inf"),
    ("device", "gpu", "parameter 'device' of tiny must be one of 'auto', 'cpu', 'cuda', got 'gpu'"),
    ("fail", "yes", "parameter 'fail' of tiny must be True or False, got 'yes'"),
    ("tag", "x" * 300, "parameter 'tag' of tiny is 302 characters long as a literal (at most 100)"),
    ("dd", "1", "unknown parameter(s) ['dd'] for experiment 'tiny'; valid parameters:"),
])
def test_bad_parameter_is_one_line_exit_2_before_any_kernel(tmp_path, monkeypatch, capsys, no_kernel, key, value, says):
    root = declared_project(tmp_path)
    monkeypatch.chdir(root)
    assert runner.main(["run", "tiny", "-p", key, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kattn run: error: {says}") and err.count("\n") == 1, err
    assert not no_kernel and not (root / "runs" / "tiny").exists()
    assert runner.main(["script", "tiny", "-p", key, value]) == 2               # the script export checks the same way


def test_overlong_record_name_is_refused(tmp_path, monkeypatch, capsys, no_kernel):
    root = declared_project(tmp_path)
    monkeypatch.chdir(root)
    # each value is allowed alone; together the record name would pass the file-name limit (OSError before)
    args = ["run", "tiny", "-p", "tag", "t" * 90, "-p", "device", "cpu", "-p", "d", "1" * 90, "-p", "gamma", "1.5"]
    assert runner.main(args) == 2
    err = capsys.readouterr().err
    assert "record name for these parameters would be" in err and err.count("\n") == 1, err
    assert not no_kernel


def test_cli_values_follow_the_declared_type(tmp_path):
    root = declared_project(tmp_path)
    assert runner._cli_params("tiny", [("tag", "42"), ("d", "8"), ("gamma", "3")], root) == {"tag": "42", "d": 8, "gamma": 3}
    path, defaults, params = runner._resolve("tiny", None, {"gamma": 3, "repeats": 5}, root)
    assert params == {"gamma": 3.0, "repeats": 5, "preset": "smoke"} and type(params["gamma"]) is float


def test_real_templates_refuse_the_reported_values_without_papermill():
    # `kattn run toeplitz_fft -p d abc` ran the kernel for 10 s and ended in a traceback; -p repeats 0 / -1 wrote NaN
    code = ("import sys; from kattn.runner import main\n"
            "codes = [main(['run', 'toeplitz_fft', '-p', k, v]) for k, v in (('d', 'abc'), ('repeats', '0'), ('repeats', '-1'))]\n"
            "print(codes, 'papermill' in sys.modules, 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.stdout.split("\n")[0] == "[2, 2, 2] False False", (r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 3 and lines[0].startswith("kattn run: error: parameter 'd' of toeplitz_fft must be an int >= 1"), lines
    assert all("parameter 'repeats' of toeplitz_fft must be an int >= 1" in l for l in lines[1:]), lines


@pytest.mark.parametrize("default,comment,want", [
    (5, "[int, min 1] timing repeats", {"kind": "int", "choices": None, "bounds": (("min", 1.0),), "spec": "int, min 1", "help": "timing repeats"}),
    (5, "[min 1]", {"kind": "int", "bounds": (("min", 1.0),)}),
    (0.5, "[> 0, < 1] a fraction", {"kind": "float", "bounds": ((">", 0.0), ("<", 1.0)), "help": "a fraction"}),
    (2, "[float min 0]", {"kind": "float", "bounds": (("min", 0.0),)}),
    (2.0, "[min -1.5, max 1e3]", {"kind": "float", "bounds": (("min", -1.5), ("max", 1000.0))}),
    ("cpu", "[smoke | cpu | paper]", {"kind": "str", "choices": ("smoke", "cpu", "paper"), "bounds": ()}),
    ("", '["" | de-en | en-de]', {"kind": "str", "choices": ("", "de-en", "en-de")}),
    (["a"], "[a | b] items", {"kind": "list", "choices": ("a", "b"), "help": "items"}),
    (3, "plain prose | with a bar", {"kind": "int", "choices": None, "bounds": (), "spec": "", "help": "plain prose | with a bar"}),
    (True, "", {"kind": "bool", "choices": None, "spec": ""}),
    (None, "[]", {"kind": None, "choices": None}),
])
def test_declaration_parser(default, comment, want):
    got = runner.parse_declaration(default, comment)
    assert {k: got[k] for k in want} == want


@pytest.mark.parametrize("default,comment,says", [
    (5, "[str]", "does not fit the default"),
    ("a", "[min 1]", "a range needs a number"),
    (5, "[min x]", "not a range"),
    (5, "[>= 1]", "stops papermill from reading the line"),
])
def test_declaration_parser_refuses_bad_declarations(default, comment, says):
    with pytest.raises(ValueError, match=says): runner.parse_declaration(default, comment)


def test_template_default_must_satisfy_its_declaration(tmp_path):
    root = declared_project(tmp_path)
    nb = nbformat.read(root / "nbs" / "experiments" / "tiny.ipynb", as_version=4)
    nb.cells[0].source = 'preset = "smoke"\nrepeats = 0  # [min 1]'
    nbformat.write(nb, root / "nbs" / "experiments" / "tiny.ipynb")
    with pytest.raises(ValueError, match=r"the default of parameter 'repeats' of tiny must be an int >= 1, got 0"):
        runner.notebook_parameters(root / "nbs" / "experiments" / "tiny.ipynb")


def test_every_template_declares_its_parameters():
    for name in runner.list_experiments(ROOT):
        decl = runner.parameter_declarations(ROOT / "nbs" / "experiments" / f"{name}.ipynb")   # defaults satisfy them
        assert decl["preset"]["choices"] == tuple(runner.PRESETS), name
        for key in ("seed", "d", "repeats", "nproc", "heads", "m_main", "grid"):
            if key in decl: assert decl[key]["bounds"], (name, key)
    assert runner.parameter_declarations(ROOT / "nbs" / "experiments" / "speed.ipynb")["device"]["choices"] == ("auto", "cpu", "cuda")


def test_save_metrics_refuses_nan_and_infinity_naming_the_metric(monkeypatch, tmp_path):
    import numpy as np, torch
    monkeypatch.setenv("KATTN_METRICS_PATH", str(tmp_path / "m.json"))
    for bad, where in (({"fft": {"median_s": float("nan")}}, "metrics['fft']['median_s'] is nan"),
                       ({"t": [1.0, np.float64("inf")]}, "metrics['t'][1] is inf"),
                       ({"x": torch.tensor([0.0, -float("inf")])}, "metrics['x'][1] is -inf")):
        with pytest.raises(ValueError, match=re.escape(where)): runner.save_metrics(bad)
        assert not (tmp_path / "m.json").exists()
    assert runner.save_metrics({"ok": None, "y": 1.5}) == {"ok": None, "y": 1.5}
    assert "NaN" not in (tmp_path / "m.json").read_text()


def test_records_turns_missing_values_into_none():
    import pandas as pd
    df = pd.DataFrame([{"case": "a", "t": 1.5}, {"case": "b", "t": 2.0, "m": 32}])
    assert runner.records(df) == [{"case": "a", "t": 1.5, "m": None}, {"case": "b", "t": 2.0, "m": 32.0}]
    assert runner.save_metrics({"rows": runner.records(df)})["rows"][0]["m"] is None


# ---- progress on the terminal, suite selection and resume ------------------------------------------------------

REPORTS = ("import time\n"
           "from kattn._progress import report\n"
           "from kattn.runner import save_metrics\n"
           "for i in range(1, 4): report('train', i, 3, loss=1.0 / i, every=0); print('step', i)\n"
           "save_metrics({'y': x})")


class Recorder(runner._Status):
    "A status display that keeps every kernel report and cell start it saw."
    def __init__(self):
        super().__init__(stream=open(os.devnull, "w"), live=False); self.events, self.cells = [], []
    def poll(self):
        evs = super().poll(); self.events += evs; return evs
    def on_cell(self, i, n): super().on_cell(i, n); self.cells.append((i, n))


def test_progress_reaches_the_runner_and_not_the_record(tmp_path):
    root = make_project(tmp_path, REPORTS)
    st = Recorder()
    try: rec = runner.run_experiment("tiny", root=root, progress=st)
    finally: st.close()
    # three code cells (the template's parameters, the injected ones, the body), each seen as it started
    assert st.cells == [(i, 3) for i in range(1, 4)], st.cells
    assert [(e["task"], e["done"], e["total"], e["loss"]) for e in st.events] == [("train", i, 3, str(1.0 / i)) for i in range(1, 4)]
    nb = nbformat.read(root / "runs" / "tiny" / f"{rec['slug']}.ipynb", as_version=4)
    outputs = json.dumps([c.outputs for c in nb.cells if c.cell_type == "code"])
    assert "step 3" in outputs and "loss" not in outputs and "train" not in outputs   # the prints are recorded, the reports not
    assert sorted(p.name for p in (root / "runs" / "tiny").iterdir()) == ["smoke.ipynb", "smoke.json"]   # no progress file left
    assert runner.PROGRESS_ENV not in os.environ


def test_cli_run_prints_plain_progress_when_stderr_is_not_a_terminal(tmp_path):
    root = make_project(tmp_path, "import time; time.sleep(2)\n" + REPORTS)
    r = cli(["run", "tiny"], cwd=root, timeout=300)
    assert r.returncode == 0 and "wrote" in r.stdout, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.startswith("tiny/smoke ")]
    assert lines and "\r" not in r.stderr and "\x1b" not in r.stderr, r.stderr   # plain lines, no live redraws
    assert re.fullmatch(r"tiny/smoke \d+:\d\d( cell \d/3.*)?", lines[0]), lines


def fake_suite(monkeypatch, tmp_path, stop_at=None, fail=()):
    "A fast suite of four entries whose runs only record their calls; entry `stop_at` is interrupted, those in `fail` fail."
    (tmp_path / "settings.ini").write_text("[kattn]\nruns_dir = runs\npreset = cpu\nseed = 0\n")
    suite = [("a", {}), ("b", {}), ("c", {"k": 1}), ("c", {"k": 2})]
    monkeypatch.setattr(runner, "SUITE", suite)
    (tmp_path / "nbs" / "experiments").mkdir(parents=True, exist_ok=True)
    for name in "abc": nbformat.write(nbformat.v4.new_notebook(), tmp_path / "nbs" / "experiments" / f"{name}.ipynb")
    calls = []
    def run(name, preset, params, root=None, progress=None):
        calls.append((name, params))
        if (name, params) == stop_at:
            raise RuntimeError("experiment failed (interrupted)") from KeyboardInterrupt()
        if (name, params) in fail: raise RuntimeError(f"experiment {name!r} failed (boom)")
        return {}
    monkeypatch.setattr(runner, "run_experiment", run)
    return calls


def test_reproduce_resumes_an_interrupted_suite_without_redoing_finished_entries(tmp_path, monkeypatch):
    calls = fake_suite(monkeypatch, tmp_path, stop_at=("c", {"k": 1}))
    state = tmp_path / "runs" / runner.STATE_FILE
    with pytest.raises(RuntimeError, match="interrupted"): runner.reproduce(root=tmp_path, site=False)
    assert calls == [("a", {}), ("b", {}), ("c", {"k": 1})]
    s = json.loads(state.read_text())
    assert s["preset"] == "cpu" and s["finished"] == [["a", {}], ["b", {}]] and len(s["entries"]) == 4
    calls = fake_suite(monkeypatch, tmp_path)                                  # the same suite, not interrupted this time
    assert runner.reproduce(root=tmp_path, site=False, resume=True) == []
    assert calls == [("c", {"k": 1}), ("c", {"k": 2})]                      # a and b are not run again
    assert not state.exists()                                                # the attempt finished every entry
    with pytest.raises(ValueError, match="nothing to resume"): runner.reproduce(root=tmp_path, site=False, resume=True)


def test_reproduce_resume_retries_failures_and_keeps_its_selection(tmp_path, monkeypatch):
    calls = fake_suite(monkeypatch, tmp_path, fail=[("b", {})])
    failed = runner.reproduce(root=tmp_path, site=False, skip="a")
    assert [n for n, _ in failed] == ["b"] and calls == [("b", {}), ("c", {"k": 1}), ("c", {"k": 2})]
    calls = fake_suite(monkeypatch, tmp_path)
    with pytest.raises(ValueError, match="leave out --only and --skip"): runner.reproduce(root=tmp_path, site=False, resume=True, only="b")
    with pytest.raises(ValueError, match="at preset 'cpu'; leave out --preset paper"):
        runner.reproduce("paper", root=tmp_path, site=False, resume=True)
    assert runner.reproduce(root=tmp_path, site=False, resume=True) == [] and calls == [("b", {})]   # a stays skipped


def test_reproduce_only_and_skip_validate_names(tmp_path, monkeypatch, capsys):
    calls = fake_suite(monkeypatch, tmp_path)
    assert runner.reproduce(root=tmp_path, site=False, only="c") == [] and calls == [("c", {"k": 1}), ("c", {"k": 2})]
    calls.clear()
    assert runner.reproduce(root=tmp_path, site=False, only=["a", "c"], skip="c") == [] and calls == [("a", {})]
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert runner.main(["reproduce", "--no-site", "--only", "a,nope"]) == 2
    assert capsys.readouterr().err == "kattn reproduce: error: --only: not in the suite: nope; valid: a, b, c\n"
    assert runner.main(["reproduce", "--no-site", "--skip", "zz"]) == 2
    assert "--skip: not in the suite: zz; valid: a, b, c" in capsys.readouterr().err


def test_reproduce_only_accepts_every_real_suite_name():
    assert runner.select_suite(only="mt") == [("mt", {}), ("mt", {"study": "zheng"})]
    assert len(runner.select_suite(skip="speed,lm")) == len(runner.SUITE) - 2
    valid = ", ".join(sorted({n for n, _ in runner.SUITE}))
    with pytest.raises(ValueError, match=re.escape(f"--only: not in the suite: spede; valid: {valid}") + "$"): runner.select_suite(only="spede")


def test_suite_status_line_uses_the_recorded_wall_times(tmp_path, monkeypatch):
    fake_suite(monkeypatch, tmp_path)
    for name, slug, wall in (("a", "cpu", 100.0), ("b", "cpu", 300.0), ("c", "cpu__k=1", 50.0)):
        (tmp_path / "runs" / name).mkdir(parents=True, exist_ok=True)
        (tmp_path / "runs" / name / f"{slug}.json").write_text(json.dumps({"wall_time_s": wall}))
    seen = []
    class St(runner._Status):
        def say(self, text, file=None): pass
    st = St(io.StringIO(), live=False)
    monkeypatch.setattr(runner, "run_experiment", lambda name, preset, params, root=None, progress=None: seen.append(dict(progress.suite)))
    runner.reproduce(root=tmp_path, site=False, progress=st)
    total = 100 + 300 + 50 + (100 + 300 + 50) / 3                      # c k=2 has no record: the mean of the others
    assert [(s["i"], s["before"], s["expected"]) for s in seen] == [(1, 0, 100), (2, 100, 300), (3, 400, 50), (4, 450, 150)]
    assert all(s["n"] == 4 and s["total"] == total for s in seen)


def test_reproduce_state_file_is_git_ignored():
    if subprocess.run(["git", "--version"], capture_output=True).returncode: pytest.skip("needs git")
    r = subprocess.run(["git", "check-ignore", "--no-index", "runs/.reproduce-state.json", "runs/.reproduce-state.json.12.tmp",
                        "runs/lm/.tmp-cpu-12.progress"], cwd=ROOT, capture_output=True, text=True)
    assert len(r.stdout.split()) == 3, r


def test_papermill_reads_every_declared_parameter(caplog):
    # a second '=' on a parameters line (as in '>= 1') makes papermill skip the line and call the parameter unknown
    import papermill as pm
    for name in runner.list_experiments(ROOT):
        path = ROOT / "nbs" / "experiments" / f"{name}.ipynb"
        theirs = pm.inspect_notebook(str(path))
        ours = runner.parameter_declarations(path)
        assert list(theirs) == list(ours), name
        assert {k: runner.parse_value(v["default"]) for k, v in theirs.items()} == {k: d["default"] for k, d in ours.items()}, name
    assert "Unable to parse" not in caplog.text


def test_trainer_and_benchmarks_report_through_the_side_channel(tmp_path, monkeypatch):
    import torch
    from kattn import _progress
    from kattn.bench import time_cases
    from kattn.models import CausalLM, LMConfig
    from kattn.train import CopyTask, Trainer, TrainConfig, lm_loss
    path = tmp_path / "progress.jsonl"
    monkeypatch.setenv(_progress.ENV, str(path)); monkeypatch.setattr(_progress, "_last", {})
    torch.manual_seed(0)
    model = CausalLM(LMConfig(vocab_size=16, d_model=16, num_heads=2, num_layers=1, d_ff=32, max_len=18, attention="softmax", attention_options={}))
    cfg = TrainConfig(max_steps=3, batch_size=4, warmup_steps=1, log_every=0, eval_every=0, progress=False)
    Trainer(model, cfg, CopyTask(16, k=8), loss_fn=lm_loss).fit()
    time_cases({"a": lambda: None, "b": lambda: None}, repeats=2)
    evs, _ = _progress.follow(path)
    assert [(e["task"], e["done"], e["total"]) for e in evs] == [("train", 1, 3), ("train", 3, 3), ("bench", 1, 2), ("bench", 2, 2)]
    assert float(evs[0]["loss"]) > 0 and evs[2]["mode"] == "fwd"
