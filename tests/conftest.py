"Shared test helpers; and the dense/FFT crossover never comes from (or goes to) the user's real cache."
import pytest
import torch


def relative_error(out, ref) -> float:
    "||out - ref|| / ||ref||, in float64."
    ref = ref.detach().double()
    return float((out.detach().double() - ref).norm() / ref.norm())


def _assert_rel_close(out, ref, tol):
    "out (e.g. under bf16 autocast) matches the float64 reference to relative error < tol; a zero output cannot pass."
    assert 0 < tol < 1 and ref.detach().double().norm() > 0, "the criterion must be able to fail"
    assert relative_error(torch.zeros_like(out), ref) >= tol            # = 1: an all-zero output fails
    assert torch.isfinite(out).all()
    err = relative_error(out, ref)
    assert err < tol, f"relative error {err:.3g} >= {tol}"
    return err


@pytest.fixture
def assert_rel_close():
    "assert_rel_close(out, ref, tol): relative error of out against the float64 reference ref below tol (tol < 1)."
    return _assert_rel_close


@pytest.fixture(autouse=True)
def _isolated_calibration(tmp_path_factory, monkeypatch):
    "Point the stored RPE crossover at an empty temporary cache, and forget what this process read before."
    from kattn import toeplitz
    monkeypatch.setenv("KATTN_CACHE_DIR", str(tmp_path_factory.mktemp("kattn_cache")))
    toeplitz._STORED.clear()
    yield
    toeplitz._STORED.clear()
