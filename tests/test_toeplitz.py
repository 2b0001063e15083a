"Toeplitz/FFT product against the dense reference (float64), gradients, causality, dtypes, errors."
import pytest, torch
from kattn.toeplitz import (toeplitz_matmul, naive_toeplitz_matmul, naive_toeplitz_matrix, fft_length,
                            lowrank_toeplitz_matmul, naive_lowrank_toeplitz_matmul, toeplitz_settings, settings)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 127, 1000])
@pytest.mark.parametrize("causal", [False, True])
def test_matches_dense_float64(n, causal):
    g = torch.Generator().manual_seed(n)
    c = torch.randn(3, 2, 2 * n - 1, dtype=torch.float64, generator=g)
    x = torch.randn(3, 2, n, 4, dtype=torch.float64, generator=g)
    err = (toeplitz_matmul(c, x, causal) - naive_toeplitz_matmul(c, x, causal)).abs().max().item()
    assert err <= 1e-12


def test_dense_reference_against_loops():
    g = torch.Generator().manual_seed(1)
    n = 6
    c = torch.randn(2 * n - 1, dtype=torch.float64, generator=g)
    x = torch.randn(n, 3, dtype=torch.float64, generator=g)
    for causal in (False, True):
        want = torch.stack([sum((c[(j - i) + n - 1] * x[j] for j in range(n) if (j <= i or not causal)),
                                torch.zeros(3, dtype=torch.float64)) for i in range(n)])
        assert torch.allclose(naive_toeplitz_matmul(c, x, causal), want, atol=1e-14)


@pytest.mark.parametrize("n,causal", [(1, False), (2, True), (7, False), (64, True), (127, False), (1000, True)])
def test_gradients_match_dense(n, causal):
    g = torch.Generator().manual_seed(2 + n)
    c = torch.randn(2, 2 * n - 1, dtype=torch.float64, generator=g, requires_grad=True)
    x = torch.randn(2, n, 3, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(2, n, 3, dtype=torch.float64, generator=g)
    got = torch.autograd.grad((toeplitz_matmul(c, x, causal) * w).sum(), (c, x))
    ref = torch.autograd.grad((naive_toeplitz_matmul(c, x, causal) * w).sum(), (c, x))
    for a, b in zip(got, ref):
        assert (a - b).abs().max().item() <= 1e-10 * max(1.0, b.abs().max().item())


def test_gradcheck():
    g = torch.Generator().manual_seed(3)
    c = torch.randn(2, 9, dtype=torch.float64, generator=g, requires_grad=True)
    x = torch.randn(2, 5, 2, dtype=torch.float64, generator=g, requires_grad=True)
    for causal in (False, True):
        assert torch.autograd.gradcheck(lambda c, x: toeplitz_matmul(c, x, causal), (c, x))


def test_broadcast_one_kernel_per_head():
    g = torch.Generator().manual_seed(4)
    B, H, n, d = 2, 3, 11, 4
    c = torch.randn(H, 2 * n - 1, dtype=torch.float64, generator=g)
    x = torch.randn(B, H, n, d, dtype=torch.float64, generator=g)
    y = toeplitz_matmul(c, x)
    for b in range(B):
        for h in range(H):
            assert torch.allclose(y[b, h], naive_toeplitz_matrix(c[h]) @ x[b, h], atol=1e-12)


@pytest.mark.parametrize("dt,tol", [(torch.float64, 1e-13), (torch.float32, 1e-5)])
def test_causal_leak_is_roundoff_only(dt, tol):
    g = torch.Generator().manual_seed(5)
    n, t = 200, 80
    c = torch.randn(2 * n - 1, generator=g).to(dt)
    x = torch.randn(n, 8, generator=g).to(dt)
    x2 = x.clone(); x2[t + 1:] += 10 * torch.randn(n - t - 1, 8, generator=g).to(dt)
    leak = (toeplitz_matmul(c, x, True)[:t + 1] - toeplitz_matmul(c, x2, True)[:t + 1]).abs().max()
    effect = (toeplitz_matmul(c, x)[:t + 1] - toeplitz_matmul(c, x2)[:t + 1]).abs().max()
    assert leak <= tol * (x2 - x).abs().max()
    assert effect > 1.0


def test_dtypes_and_autocast():
    g = torch.Generator().manual_seed(6)
    n = 300
    c = torch.randn(2 * n - 1, generator=g); x = torch.randn(n, 8, generator=g)
    ref = naive_toeplitz_matmul(c.double(), x.double())
    y = toeplitz_matmul(c, x)
    assert y.dtype == torch.float32 and (y.double() - ref).abs().max() < 1e-3
    yb = toeplitz_matmul(c.bfloat16(), x.bfloat16())
    assert yb.dtype == torch.bfloat16 and torch.isfinite(yb).all()
    assert (yb.double() - ref).abs().max() < 0.05 * ref.abs().max()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ya = toeplitz_matmul(c, x)
    assert torch.allclose(ya, y, atol=1e-5)


def test_fft_length_is_smooth_and_short():
    for n in range(1, 5000, 7):
        L = fft_length(n)
        assert 2 * n - 1 <= L <= 1.25 * (2 * n - 1) + 1
        m = L
        for p in (2, 3, 5):
            while m % p == 0: m //= p
        assert m == 1


@pytest.mark.parametrize("c_shape,x_shape,msg", [
    ((8,), (5, 3), "c must have shape [..., 2n-1]"),
    ((3, 9), (2, 5, 3), "do not broadcast"),
    ((9,), (5,), "x must have shape [..., n, d]"),
])
def test_bad_shapes(c_shape, x_shape, msg):
    with pytest.raises(ValueError, match=msg.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        toeplitz_matmul(torch.randn(*c_shape), torch.randn(*x_shape))


def test_bad_types():
    with pytest.raises(TypeError, match="floating point"):
        toeplitz_matmul(torch.arange(9), torch.randn(5, 2))
    with pytest.raises(TypeError, match="torch.Tensors"):
        toeplitz_matmul([1.0] * 9, torch.randn(5, 2))


# --- edges ------------------------------------------------------------------------------------------------------------
from kattn.toeplitz import toeplitz_apply, toeplitz_spectrum


@pytest.mark.parametrize("n", [-5, 0])
def test_fft_length_rejects_non_positive(n):
    with pytest.raises(ValueError, match="n must be a positive int"): fft_length(n)


@pytest.mark.parametrize("n", [2.5, True, "3"])
def test_fft_length_rejects_non_int(n):
    with pytest.raises((TypeError, ValueError), match="n must be"): fft_length(n)


def test_toeplitz_apply_rejects_aliasing_lengths():
    n = 5
    c, x = torch.randn(2 * n - 1, dtype=torch.float64), torch.randn(n, 3, dtype=torch.float64)
    spec = toeplitz_spectrum(c, 9)
    assert torch.allclose(toeplitz_apply(spec, x, 9), naive_toeplitz_matmul(c, x))
    for L in (6, 8):        # L < 2n-1: the circular product wraps around (wrong); spectrum length must match L too
        with pytest.raises(ValueError, match=r"L must be .*2n-1 = 9"): toeplitz_apply(toeplitz_spectrum(c, 9)[..., :L // 2 + 1], x, L)
    with pytest.raises(ValueError, match="spec"): toeplitz_apply(spec, x, 16)


@pytest.mark.parametrize("causal", [False, True])
def test_toeplitz_matmul_double_backward(causal):
    g = torch.Generator().manual_seed(0)
    c = torch.randn(2, 7, dtype=torch.float64, generator=g, requires_grad=True)
    x = torch.randn(2, 4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda c, x: toeplitz_matmul(c, x, causal), (c, x))


# --- the low-rank Toeplitz product behind RPE attention: both forms against the dense reference --------------------

FORMS = {"dense": dict(dense_max_n=10 ** 6), "fft": dict(dense_max_n=0),
         "fft_small_blocks": dict(dense_max_n=0, block_bytes=2 * 3 * 64 * 8)}


@pytest.mark.parametrize("n", [1, 2, 3, 11, 37])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("form", list(FORMS))
def test_lowrank_toeplitz_matmul_matches_dense_float64(n, causal, form):
    g = torch.Generator().manual_seed(n)
    r = lambda *s: torch.randn(*s, dtype=torch.float64, generator=g)
    leaves = [t.requires_grad_() for t in (r(3, 2 * n - 1), r(2, 3, n, 4), r(2, 1, n, 4), r(2, 3, n, 5))]
    ref = naive_lowrank_toeplitz_matmul(*leaves, causal)
    loop = torch.stack([sum(leaves[0][..., (j - i) + n - 1, None] * (leaves[1][..., i, :] * leaves[2][..., j, :]).sum(-1, keepdim=True)
                            * leaves[3][..., j, :] for j in range(i + 1 if causal else n)) for i in range(n)], -2)
    torch.testing.assert_close(ref, loop, rtol=0, atol=1e-12)
    with toeplitz_settings(**FORMS[form]): out = lowrank_toeplitz_matmul(*leaves, causal)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    G = r(2, 3, n, 5)
    for a, b in zip(torch.autograd.grad((out * G).sum(), leaves), torch.autograd.grad((ref * G).sum(), leaves)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


def test_lowrank_fft_backward_plan_is_fixed_at_forward():
    g = torch.Generator().manual_seed(0)
    c, a, b, x = (torch.randn(*s, dtype=torch.float64, generator=g).requires_grad_() for s in ((9,), (5, 3), (5, 3), (5, 2)))
    with toeplitz_settings(dense_max_n=0, block_bytes=8): out = lowrank_toeplitz_matmul(c, a, b, x)
    grads = torch.autograd.grad(out.sum(), (c, a, b, x))          # outside the region: the plan was saved
    ref = torch.autograd.grad(naive_lowrank_toeplitz_matmul(c, a, b, x).sum(), (c, a, b, x))
    for u, w in zip(grads, ref): torch.testing.assert_close(u, w, rtol=0, atol=1e-12)


def test_toeplitz_settings_validate_and_restore():
    with toeplitz_settings(memory_budget=7, dense_max_n=0):
        assert (settings.memory_budget, settings.dense_max_n) == (7, 0)
        with toeplitz_settings(memory_budget=None): assert settings.memory_budget is None
        assert settings.memory_budget == 7
    assert (settings.memory_budget, settings.dense_max_n) == (None, None)
    for bad in ({"memory_budget": 0}, {"block_bytes": 1.5}, {"group_bytes": True}, {"dense_max_n": -1}):
        with pytest.raises(ValueError, match=list(bad)[0]):
            with toeplitz_settings(**bad): pass
    with pytest.raises(TypeError, match="unknown setting"):
        with toeplitz_settings(chunk=3): pass


def test_stored_crossover_is_read_and_overridden(tmp_path, monkeypatch):
    import json
    from kattn import toeplitz
    monkeypatch.setenv("KATTN_CACHE_DIR", str(tmp_path))
    assert toeplitz._dense_max_n("cpu") == toeplitz._PLAN["dense_max_n"]          # nothing stored: the default
    (tmp_path / "rpe_crossover.json").write_text(json.dumps({toeplitz._device_key("cpu"): {"dense_max_n": 96}}))
    assert toeplitz._dense_max_n("cpu") == toeplitz._PLAN["dense_max_n"]          # read once per process ...
    toeplitz._STORED.clear()
    assert toeplitz._dense_max_n("cpu") == 96                                      # ... a fresh read sees it
    with toeplitz_settings(dense_max_n=5): assert toeplitz._dense_max_n("cpu") == 5
    assert toeplitz._use_dense(96, 2, 4, "cpu") and not toeplitz._use_dense(97, 2, 4, "cpu")


def test_rpe_matrix_is_the_toeplitz_matrix():
    from kattn.attention import rpe_matrix
    b = torch.randn(2, 9, dtype=torch.float64)
    assert torch.equal(rpe_matrix(b), naive_toeplitz_matrix(b))
