"""The README's "Use the library" section runs as written: each python block is executed in a fresh interpreter and
what it prints matches the `# -> ...` line below its print."""
import math, re, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NUM = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def section_blocks(title="## Use the library"):
    text = (ROOT / "README.md").read_text()
    assert title + "\n" in text, f"README.md has no '{title}' section"
    body = text.split(title + "\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, re.S)


def same(expected: str, got: str) -> bool:
    "Integers and zero exactly; one in scientific notation is a round-off bound (up to 10x); others within 5 %."
    if "e" in expected: return 0 <= float(got) <= 10 * float(expected)
    e, g = float(expected), float(got)
    return e == g if e == 0 or "." not in expected else math.isclose(e, g, rel_tol=0.05, abs_tol=0.01)


BLOCKS = section_blocks()


def test_section_has_the_layer_and_the_functional_op():
    assert len(BLOCKS) == 2
    assert 'attention="nprf_rpe"' in BLOCKS[0] and "rpe=True" in BLOCKS[0]
    assert "kernelized_attention(" in BLOCKS[1] and "rpe_bias=" in BLOCKS[1]


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_example_runs_and_prints_what_it_says(i, tmp_path):
    code = BLOCKS[i]
    expected = re.findall(r"^# -> (.*)$", code, re.M)
    assert expected, "each example ends with a '# -> output' line"
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    got = r.stdout.strip().splitlines()
    assert len(got) == len(expected), (got, expected)
    for e, g in zip(expected, got):
        assert NUM.sub("#", e) == NUM.sub("#", g), (e, g)            # the same words around the numbers
        pairs = list(zip(NUM.findall(e), NUM.findall(g)))
        assert pairs and all(same(a, b) for a, b in pairs), (e, g)
