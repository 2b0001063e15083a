"kattn.config: settings.ini + KATTN_* overrides + clear errors."
from pathlib import Path
import pytest
from kattn.config import get_config, find_root


def write(d, text):
    (d / "settings.ini").write_text(text)


def test_project_settings_file_is_valid():
    root = Path(__file__).resolve().parents[1]
    c = get_config(root, env={})
    assert c.runs_dir == root / "runs" and c.preset == "cpu" and c.seed == 0
    assert c.data_dir == Path("~/.cache/kattn").expanduser()


def test_file_then_env_override(tmp_path):
    write(tmp_path, "[kattn]\nruns_dir = out\npreset = smoke\nseed = 7\ndata_dir = ~/kd\n")
    c = get_config(tmp_path, env={})
    assert (c.runs_dir, c.preset, c.seed, c.data_dir) == (tmp_path / "out", "smoke", 7, Path("~/kd").expanduser())
    c = get_config(tmp_path, env={"KATTN_DATA_DIR": "/x/y", "KATTN_RUNS_DIR": "r2", "KATTN_PRESET": "paper",
                                  "KATTN_SEED": "11"})
    assert (c.data_dir, c.runs_dir, c.preset, c.seed) == (Path("/x/y"), tmp_path / "r2", "paper", 11)


@pytest.mark.parametrize("env,msg", [
    ({"KATTN_SEED": "abc"}, "seed (environment variable KATTN_SEED)"),
    ({"KATTN_SEED": "-3"}, "seed"),
    ({"KATTN_PRESET": "fast"}, "preset (environment variable KATTN_PRESET) must be one of"),
    ({"KATTN_RUNS_DIR": " "}, "runs_dir"),
])
def test_invalid_values_name_the_key(tmp_path, env, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        get_config(tmp_path, env=env)


def test_invalid_file_value(tmp_path):
    write(tmp_path, "[kattn]\npreset = turbo\n")
    with pytest.raises(ValueError, match=r"preset \(settings.ini \[kattn\] preset\)"):
        get_config(tmp_path, env={})


def test_find_root_walks_up(tmp_path):
    write(tmp_path, "[kattn]\nseed = 1\n")
    sub = tmp_path / "a" / "b"; sub.mkdir(parents=True)
    assert find_root(sub) == tmp_path.resolve()
