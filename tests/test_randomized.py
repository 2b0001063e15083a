"Tests for kattn.randomized: RA, RFA as SNIS, LARA and causal LARA (Zheng et al. 2022)."
import math

import pytest
import torch

from kattn.attention import kernelized_attention, softmax_attention
from kattn.features import PositiveRandomFeatures
from kattn.randomized import (LinearRandomizedAttention, RandomFeatureAttention, RandomizedAttention, lara_attention,
                              lara_landmarks, naive_causal_lara, naive_f, naive_lara, naive_rfa, randomized_attention, rfa_attention)

F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=gen(seed), dtype=dtype)


def qkv(*shape, seed=0, dtype=torch.float32):
    return tuple(rand(*shape, seed=seed + i, dtype=dtype) for i in range(3))


# ---------------------------------------------------------------- RA

def _ra_draws(q, k, v, S, seed, **kw):
    "S independent RA draws [S, ...] in one call (the draws are a leading batch dim)."
    return randomized_attention(*(x.expand(S, *x.shape) for x in (q, k, v)), generator=gen(seed), **kw)


@pytest.mark.parametrize("causal,padded", [(False, False), (True, False), (False, True)])
def test_ra_unbiased_z_scores(causal, padded):
    # Every output element's mean over S draws must lie within 5 standard errors of softmax attention. With 256
    # elements and Gaussian-ish means, P(max |z| > 5) < 256 * 6e-7: a failure means bias, not bad luck.
    q, k, v = qkv(2, 16, 8, seed=1, dtype=F64)
    mask = (torch.arange(16) >= 12).expand(2, 16) if padded else None
    ref = softmax_attention(q, k, v, causal=causal, key_padding_mask=mask)
    draws = _ra_draws(q, k, v, 4000, 0, causal=causal, key_padding_mask=mask)
    se = draws.std(0) / math.sqrt(4000)
    z = (draws.mean(0) - ref) / se.clamp_min(1e-12)
    assert z.abs().max() < 5, z.abs().max()


def test_ra_error_shrinks_like_inverse_sqrt_S():
    q, k, v = qkv(2, 16, 8, seed=2, dtype=F64)
    ref = softmax_attention(q, k, v)
    rms = {S: (_ra_draws(q, k, v, S, 3).mean(0) - ref).pow(2).mean().sqrt().item() for S in (25, 400)}
    # ideal ratio sqrt(400/25) = 4; the RMS over 256 elements of a mean of S draws has a relative spread of ~5-10%
    assert 2.5 < rms[25] / rms[400] < 6.4, rms


def test_ra_released_noise_is_biased():
    q, k, v = qkv(2, 16, 8, seed=4, dtype=F64)
    ref = softmax_attention(q, k, v)
    exact = (_ra_draws(q, k, v, 3000, 5).mean(0) - ref).pow(2).mean()
    released = (_ra_draws(q, k, v, 3000, 5, noise="released").mean(0) - ref).pow(2).mean()
    assert released > 5 * exact, (released, exact)


def test_ra_one_key_and_padded_keys_change_nothing():
    q, k, v = qkv(3, 5, 4, seed=6, dtype=F64)
    torch.testing.assert_close(randomized_attention(q, k[:, :1], v[:, :1], generator=gen()), v[:, :1].expand(3, 5, 4),
                               rtol=0, atol=1e-12)
    mask = torch.tensor([False, False, True, False, True])
    k2, v2 = k.clone(), v.clone()
    k2[:, mask] = 100 * rand(3, 2, 4, seed=9, dtype=F64); v2[:, mask] = 1e3
    a = randomized_attention(q, k, v, 3, gen(1), key_padding_mask=mask)
    b = randomized_attention(q, k2, v2, 3, gen(1), key_padding_mask=mask)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- RFA

@pytest.mark.parametrize("n,S,causal", [(1, 4, False), (7, 16, False), (33, 64, False), (7, 16, True), (65, 32, True)])
def test_rfa_equals_prf_kernelized_attention(n, S, causal):
    # RFA read as SNIS (log space) == kernelized attention with Performer's positive features on the same draws.
    d = 8
    q, k, v = qkv(2, 3, n, d, seed=n, dtype=F64)
    prf = PositiveRandomFeatures(d, S, orthogonal=False, seed=S).double()
    r = d ** -0.25                                              # softmax(q.k / sqrt(d)) = exp((r q).(r k))
    ref = kernelized_attention(prf(q * r, is_query=True), prf(k * r), v, causal=causal)
    out = rfa_attention(q, k, v, S, omega=prf.weight.to(F64), causal=causal, chunk_size=16)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)


def test_rfa_causal_matches_literal_prefix_formula():
    q, k, v = qkv(13, 6, seed=3, dtype=F64)
    om = rand(9, 6, seed=4, dtype=F64); r = 6 ** -0.25
    ref = torch.stack([naive_rfa(q[t:t + 1] * r, k[:t + 1] * r, v[:t + 1], om)[0] for t in range(13)])
    for L in (1, 4, 13, 64):
        torch.testing.assert_close(rfa_attention(q, k, v, 9, omega=om, causal=True, chunk_size=L), ref, rtol=0, atol=1e-10)


def test_rfa_error_shrinks_with_samples():
    # SNIS is consistent: MSE ~ Var/S once the importance weights are light-tailed. Their log-variance grows like
    # |q~ + k~|^2, so we use small norms (0.3 N(0, I), d = 16); at larger norms the error plateaus at practical S (the
    # paper's Fig. in Sec. 5.1). Medians over 16 seeds because the weights are still skewed.
    import statistics
    q, k, v = qkv(4, 64, 16, seed=5)
    q, k = 0.3 * q, 0.3 * k
    ref = softmax_attention(q, k, v)
    err = {S: statistics.median((rfa_attention(q, k, v, S, gen(s)) - ref).pow(2).mean().item() for s in range(16))
           for S in (4, 64, 1024)}
    assert err[4] > 4 * err[64] > 16 * err[1024], err      # ideal: factors of 16 per step


# ---------------------------------------------------------------- LARA

@pytest.mark.parametrize("n,C,gamma", [(1, 1, 1.0), (9, 3, 0.0), (16, 4, 1.0), (23, 5, 2.0), (4, 8, 1.0)])
def test_lara_equals_literal_formula(n, C, gamma):
    q, k, v = qkv(n, 6, seed=n + C, dtype=F64)
    qb, kb, valid = lara_landmarks(q, k, C)
    qb, kb = qb[valid], kb[valid]                               # n < C: the tokens themselves
    r = 6 ** -0.25
    om = (qb + kb) * r + rand(qb.shape[0], 6, seed=7, dtype=F64)
    out = lara_attention(q, k, v, C, omega=torch.zeros(C, 6, dtype=F64).masked_scatter(valid[:, None], om), gamma=gamma)
    torch.testing.assert_close(out, naive_lara(q * r, k * r, v, (qb + kb) * r, om, qb * r, gamma), rtol=0, atol=1e-10)


def test_lara_gradients_match_literal_formula():
    q, k, v = (x.requires_grad_() for x in qkv(10, 4, seed=11, dtype=F64))
    eps, w = rand(3, 4, seed=12, dtype=F64), rand(10, 4, seed=13, dtype=F64)
    r = 4 ** -0.25

    def grads(fn):
        qb, kb, _ = lara_landmarks(q, k, 3)
        return torch.autograd.grad((fn(qb, kb, (qb + kb) * r + eps) * w).sum(), (q, k, v))
    a = grads(lambda qb, kb, om: lara_attention(q, k, v, 3, omega=om))
    b = grads(lambda qb, kb, om: naive_lara(q * r, k * r, v, (qb + kb) * r, om, qb * r))
    for x, y in zip(a, b): torch.testing.assert_close(x, y, rtol=0, atol=1e-9)


def test_lara_edge_identities():
    q, k, v = qkv(2, 12, 6, seed=14, dtype=F64)
    r = 6 ** -0.25
    # (i) C = 1 in eval: every query gets f(mean q + mean k)
    f = torch.stack([naive_f(k[b] * r, v[b], (q[b].mean(0) + k[b].mean(0)) * r) for b in range(2)])
    torch.testing.assert_close(lara_attention(q, k, v, 1, training=False), f[:, None].expand(2, 12, 6), rtol=0, atol=1e-10)
    # (i') C = 1 in training: f at the single draw, whatever gamma is
    om = rand(2, 1, 6, seed=15, dtype=F64)
    f = torch.stack([naive_f(k[b] * r, v[b], om[b, 0]) for b in range(2)])
    torch.testing.assert_close(lara_attention(q, k, v, 1, omega=om, gamma=2.0), f[:, None].expand(2, 12, 6), rtol=0, atol=1e-10)
    # (ii) all mu = 0 and gamma = 0: exactly RFA on the same draws
    om = rand(5, 6, seed=16, dtype=F64)
    torch.testing.assert_close(lara_attention(q, k, v, 5, mu=torch.zeros(5, 6, dtype=F64), omega=om, gamma=0.0),
                               rfa_attention(q, k, v, 5, omega=om), rtol=0, atol=1e-10)
    # (iii) one key: the output is its value
    torch.testing.assert_close(lara_attention(q, k[:, :1], v[:, :1], 3, gen(), landmarks=(q[:, :3], k[:, :1].expand(2, 3, 6))),
                               v[:, :1].expand(2, 12, 6), rtol=0, atol=1e-12)


def test_lara_eval_determinism_and_seeded_reproducibility():
    q, k, v = qkv(2, 3, 20, 8, seed=17)
    torch.testing.assert_close(lara_attention(q, k, v, 4, training=False), lara_attention(q, k, v, 4, training=False), rtol=0, atol=0)
    for fn in (lambda g: lara_attention(q, k, v, 4, g), lambda g: rfa_attention(q, k, v, 8, g),
               lambda g: randomized_attention(q, k, v, 2, g), lambda g: lara_attention(q, k, v, 4, g, causal=True)):
        torch.testing.assert_close(fn(gen(3)), fn(gen(3)), rtol=0, atol=0)
        assert (fn(gen(3)) - fn(gen(4))).abs().max() > 1e-4
    m = LinearRandomizedAttention(8, 4).eval()
    with torch.no_grad(): torch.testing.assert_close(m(q, k, v), m(q, k, v), rtol=0, atol=0)
    rf = RandomFeatureAttention(8, 16, seed=0).eval()
    torch.testing.assert_close(rf(q, k, v), rf(q, k, v), rtol=0, atol=0)
    ra = RandomizedAttention(8, eval_mode="mean").eval()
    torch.testing.assert_close(ra(q, k, v), ra(q, k, v), rtol=0, atol=0)


def _pad(x, pad, left, seed):
    filler = 5 * rand(*x.shape[:-2], pad, x.shape[-1], seed=seed)
    return torch.cat([filler, x] if left else [x, filler], -2)


@pytest.mark.parametrize("name", ["rfa", "lara", "lara_causal", "rfa_causal", "lara_module", "ra_mean", "lara_grid"])
@pytest.mark.parametrize("left", [False, True])
def test_padding_invariance(name, left):
    n, pad = 11, 5
    if name == "lara_grid":                                     # grids take no mask: check padded batches can't be passed
        q, k, v = qkv(1, 16, 8, seed=18)
        with pytest.raises(ValueError, match="grid"):
            lara_attention(q, k, v, 4, grid=(4, 4), key_padding_mask=torch.zeros(16, dtype=torch.bool))
        return
    if left and "causal" in name: pytest.skip("left padding shifts causal chunks; right padding is the causal contract")
    q, k, v = qkv(2, 2, n, 8, seed=19)
    mod = LinearRandomizedAttention(8, 4, chunk_size=4)
    fn = {"rfa": lambda *a, **kw: rfa_attention(*a, 16, **kw),
          "lara": lambda *a, **kw: lara_attention(*a, 4, **kw),
          "lara_causal": lambda *a, **kw: lara_attention(*a, 4, causal=True, chunk_size=4, training=False, **kw),  # C changes with n
          "rfa_causal": lambda *a, **kw: rfa_attention(*a, 16, causal=True, chunk_size=4, **kw),
          "lara_module": lambda *a, **kw: mod(*a, **kw),
          "ra_mean": lambda *a, **kw: randomized_attention(*a, deterministic=True, **kw)}[name]
    base = fn(q, k, v, generator=gen(0))
    mask = torch.arange(n + pad) < pad if left else torch.arange(n + pad) >= n
    out = fn(*(_pad(x, pad, left, 20 + i) for i, x in enumerate((q, k, v))), generator=gen(0), key_padding_mask=mask)
    torch.testing.assert_close(out[..., pad:, :] if left else out[..., :n, :], base, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["ra", "rfa", "lara", "lara_module"])
@pytest.mark.parametrize("causal", [False, True])
def test_bf16_autocast_finite(name, causal):
    q, k, v = qkv(2, 2, 70, 16, seed=21)
    mod = LinearRandomizedAttention(16, 8)
    fn = {"ra": lambda: randomized_attention(3 * q, 3 * k, v, causal=causal),
          "rfa": lambda: rfa_attention(3 * q, 3 * k, v, 32, causal=causal),
          "lara": lambda: lara_attention(3 * q, 3 * k, v, 8, causal=causal),
          "lara_module": lambda: mod(3 * q, 3 * k, v, causal=causal)}[name]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fn()
    assert torch.isfinite(out).all()
    ref = softmax_attention(q * 3, k * 3, v, causal=causal)
    assert (out.float() - ref).abs().max() < 10 * v.abs().max()


@pytest.mark.parametrize("name", ["lara", "rfa", "ra", "lara_module"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_causal_no_leak(name, dtype):
    n = 37
    q, k, v = qkv(2, 2, n, 8, seed=22, dtype=dtype)
    mod = LinearRandomizedAttention(8, 5, mix_keys=True).to(dtype)
    fn = {"lara": lambda *a: lara_attention(*a, 5, gen(1), causal=True),
          "rfa": lambda *a: rfa_attention(*a, 16, gen(1), causal=True, chunk_size=8),
          "ra": lambda *a: randomized_attention(*a, 2, gen(1), causal=True),
          "lara_module": lambda *a: mod(*a, causal=True, generator=gen(1))}[name]
    base = fn(q, k, v)
    for t in (0, 6, 7, 8, 20, 35):
        q2, k2, v2 = q.clone(), k.clone(), v.clone()
        q2[..., t + 1:, :] += 3; k2[..., t + 1:, :] -= 2; v2[..., t + 1:, :] *= 7
        out = fn(q2, k2, v2)
        torch.testing.assert_close(out[..., :t + 1, :], base[..., :t + 1, :], rtol=0, atol=1e-12 if dtype == F64 else 1e-6)
        assert (out[..., t + 1:, :] - base[..., t + 1:, :]).abs().max() > 1e-3


@pytest.mark.parametrize("n,L,gamma", [(1, 4, 1.0), (5, 5, 1.0), (13, 4, 0.0), (20, 6, 2.0), (23, 3, 1.0)])
def test_causal_lara_matches_per_query_reference_outputs_and_grads(n, L, gamma):
    q, k, v = (x.requires_grad_() for x in qkv(n, 4, seed=30 + n, dtype=F64))
    qb, kb, _ = lara_landmarks(q, k, 0, chunk_size=L)
    om = ((qb + kb) * 4 ** -0.25 + rand(qb.shape[0], 4, seed=31, dtype=F64)).detach()
    w = rand(n, 4, seed=32, dtype=F64)
    a = lara_attention(q, k, v, 1, causal=True, chunk_size=L, omega=om, gamma=gamma)
    b = naive_causal_lara(q, k, v, L, om, gamma)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    for x, y in zip(torch.autograd.grad((a * w).sum(), (q, k, v)), torch.autograd.grad((b * w).sum(), (q, k, v))):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-9)


def test_causal_rfa_grads_match_literal_prefix_formula():
    q, k, v = (x.requires_grad_() for x in qkv(11, 6, seed=33, dtype=F64))
    om, w = rand(7, 6, seed=34, dtype=F64), rand(11, 6, seed=35, dtype=F64)
    r = 6 ** -0.25
    a = rfa_attention(q, k, v, 7, omega=om, causal=True, chunk_size=4)
    b = torch.stack([naive_rfa(q[t:t + 1] * r, k[:t + 1] * r, v[:t + 1], om)[0] for t in range(11)])
    for x, y in zip(torch.autograd.grad((a * w).sum(), (q, k, v)), torch.autograd.grad((b * w).sum(), (q, k, v))):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-9)


def test_causal_lara_first_chunk_exact_and_beats_causal_rfa():
    torch.manual_seed(0)
    n, d = 128, 16
    x = torch.randn(4, n, d).cumsum(-2) / n ** 0.5 * 2             # correlated tokens (random walk)
    q, k, v = x + 0.3 * torch.randn_like(x), x + 0.3 * torch.randn_like(x), torch.randn(4, n, d)
    ref = softmax_attention(q, k, v, causal=True)
    lara = lara_attention(q, k, v, 8, causal=True)
    torch.testing.assert_close(lara[:, :16], ref[:, :16], rtol=1e-5, atol=1e-5)     # chunk 0 is exact
    e_lara = (lara - ref).pow(2).mean()
    e_rfa = (rfa_attention(q, k, v, 8, causal=True) - ref).pow(2).mean()
    assert e_lara < 0.5 * e_rfa, (e_lara, e_rfa)


def test_modules_train_and_register_shapes():
    q, k, v = qkv(2, 3, 16, 8, seed=23)
    for m in (RandomizedAttention(8), RandomFeatureAttention(8, 16), LinearRandomizedAttention(8, 4, mix_keys=True),
              LinearRandomizedAttention(8, 4, gamma=2.0, grid=(4, 4), mix_keys=True)):
        qq = q.clone().requires_grad_()
        out = m(qq, k, v)
        assert out.shape == (2, 3, 16, 8)
        out.sum().backward()
        assert torch.isfinite(qq.grad).all() and qq.grad.abs().sum() > 0
    m = LinearRandomizedAttention(8, 4)
    m(q, k, v).sum().backward()
    assert m.q_proj.weight.grad.abs().sum() > 0 and m.k_norm.weight.grad.abs().sum() > 0


def test_grads_finite_with_padding_and_causal():
    q, k, v = (x.requires_grad_() for x in qkv(2, 19, 8, seed=24))
    mask = torch.zeros(2, 19, dtype=torch.bool); mask[0, :6] = True; mask[1, 15:] = True
    for fn in (lambda: lara_attention(q, k, v, 4, causal=True, chunk_size=4, key_padding_mask=mask),
               lambda: rfa_attention(q, k, v, 8, causal=True, chunk_size=4, key_padding_mask=mask),
               lambda: lara_attention(q, k, v, 4, key_padding_mask=mask)):
        out = fn()
        gq, gk, gv = torch.autograd.grad(out[~mask].sum(), (q, k, v))
        assert all(torch.isfinite(g).all() for g in (gq, gk, gv))


def test_clear_errors():
    q, k, v = qkv(2, 6, 4)
    with pytest.raises(TypeError, match="q must be a torch.Tensor"): randomized_attention(q.numpy(), k, v)
    with pytest.raises(TypeError, match="floating point"): rfa_attention(q.long(), k, v, 4)
    with pytest.raises(ValueError, match=r"same d"): lara_attention(q, k[..., :3], v, 2)
    with pytest.raises(ValueError, match=r"same m"): rfa_attention(q, k, v[:, :5], 4)
    with pytest.raises(ValueError, match="key_padding_mask must have shape"):
        rfa_attention(q, k, v, 4, key_padding_mask=torch.zeros(5, dtype=torch.bool))
    with pytest.raises(TypeError, match="key_padding_mask must be a bool"):
        lara_attention(q, k, v, 2, key_padding_mask=torch.zeros(6))
    with pytest.raises(ValueError, match="num_samples"): randomized_attention(q, k, v, 0)
    with pytest.raises(ValueError, match="num_samples"): rfa_attention(q, k, v, -1)
    with pytest.raises(ValueError, match="num_proposals"): lara_attention(q, k, v, 0)
    with pytest.raises(ValueError, match="noise"): randomized_attention(q, k, v, noise="loud")
    with pytest.raises(ValueError, match="perfect square"): lara_attention(q, k, v, 3, grid=(2, 3))
    with pytest.raises(ValueError, match="grid"): lara_attention(q, k, v, 4, grid=(2, 2))
    with pytest.raises(ValueError, match="causal=True needs"): randomized_attention(q, k[:, :5], v[:, :5], causal=True)
    with pytest.raises(ValueError, match="n == m"): lara_attention(q, k[:, :5], v[:, :5], 2)
    with pytest.raises(ValueError, match="omega"): rfa_attention(q, k, v, 4, omega=torch.randn(4, 3))
    with pytest.raises(ValueError, match="eval_mode"): RandomizedAttention(4, eval_mode="max")
