"`import kattn`: quick (no submodule, no torch), and the package lists and reaches every submodule."
import subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def probe(code):
    "Run `code` in a fresh interpreter (so nothing is imported yet) and return its stdout lines."
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def test_import_kattn_loads_nothing_else_and_lists_submodules():
    loaded, all_, dir_ = probe("import sys, kattn\n"
                               "print(sorted(m for m in sys.modules if m.startswith('kattn.') or m == 'torch'))\n"
                               "print(sorted(kattn.__all__)); print(dir(kattn))")
    assert loaded == "[]"
    pkg = ROOT / "kattn"
    on_disk = {p.stem for p in pkg.glob("[!_]*.py")} | {p.parent.name for p in pkg.glob("[!_]*/__init__.py")}
    assert eval(all_) == sorted(on_disk)
    assert set(on_disk) <= set(eval(dir_)) and "__version__" in eval(dir_)


def test_submodules_load_on_first_use():
    out = probe("import sys, kattn\n"
                "print('kattn.toeplitz' in sys.modules)\n"
                "print(kattn.toeplitz.__name__, 'kattn.toeplitz' in sys.modules, kattn.toeplitz is sys.modules['kattn.toeplitz'])\n"
                "from kattn import *\nprint(sorted(k for k, v in globals().items() if type(v) is type(sys) and k not in ('sys', 'kattn') and k[0] != '_'))\n"
                "try: kattn.no_such_module\nexcept AttributeError as e: print(e)")
    assert out[0] == "False" and out[1] == "kattn.toeplitz True True"
    import kattn
    assert eval(out[2]) == sorted(kattn.__all__)
    assert out[3] == "module 'kattn' has no attribute 'no_such_module'"
