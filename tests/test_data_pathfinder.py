"Pathfinder: every label confirmed by a flood fill on the image, class balance, determinism, release folders."
import numpy as np
import pytest
from kattn.data import pathfinder as P


@pytest.fixture(scope="module")
def hard32():
    return P.generate(48, 32, "hard", seed=11, return_markers=True)


def test_flood_fill_confirms_every_label(hard32):
    X, y, M = hard32
    assert X.dtype == np.uint8 and X.shape == (48, 32, 32)
    assert [P.flood_fill_label(x, m) for x, m in zip(X, M)] == list(y)


@pytest.mark.parametrize("size,difficulty,n", [(32, "easy", 32), (32, "intermediate", 24), (128, "hard", 4)])
def test_flood_fill_other_levels(size, difficulty, n):
    X, y, M = P.generate(n, size, difficulty, seed=2, return_markers=True)
    assert X.shape == (n, size, size)
    assert [P.flood_fill_label(x, m) for x, m in zip(X, M)] == list(y)


def test_class_balance():
    # labels ~ Bernoulli(1/2): 200 images, mean within 4 standard errors (0.035) of 0.5
    _, y = P.generate(200, 32, "easy", seed=5)
    assert abs(y.mean() - 0.5) < 4 * 0.5 / np.sqrt(200), y.mean()


def test_difficulty_means_longer_contours():
    # the two targets have contour_length dashes each; hard images carry more contour pixels than easy ones
    Xe, _ = P.generate(24, 32, "easy", seed=1); Xh, _ = P.generate(24, 32, "hard", seed=1)
    assert (Xh > 0).mean() > 1.2 * (Xe > 0).mean()


def test_contours_are_separated(hard32):
    # markers sit on non-zero pixels; label-0 images: the two markers' components are disjoint and non-adjacent
    X, y, M = hard32
    for x, m, l in zip(X, M, y):
        a, b = [tuple(int(round(c)) for c in mk) for mk in m]
        assert x[a] > 0 and x[b] > 0
        if l == 0:
            ca = P.flood_fill(x > 0, a)
            grown = P._dilate(ca, 1)[1:-1, 1:-1]
            assert not (grown & P.flood_fill(x > 0, b)).any()


def test_deterministic_slices(hard32):
    X, y, _ = hard32
    X2, y2 = P.generate(5, 32, "hard", seed=11, start=40)
    np.testing.assert_array_equal(X2, X[40:45]); np.testing.assert_array_equal(y2, y[40:45])
    X3, _ = P.generate(5, 32, "hard", seed=12)
    assert not np.array_equal(X3, X[:5])


def test_release_roundtrip_text_and_npy_metadata(tmp_path):
    top = P.write_release(tmp_path, 5, 32, "hard", seed=4, per_folder=3)
    assert top == tmp_path / "pathfinder32" / "curv_contour_length_14"
    assert (top / "imgs" / "1" / "sample_3.png").is_file()
    X, y = P.read_release(top)
    Xg, yg = P.generate(5, 32, "hard", seed=4)
    np.testing.assert_array_equal(X, Xg); np.testing.assert_array_equal(y, yg)
    # the generator's own np.save metadata is read too; an all-black image is skipped
    rows = [ln.split() for f in sorted((top / "metadata").glob("*.npy")) for ln in f.read_text().splitlines()]
    for f in (top / "metadata").glob("*.npy"): f.unlink()
    np.save(top / "metadata" / "0.npy", np.array(rows))
    from PIL import Image
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(top / "imgs" / "0" / "sample_0.png")
    X2, y2 = P.read_release(top)
    np.testing.assert_array_equal(X2, Xg[1:]); np.testing.assert_array_equal(y2, yg[1:])


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="difficulty"): P.get_spec(32, "medium")
    with pytest.raises(FileNotFoundError, match="metadata"): P.read_release(tmp_path / "pathfinder32" / "curv_baseline")


def test_workers_and_cache_do_not_change_data(tmp_path, hard32):
    X, y, _ = hard32
    Xw, yw = P.generate(12, 32, "hard", seed=11, num_workers=2)
    np.testing.assert_array_equal(Xw, X[:12]); np.testing.assert_array_equal(yw, y[:12])
    Xc, yc = P.cached(6, 32, "hard", seed=11, root=tmp_path)
    assert (tmp_path / "pathfinder-gen" / "32-hard-s11-n6.npz").is_file()
    Xc2, _ = P.cached(6, 32, "hard", seed=11, root=tmp_path)
    np.testing.assert_array_equal(Xc, X[:6]); np.testing.assert_array_equal(Xc2, X[:6])


def test_truncated_npy_metadata_names_file(tmp_path):
    top = P.write_release(tmp_path, 3, 32, "hard", seed=4, per_folder=3)
    rows = [ln.split() for f in sorted((top / "metadata").glob("*.npy")) for ln in f.read_text().splitlines()]
    for f in (top / "metadata").glob("*.npy"): f.unlink()
    np.save(top / "metadata" / "0.npy", np.array(rows))
    f = top / "metadata" / "0.npy"; f.write_bytes(f.read_bytes()[:-20])
    with pytest.raises(ValueError, match=r"0\.npy"): P.read_release(top)
