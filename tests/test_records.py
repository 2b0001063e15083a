"""Committed records are clean: no progress-bar output, no warnings, no machine paths, no oversized outputs, no errors.

The site renders the records' stored outputs as they are, so whatever a run printed to the notebook is published.
Bounds, measured on the clean records when this test was written: at most 45 outputs in a notebook (speed), at most
9.4 KB of text in one output, at most 250 KB of base64 in one image, notebooks of at most 500 KB."""
import json, re, subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_OUTPUTS = 200              # outputs in one notebook
MAX_TEXT = 50_000              # characters of text in one output
MAX_IMAGE = 1_000_000          # base64 characters of one image
MAX_NOTEBOOK = 2_000_000       # characters of the whole notebook file

BAR = re.compile(r"\r|\d\s?(?:it/s|s/it)\b|\?it/s|%\|")                       # tqdm: carriage returns, rates, '45%|###'
WARNING = re.compile(r"^.*\b\w*Warning:.*$", re.M)                              # 'UserWarning: ...', 'TqdmWarning: ...'
MACHINE_PATH = re.compile(r"(?:/work/|/root/|/home/|/Users/|site-packages)[^\s\"']*")


def committed(pattern):
    "Record files git tracks under runs/ (outside a git checkout: every file but smoke and failed records)."
    try:
        r = subprocess.run(["git", "ls-files", "-z", "--", "runs"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        files = [f for f in r.stdout.split("\0") if f] if r.returncode == 0 else None
    except OSError: files = None
    if files is None:
        files = [p.relative_to(ROOT).as_posix() for p in (ROOT / "runs").glob("*/*")
                 if not re.search(r"(^|/)smoke(__|\.)|\.failed\.|(^|/)\.tmp-", p.name)]
    return sorted(f for f in files if re.fullmatch(pattern, f) and (ROOT / f).is_file())


NOTEBOOKS = committed(r"runs/[^/]+/[^/]+\.ipynb")
RECORDS = NOTEBOOKS + committed(r"runs/[^/]+/[^/]+\.json")


def output_text(o) -> str:
    "The text an output shows: stream text, text/* and JSON data, and an error's traceback."
    parts = [o.get("text", "")] + [v for k, v in (o.get("data") or {}).items() if k.startswith("text/") or k.endswith("json")]
    parts += o.get("traceback", [])
    return "".join(p if isinstance(p, str) else "".join(p) if isinstance(p, list) else json.dumps(p) for p in parts)


def outputs(path):
    nb = json.loads((ROOT / path).read_text(encoding="utf-8"))
    return [(i, o) for i, c in enumerate(nb["cells"]) for o in c.get("outputs") or []]


def test_there_are_committed_records():
    assert len(NOTEBOOKS) >= 10 and "runs/lm/cpu.ipynb" in NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_no_progress_bars_warnings_or_errors(path):
    problems = []
    for i, o in outputs(path):
        t = output_text(o)
        if o.get("output_type") == "error": problems.append(f"cell {i}: error output {o.get('ename')}: {o.get('evalue', '')[:100]}")
        if m := BAR.search(t): problems.append(f"cell {i}: progress-bar output {t[max(0, m.start() - 40):m.end() + 20]!r}")
        problems += [f"cell {i}: warning {w.strip()[:160]!r}" for w in WARNING.findall(t)]
    assert not problems, f"{path} (re-run it; runs set TQDM_DISABLE):\n" + "\n".join(problems[:20])


@pytest.mark.parametrize("path", RECORDS)
def test_no_machine_paths(path):
    hits = sorted(set(MACHINE_PATH.findall((ROOT / path).read_text(encoding="utf-8"))))
    assert not hits, f"{path} holds machine paths: {hits[:10]}"


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_no_oversized_outputs(path):
    outs = outputs(path)
    assert len(outs) <= MAX_OUTPUTS, f"{path}: {len(outs)} outputs (at most {MAX_OUTPUTS})"
    for i, o in outs:
        assert len(output_text(o)) <= MAX_TEXT, f"{path} cell {i}: {len(output_text(o))} characters of text (at most {MAX_TEXT})"
        for k, v in (o.get("data") or {}).items():
            if k.startswith("image/"):
                n = len(v if isinstance(v, str) else "".join(v))
                assert n <= MAX_IMAGE, f"{path} cell {i}: a {k} of {n} characters (at most {MAX_IMAGE})"
    size = len((ROOT / path).read_text(encoding="utf-8"))
    assert size <= MAX_NOTEBOOK, f"{path}: {size} characters (at most {MAX_NOTEBOOK})"


@pytest.mark.parametrize("text,bar,warning,machine", [
    ("\rfig 1a:  20%|██        | 1/5 [00:04<00:18,  4.71s/it]", True, False, False),
    ("methods:   0%|          | 0/4 [00:00<?, ?it/s]", True, False, False),
    ("100 steps at 12.5 it/s", True, False, False),
    ("/x/lib/python3.11/site-packages/tqdm/auto.py:21: TqdmWarning: IProgress not found.", False, True, True),
    ("UserWarning: converting", False, True, False),
    ("saved to /home/u/x.png and /root/y", False, False, True),
    ("ratio 45% | 2 s; speedup 3.1x; a warning was not raised; 2/3 runs", False, False, False),
])
def test_the_scan_patterns(text, bar, warning, machine):
    assert bool(BAR.search(text)) == bar and bool(WARNING.search(text)) == warning and bool(MACHINE_PATH.search(text)) == machine
