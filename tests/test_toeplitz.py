"Toeplitz/FFT product against the dense reference (float64), gradients, causality, dtypes, errors."
import pytest, torch
from kattn.toeplitz import toeplitz_matmul, naive_toeplitz_matmul, naive_toeplitz_matrix, fft_length


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
