"Shared test setup: the dense/FFT crossover never comes from (or goes to) the user's real cache."
import pytest


@pytest.fixture(autouse=True)
def _isolated_calibration(tmp_path_factory, monkeypatch):
    "Point the stored RPE crossover at an empty temporary cache, and forget what this process read before."
    from kattn import toeplitz
    monkeypatch.setenv("KATTN_CACHE_DIR", str(tmp_path_factory.mktemp("kattn_cache")))
    toeplitz._STORED.clear()
    yield
    toeplitz._STORED.clear()
