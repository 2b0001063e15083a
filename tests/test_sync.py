"`make sync-check` (part of `make test`) fails when kattn/ and the notebooks disagree."
import shutil, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)


def clone(tmp_path):
    if shutil.which("git") is None or shutil.which("make") is None: pytest.skip("needs git and make")
    d = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(d)], check=True)
    return d


def sync_check(d):
    # -o: never rebuild the venv stamp; use the venv running these tests
    stamp = VENV / ".kattn-installed"
    return subprocess.run(["make", "-s", "-o", str(stamp), "sync-check", f"VENV={VENV}"], cwd=d,
                          capture_output=True, text=True)


def test_sync_check_passes_on_clean_clone_and_fails_on_hand_edit(tmp_path):
    d = clone(tmp_path)
    ok = sync_check(d)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "library and notebooks agree" in ok.stdout
    lib = d / "kattn" / "toeplitz.py"
    lib.write_text(lib.read_text() + "\nHAND_EDIT = 1\n")   # a hand edit of the library, committed
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["commit", "-qam", "hand edit"], cwd=d, check=True)
    bad = sync_check(d)
    assert bad.returncode != 0
    assert "the library and the notebooks disagree" in bad.stdout + bad.stderr


def test_sync_check_fails_when_notebook_changed_without_export(tmp_path):
    import json
    d = clone(tmp_path)
    nbp = d / "nbs" / "00_toeplitz.ipynb"
    nb = json.loads(nbp.read_text())
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code" and "def fft_length" in "".join(c["source"]))
    cell["source"] = "".join(cell["source"]).replace("A fast FFT length", "A quick FFT length")
    nbp.write_text(json.dumps(nb, indent=1) + "\n")
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "nb only"], cwd=d, check=True)
    bad = sync_check(d)
    assert bad.returncode != 0 and "kattn/toeplitz.py" in bad.stdout
