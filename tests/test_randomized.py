"Tests for kattn.randomized: RA, RFA as SNIS, LARA and causal LARA (Zheng et al. 2022)."
import copy
import inspect
import math

import pytest
import torch

from kattn.attention import softmax_attention
from kattn.randomized import (LinearRandomizedAttention, RandomFeatureAttention, RandomizedAttention, lara_attention, official_performer_attention,
                              lara_landmarks, naive_causal_lara, naive_f, naive_lara, naive_rfa, randomized_attention, rfa_attention)
from kattn.randomized import _counter_normal, _counter_uniform

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
    torch.testing.assert_close(out, naive_lara(q * r, k * r, v, (qb + kb) * r, om, qb * r, gamma=gamma), rtol=0, atol=1e-10)


def test_lara_one_proposal_in_training_is_f_at_its_draw():
    "C = 1 in training: every query gets f(omega) at the single draw, whatever gamma is (the notebook checks C = 1 in eval)."
    q, k, v = qkv(2, 12, 6, seed=14, dtype=F64)
    r = 6 ** -0.25
    om = rand(2, 1, 6, seed=15, dtype=F64)
    f = torch.stack([naive_f(k[b] * r, v[b], om[b, 0]) for b in range(2)])
    torch.testing.assert_close(lara_attention(q, k, v, 1, omega=om, gamma=2.0), f[:, None].expand(2, 12, 6), rtol=0, atol=1e-10)


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
    if left and name == "rfa_causal": pytest.skip("left padding shifts RFA's causal chunks; right padding is its contract")
    q, k, v = qkv(2, 2, n, 8, seed=19)
    mod = LinearRandomizedAttention(8, 4, chunk_size=4)
    fn = {"rfa": lambda *a, **kw: rfa_attention(*a, 16, **kw),
          "lara": lambda *a, **kw: lara_attention(*a, 4, **kw),
          "lara_causal": lambda *a, **kw: lara_attention(*a, 4, causal=True, chunk_size=4, training=False, **kw),  # chunks of valid positions
          "rfa_causal": lambda *a, **kw: rfa_attention(*a, 16, causal=True, chunk_size=4, **kw),
          "lara_module": lambda *a, **kw: mod(*a, **kw),
          "ra_mean": lambda *a, **kw: randomized_attention(*a, deterministic=True, **kw)}[name]
    base = fn(q, k, v, generator=gen(0))
    mask = torch.arange(n + pad) < pad if left else torch.arange(n + pad) >= n
    out = fn(*(_pad(x, pad, left, 20 + i) for i, x in enumerate((q, k, v))), generator=gen(0), key_padding_mask=mask)
    torch.testing.assert_close(out[..., pad:, :] if left else out[..., :n, :], base, rtol=1e-5, atol=1e-5)


# bf16 autocast against the same estimator in float64 on the same draws (counter-based for RA, given omega / eps for
# RFA / LARA, eval-mode landmarks for the module). Every op computes its logits and features with autocast off; RA
# once ran its logits as bf16 matmuls, and at scale 3 the rounding (~0.1 nats) moved Gumbel-max picks: 0.13-0.17.
BF16_TOL = {}


@pytest.mark.parametrize("name", ["ra", "rfa", "lara", "lara_module"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("scale", [1, 3])
def test_bf16_autocast_matches_float64_on_the_same_draws(name, causal, scale, assert_rel_close):
    q, k, v = qkv(2, 2, 70, 16, seed=21)
    omega, eps = rand(32, 16, seed=24), rand(8, 16, seed=25)
    mod = LinearRandomizedAttention(16, 8).eval(); mod64 = copy.deepcopy(mod).double()
    fn = {"ra": lambda q, k, v, m: randomized_attention(q, k, v, causal=causal, seed=0),
          "rfa": lambda q, k, v, m: rfa_attention(q, k, v, 32, causal=causal, omega=omega.to(q.dtype)),
          "lara": lambda q, k, v, m: lara_attention(q, k, v, 8, causal=causal, eps=eps.to(q.dtype)),
          "lara_module": lambda q, k, v, m: m(q, k, v, causal=causal)}[name]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fn(scale * q, scale * k, v, mod)
    ref = fn(scale * q.double(), scale * k.double(), v.double(), mod64)
    assert_rel_close(out, ref, BF16_TOL.get((name, scale), 2e-2))


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
    C = -(-n // L)                                              # one proposal per chunk
    qb, kb, _ = lara_landmarks(q, k, C, chunk_size=L)
    om = ((qb + kb) * 4 ** -0.25 + rand(C, 4, seed=31, dtype=F64)).detach()
    w = rand(n, 4, seed=32, dtype=F64)
    a = lara_attention(q, k, v, C, causal=True, chunk_size=L, omega=om, gamma=gamma)
    b = naive_causal_lara(q, k, v, L, om, gamma=gamma)
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
    for fn in (lambda: lara_attention(q, k, v, 5, causal=True, chunk_size=4, key_padding_mask=mask),
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
    with pytest.raises(ValueError, match="n == m"): lara_attention(q, k[:, :5], v[:, :5], 2, causal=True)
    with pytest.raises(ValueError, match="omega"): rfa_attention(q, k, v, 4, omega=torch.randn(4, 3))
    with pytest.raises(ValueError, match="eval_mode"): RandomizedAttention(4, eval_mode="max")


# ---------------------------------------------------------------- LARA with n != m (cross-attention)

@pytest.mark.parametrize("n", [10, 1])
@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0])
def test_lara_cross_attention_explicit_landmarks_match_literal_formula(n, gamma):
    # n queries, m = 14 keys of which the last 3 are padding; any landmarks; output [..., n, dv] equals the literal formula
    # on the 11 real keys (r normalized over all n queries: with n != m no query is padding unless query_padding_mask says so)
    m, C, r = 14, 4, 6 ** -0.25
    q, k, v = rand(1, 2, n, 6, seed=40, dtype=F64), rand(1, 2, m, 6, seed=41, dtype=F64), rand(1, 2, m, 5, seed=42, dtype=F64)
    qb, kb = rand(1, 2, C, 6, seed=43, dtype=F64), rand(1, 2, C, 6, seed=44, dtype=F64)
    om = (qb + kb) * r + rand(1, 2, C, 6, seed=45, dtype=F64)
    mask = (torch.arange(m) >= 11).expand(1, 1, m)
    out = lara_attention(q, k, v, C, landmarks=(qb, kb), omega=om, gamma=gamma, key_padding_mask=mask)
    assert out.shape == (1, 2, n, 5)
    for h in range(2):
        ref = naive_lara(q[0, h] * r, k[0, h, :11] * r, v[0, h, :11], (qb[0, h] + kb[0, h]) * r, om[0, h], qb[0, h] * r, gamma=gamma)
        torch.testing.assert_close(out[0, h], ref, rtol=0, atol=1e-10)


def test_lara_query_padding_mask_leaves_real_queries_unchanged():
    # 7 real queries + 3 padded ones (left), 9 keys: the real queries' outputs equal those of the 7 queries alone
    C, r = 3, 6 ** -0.25
    q, k, v = rand(10, 6, seed=46, dtype=F64), rand(9, 6, seed=47, dtype=F64), rand(9, 6, seed=48, dtype=F64)
    qb, kb = rand(C, 6, seed=49, dtype=F64), rand(C, 6, seed=50, dtype=F64)
    om = (qb + kb) * r + rand(C, 6, seed=51, dtype=F64)
    qpad = torch.arange(10) < 3
    out = lara_attention(q, k, v, C, landmarks=(qb, kb), omega=om, query_padding_mask=qpad)
    ref = naive_lara(q[3:] * r, k * r, v, (qb + kb) * r, om, qb * r)
    torch.testing.assert_close(out[3:], ref, rtol=0, atol=1e-10)
    assert (lara_attention(q, k, v, C, landmarks=(qb, kb), omega=om)[3:] - ref).abs().max() > 1e-4   # the mask matters


@pytest.mark.parametrize("n", [10, 1])
def test_lara_cross_attention_1d_landmarks_from_keys(n):
    # without landmarks and n != m: key landmarks are the 1D split of the real keys (m = 14 real keys, C = 4: segments
    # of 3, 3, 4, 4 keys), every query landmark is the mean query; padded keys change nothing
    m, C, r = 14, 4, 6 ** -0.25
    q, k, v = rand(n, 6, seed=52, dtype=F64), rand(m, 6, seed=53, dtype=F64), rand(m, 6, seed=54, dtype=F64)
    kb = torch.stack([k[a:b].mean(0) for a, b in ((0, 3), (3, 6), (6, 10), (10, 14))])
    qb = q.mean(0).expand(C, 6)
    om = (qb + kb) * r + rand(C, 6, seed=55, dtype=F64)
    out = lara_attention(q, k, v, C, omega=om)
    assert out.shape == (n, 6)
    torch.testing.assert_close(out, naive_lara(q * r, k * r, v, (qb + kb) * r, om, qb * r), rtol=0, atol=1e-10)
    kp, vp = torch.cat([k, 40 * rand(5, 6, seed=56, dtype=F64)]), torch.cat([v, rand(5, 6, seed=57, dtype=F64)])
    out_p = lara_attention(q, kp, vp, C, omega=om, key_padding_mask=torch.arange(m + 5) >= m)
    torch.testing.assert_close(out_p, out, rtol=0, atol=1e-10)


# ---------------------------------------------------------------- causal LARA: segments, padding, num_proposals

@pytest.mark.parametrize("n,C,gamma", [(23, 5, 1.0), (3, 5, 1.0), (30, 4, 0.0), (13, 13, 2.0)])
def test_causal_lara_segments_match_per_query_reference(n, C, gamma):
    # default causal mode: the C segments of the 1D split (unequal lengths, e.g. 4, 4, 5, 5, 5 at n = 23, C = 5)
    q, k, v = (x.requires_grad_() for x in qkv(n, 4, seed=60 + n, dtype=F64))
    qb, kb, _ = lara_landmarks(q, k, C)
    om = ((qb + kb) * 4 ** -0.25 + rand(C, 4, seed=61, dtype=F64)).detach()
    w = rand(n, 4, seed=62, dtype=F64)
    a = lara_attention(q, k, v, C, causal=True, omega=om, gamma=gamma)
    b = naive_causal_lara(q, k, v, None, om, gamma=gamma, num_proposals=C)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    for x, y in zip(torch.autograd.grad((a * w).sum(), (q, k, v)), torch.autograd.grad((b * w).sum(), (q, k, v))):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-9)


@pytest.mark.parametrize("lengths", [(40, 25), (17, 40, 3, 1), (39, 40)])
@pytest.mark.parametrize("chunk_size", [None, 7])
@pytest.mark.parametrize("left", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_causal_lara_padding_invariant_for_mixed_lengths(lengths, chunk_size, left, training):
    # A padded batch gives, on each sequence's real positions, exactly what that sequence gives alone. Both calls use the
    # same draws: the noise eps [B, H, C, d] is passed in (its shape depends on C, not on any length), and the sequence
    # alone gets its own row eps[b]. Segments/chunks are counted over each sequence's real positions.
    C, H, d, N = 6, 2, 8, max(lengths)
    q, k, v = qkv(len(lengths), H, N, d, seed=70, dtype=F64)
    eps = rand(len(lengths), H, C, d, seed=71, dtype=F64)
    pos = torch.arange(N)
    mask = torch.stack([pos < N - n if left else pos >= n for n in lengths])[:, None]       # [B, 1, N]
    out = lara_attention(q, k, v, C, causal=True, key_padding_mask=mask, chunk_size=chunk_size, eps=eps, training=training)
    for b, n in enumerate(lengths):
        real = slice(N - n, N) if left else slice(0, n)
        alone = lara_attention(q[b:b + 1, :, real], k[b:b + 1, :, real], v[b:b + 1, :, real], C, causal=True,
                               chunk_size=chunk_size, eps=eps[b:b + 1], training=training)
        assert (out[b:b + 1, :, real] - alone).abs().max() < 1e-10
    assert (out[mask.expand(-1, H, -1)] == 0).all()                                           # padded positions: zeros


@pytest.mark.parametrize("chunk_size", [None, 5])
def test_causal_lara_module_padding_invariant_for_mixed_lengths(chunk_size):
    m = LinearRandomizedAttention(8, 6, mix_keys=True, chunk_size=chunk_size).double().eval()
    lengths, N = (30, 12, 1), 30
    q, k, v = qkv(3, 2, N, 8, seed=72, dtype=F64)
    mask = torch.stack([torch.arange(N) >= n for n in lengths])[:, None]
    with torch.no_grad():
        out = m(q, k, v, key_padding_mask=mask, causal=True)
        for b, n in enumerate(lengths):
            alone = m(q[b:b + 1, :, :n], k[b:b + 1, :, :n], v[b:b + 1, :, :n], causal=True)
            assert (out[b:b + 1, :, :n] - alone).abs().max() < 1e-10


def test_num_proposals_is_honoured():
    # n = 196, C = 32: the 1D split gives 28 segments of 6 and 4 of 7 positions, i.e. 32 proposals (a chunk length of
    # ceil(196/32) = 7 would give 28). Segment 0 = positions [0, 6) is exact softmax attention; position 6 is not.
    q, k, v = qkv(196, 8, seed=80, dtype=F64)
    qb, kb, valid = lara_landmarks(q, k, 32)
    assert qb.shape == (32, 8) and valid.all()
    eps = rand(32, 8, seed=81, dtype=F64)
    out = lara_attention(q, k, v, 32, causal=True, eps=eps)
    ref = softmax_attention(q, k, v, causal=True)
    torch.testing.assert_close(out[:6], ref[:6], rtol=0, atol=1e-12)
    assert (out[6] - ref[6]).abs().max() > 1e-6
    # proposal 30 (from segment 30 = positions [182, 189)) is used by the last segment [189, 196) only
    eps2 = eps.clone(); eps2[30] += 1
    out2 = lara_attention(q, k, v, 32, causal=True, eps=eps2)
    assert (out2[:189] - out[:189]).abs().max() == 0 and (out2[189:] - out[189:]).abs().max() > 1e-6
    # chunk_size: one proposal per chunk, never silently more or fewer than num_proposals slots
    with pytest.raises(ValueError, match=r"num_proposals=4 is too small.*num_proposals >= 5"):
        lara_attention(q[:19], k[:19], v[:19], 4, causal=True, chunk_size=4)
    with pytest.raises(ValueError, match=r"num_proposals=4 is too small"): lara_landmarks(q[:19], k[:19], 4, chunk_size=4)
    assert lara_landmarks(q[:19], k[:19], 6, chunk_size=4)[2].tolist() == [True] * 5 + [False]
    with pytest.raises(ValueError, match=r"omega must have shape \[\.\.\., C, d\] with C = num_proposals = 32"):
        lara_attention(q, k, v, 32, causal=True, omega=eps[:28])
    with pytest.raises(ValueError, match=r"landmarks\[0\] must have shape"):
        lara_attention(q, k, v, 32, landmarks=(qb[:28], kb[:28]))


def test_lara_new_argument_errors():
    q, k, v = qkv(2, 6, 4)
    with pytest.raises(ValueError, match="query_padding_mask must have shape"):
        lara_attention(q, k, v, 2, query_padding_mask=torch.zeros(5, dtype=torch.bool))
    with pytest.raises(TypeError, match="query_padding_mask must be a bool"):
        lara_attention(q, k, v, 2, query_padding_mask=torch.zeros(6))
    with pytest.raises(ValueError, match="do not pass query_padding_mask"):
        lara_attention(q, k, v, 2, causal=True, query_padding_mask=torch.zeros(6, dtype=torch.bool))
    with pytest.raises(ValueError, match="eps must have shape"): lara_attention(q, k, v, 2, eps=torch.randn(3, 4))
    with pytest.raises(ValueError, match="chunk_size must be an int"): lara_attention(q, k, v, 2, causal=True, chunk_size=0)


# ---------------------------------------------------------------- RA at evaluation

def _ra_by_hand(q, k, v, seed, num_samples, std):
    "RA written out with the counter-based draws: Gumbel-max component, omega = q~ + k~_m (+ std * eps), softmax over keys."
    n, m, d = q.shape[-2], k.shape[-2], q.shape[-1]
    r = d ** -0.25
    qs, ks = q * r, k * r
    out = 0
    for s in range(num_samples):
        u = _counter_uniform(seed, s, 0, torch.arange(n)[:, None], torch.arange(m))
        idx = (qs @ ks.T - (-u.log()).log()).argmax(-1)
        omega = qs + ks[idx] + std * _counter_normal(seed, s, torch.arange(n)[:, None], torch.arange(d))
        out = out + torch.softmax(omega @ ks.T - 0.5 * (ks * ks).sum(-1), -1) @ v
    return out / num_samples


@pytest.mark.parametrize("eval_noise,std", [(0.0, 0.0), ("exact", 1.0), (0.3, 0.3)])
def test_ra_eval_matches_hand_formula(eval_noise, std):
    q, k, v = rand(3, 2, seed=90, dtype=F64), rand(4, 2, seed=91, dtype=F64), rand(4, 3, seed=92, dtype=F64)
    mod = RandomizedAttention(2, num_samples=2, eval_noise=eval_noise, eval_seed=7).eval()
    torch.testing.assert_close(mod(q, k, v), _ra_by_hand(q, k, v, 7, 2, std), rtol=0, atol=1e-12)


def test_ra_eval_reproducible_official_and_training_random():
    q, k, v = qkv(2, 3, 9, 8, seed=93)
    mod = RandomizedAttention(8).eval()
    a, b = mod(q, k, v), mod(q, k, v)
    assert torch.equal(a, b)                                                       # bit-equal twice
    assert torch.equal(mod(q[:1], k[:1], v[:1]), a[:1])                           # and independent of the batch
    assert (RandomizedAttention(8, eval_seed=1).eval()(q, k, v) - a).abs().max() > 1e-3
    # official eval: no Gaussian noise, so every query's output is f at q~ + k~_m for one key m
    r = 8 ** -0.25
    omega = (q * r).unsqueeze(-2) + (k * r).unsqueeze(-3)                          # [2, 3, n, m, d]: q~_n + k~_m
    logits = torch.einsum("bhnmd,bhjd->bhnmj", omega, k * r) - 0.5 * (k * r).square().sum(-1)[:, :, None, None]
    cand = torch.einsum("bhnmj,bhjd->bhnmd", torch.softmax(logits, -1), v)        # [2, 3, n, m, dv]
    assert (cand - a.unsqueeze(-2)).abs().amax(-1).amin(-1).max() < 1e-5
    assert (RandomizedAttention(8, eval_noise="exact").eval()(q, k, v) - a).abs().max() > 1e-3
    mod.train()
    torch.manual_seed(0)
    t1, t2 = mod(q, k, v), mod(q, k, v)
    assert (t1 - t2).abs().max() > 1e-3                                            # training draws stay random
    torch.testing.assert_close(mod(q, k, v, generator=gen(5)), mod(q, k, v, generator=gen(5)), rtol=0, atol=0)


def test_ra_eval_component_draws_follow_pi():
    # over eval seeds, the sampled component of each query follows pi exactly (z-scores of the frequencies < 5)
    q, k, v = rand(2, 3, seed=94, dtype=F64), rand(4, 3, seed=95, dtype=F64), torch.eye(4, dtype=F64)
    r = 3 ** -0.25
    pi = torch.softmax(q @ k.T * r * r, -1)
    cand = torch.softmax((q * r)[:, None] @ (k * r).T + (k * r)[None] @ (k * r).T - 0.5 * (k * r).square().sum(-1), -1)   # [n, m, m]
    S = 2000
    counts = torch.zeros(2, 4, dtype=F64)
    for seed in range(S):
        out = randomized_attention(q, k, v, noise=0.0, seed=seed)                  # [2, 4]
        hit = (cand - out[:, None]).abs().amax(-1) < 1e-12                          # which candidate it is
        assert (hit.sum(-1) == 1).all()
        counts += hit
    z = (counts / S - pi) / (pi * (1 - pi) / S).sqrt()
    assert z.abs().max() < 5, z


def test_ra_eval_argument_errors():
    with pytest.raises(ValueError, match="eval_noise must be"): RandomizedAttention(4, eval_noise="loud")
    with pytest.raises(ValueError, match="eval_seed must be"): RandomizedAttention(4, eval_seed=-1)
    q, k, v = qkv(5, 4)
    with pytest.raises(ValueError, match="generator or a seed"): randomized_attention(q, k, v, generator=gen(), seed=0)
    with pytest.raises(ValueError, match="seed must be"): randomized_attention(q, k, v, seed=1.5)


# ---------------------------------------------------------------- edge errors: empty sequences, batch mismatches, chunk_size

_OPS = {"ra": lambda *a, **kw: randomized_attention(*a, **kw),
        "ra_mean": lambda *a, **kw: randomized_attention(*a, deterministic=True, **kw),
        "rfa": lambda *a, **kw: rfa_attention(*a, num_samples=4, **kw),
        "lara": lambda *a, **kw: lara_attention(*a, num_proposals=2, **kw)}


@pytest.mark.parametrize("name", list(_OPS))
@pytest.mark.parametrize("causal", [False, True])
def test_empty_sequences_raise_value_error(name, causal):
    q, k, v = qkv(2, 6, 4)
    empty = torch.randn(2, 0, 4)
    with pytest.raises(ValueError, match=r"q must have at least one query \(n >= 1\)"):
        _OPS[name](empty, empty if causal else k, empty if causal else v, causal=causal)
    if not causal:
        with pytest.raises(ValueError, match=r"k must have at least one key \(m >= 1\)"):
            _OPS[name](q, empty, empty)


@pytest.mark.parametrize("name", list(_OPS))
@pytest.mark.parametrize("causal", [False, True])
def test_batch_mismatch_raises_value_error_naming_the_argument(name, causal):
    q, k, v = qkv(2, 6, 4)
    other = torch.randn(3, 6, 4)
    for bad in ("q", "k", "v"):
        args = {"q": q, "k": k, "v": v, bad: other}
        with pytest.raises(ValueError, match=r"batch dims of q \(\d,\), k \(\d,\) and v \(\d,\) do not broadcast"):
            _OPS[name](args["q"], args["k"], args["v"], causal=causal)
    with pytest.raises(ValueError, match=r"key_padding_mask \[\.\.\., m\] has batch dims \(3,\) that do not broadcast with"):
        _OPS[name](q, k, v, causal=causal, key_padding_mask=torch.zeros(3, 6, dtype=torch.bool))
    # broadcasting batch dims stay allowed: one q for two k/v, a mask shared by the batch, a mask per batch element
    out = _OPS[name](q[:1], k, v, causal=causal, key_padding_mask=torch.zeros(2, 6, dtype=torch.bool), generator=gen())
    assert out.shape == (2, 6, 4) and torch.isfinite(out).all()


def test_lara_query_padding_mask_batch_mismatch_raises_value_error():
    q, k, v = qkv(2, 6, 4)
    with pytest.raises(ValueError, match=r"query_padding_mask \[\.\.\., n\] has batch dims \(3,\) that do not broadcast"):
        lara_attention(q, k, v, 2, query_padding_mask=torch.zeros(3, 6, dtype=torch.bool))


@pytest.mark.parametrize("chunk_size", [0, -1, 2.0, True])
def test_rfa_chunk_size_must_be_a_positive_int(chunk_size):
    q, k, v = qkv(2, 6, 4)
    for causal in (True, False):
        with pytest.raises(ValueError, match=r"rfa_attention: chunk_size must be an int >= 1, got"):
            rfa_attention(q, k, v, 4, causal=causal, chunk_size=chunk_size)
    with pytest.raises(ValueError, match=r"RandomFeatureAttention: chunk_size must be an int >= 1, got"):
        RandomFeatureAttention(4, 8, chunk_size=chunk_size)


def test_lara_chunk_size_checked_without_causal_too():
    q, k, v = qkv(2, 6, 4)
    with pytest.raises(ValueError, match=r"lara_attention: chunk_size must be an int >= 1 or None, got 0"):
        lara_attention(q, k, v, 2, chunk_size=0)
    with pytest.raises(ValueError, match=r"LinearRandomizedAttention: chunk_size must be an int >= 1 or None, got 0"):
        LinearRandomizedAttention(4, 2, chunk_size=0)


# ---------------------------------------------------------------- the official Performer baseline; per-head draws

def _official_favorp_by_hand(q, k, v, W, eps=1e-4, clamp=1e-2):
    "One head of the official favorp Performer written out with numpy (float64): q [n, d], k [m, d], v [m, dv], W [S, d]."
    import numpy as np
    q, k, v, W = (x.numpy() for x in (q, k, v, W))
    dn, S = q.shape[1] ** -0.25, W.shape[0]
    out = np.zeros((q.shape[0], v.shape[1]))
    kd = (k * dn) @ W.T
    kp = np.array([[S ** -0.5 * math.exp(kd[m, j] - (k[m] @ k[m]) / 2 * dn * dn - kd.max()) + eps for j in range(S)]
                   for m in range(k.shape[0])])
    for i in range(q.shape[0]):
        qd = (q[i] * dn) @ W.T
        qp = np.array([S ** -0.5 * math.exp(qd[j] - (q[i] @ q[i]) / 2 * dn * dn - qd.max()) + eps for j in range(S)])
        out[i] = (qp @ (kp.T @ v)) / max(qp @ kp.sum(0), clamp)
    return torch.from_numpy(out)


@pytest.mark.parametrize("n,m,S,sig", [(1, 1, 2, 1.0), (5, 9, 7, 2.5), (12, 12, 16, 4.0)])
def test_official_performer_matches_hand_formula(n, m, S, sig):
    q, k = sig * rand(2, 2, n, 6, seed=200, dtype=F64), sig * rand(2, 2, m, 6, seed=201, dtype=F64)
    v, W = rand(2, 2, m, 3, seed=202, dtype=F64), rand(2, S, 6, seed=203, dtype=F64)     # per-head projections
    out = official_performer_attention(q, k, v, omega=W)
    for b in range(2):
        for h in range(2):
            torch.testing.assert_close(out[b, h], _official_favorp_by_hand(q[b, h], k[b, h], v[b, h], W[h]), rtol=0, atol=1e-12)


def test_official_performer_without_offset_and_clamp_is_exact_rfa_and_clamps_large_queries():
    q, k, v = qkv(2, 3, 20, 8, seed=204, dtype=F64)
    W = rand(3, 16, 8, seed=205, dtype=F64)
    torch.testing.assert_close(official_performer_attention(q, k, v, omega=W, feature_eps=0, denom_min=0),
                               rfa_attention(q, k, v, 16, omega=W), rtol=0, atol=1e-10)
    assert (official_performer_attention(q, k, v, omega=W) - rfa_attention(q, k, v, 16, omega=W)).abs().max() > 1e-6
    # large queries: every denominator is clamped, so the output equals num / 1e-2
    big = 6 * q
    o_clamped = official_performer_attention(big, k, v, omega=W)
    o_free = official_performer_attention(big, k, v, omega=W, denom_min=0)
    ones = torch.ones(2, 3, 20, 1, dtype=F64)
    ratio = official_performer_attention(big, k, ones, omega=W)                  # v = 1: den / max(den, 1e-2)
    assert (ratio < 1 - 1e-6).all()                                               # every query clamped
    torch.testing.assert_close(o_clamped, o_free * ratio, rtol=1e-10, atol=0)      # num / 1e-2 = (num / den) * (den / 1e-2)
    ratio_small = official_performer_attention(q / 20, k / 20, ones, omega=W)
    assert ((ratio_small - 1).abs() < 1e-12).all()                               # small queries and keys: no clamping


def test_official_performer_padding_grads_and_errors():
    q, k, v = qkv(2, 11, 8, seed=206)
    mask = torch.arange(11) >= 8
    torch.testing.assert_close(official_performer_attention(q, k, v, 16, generator=gen(1), key_padding_mask=mask),
                               official_performer_attention(q, k[:, :8], v[:, :8], 16, generator=gen(1)), rtol=1e-5, atol=1e-6)
    qq = q.clone().requires_grad_()
    official_performer_attention(qq, k, v, 16, generator=gen(1), key_padding_mask=mask).sum().backward()
    assert torch.isfinite(qq.grad).all() and qq.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="feature_eps must be a float >= 0"): official_performer_attention(q, k, v, feature_eps=-1.0)
    with pytest.raises(ValueError, match="denom_min must be a float >= 0"): official_performer_attention(q, k, v, denom_min="x")
    with pytest.raises(ValueError, match="num_features must be an int >= 1"): official_performer_attention(q, k, v, 0)
    with pytest.raises(ValueError, match="omega must have shape"): official_performer_attention(q, k, v, omega=torch.randn(4, 3))
    with pytest.raises(ValueError, match="at least one key"): official_performer_attention(q, k[:, :0], v[:, :0])


def test_rfa_module_per_head_draws():
    from kattn.features import gaussian_draws
    q, k, v = qkv(2, 3, 10, 8, seed=207)
    shared = RandomFeatureAttention(8, 16, seed=4)
    # default unchanged: one orthogonal [S, d] buffer, the draw gaussian_draws gives for that seed, shared by every head
    assert torch.equal(shared.omega, gaussian_draws(16, 8, orthogonal=True, generator=gen(4)))
    torch.testing.assert_close(shared.eval()(q, k, v), rfa_attention(q, k, v, 16, omega=shared.omega), rtol=0, atol=0)
    per = RandomFeatureAttention(8, 16, seed=4, num_heads=3)
    assert per.omega.shape == (3, 16, 8)
    assert torch.equal(per.omega[0], shared.omega)                               # heads draw from the seed's generator in turn
    for a in range(3):
        for b in range(a + 1, 3): assert (per.omega[a] - per.omega[b]).abs().max() > 0.1   # every head its own draw
    assert torch.equal(per.omega, RandomFeatureAttention(8, 16, seed=4, num_heads=3).omega)   # same seed, same draws
    assert not torch.equal(per.omega, RandomFeatureAttention(8, 16, seed=5, num_heads=3).omega)
    out = per.eval()(q, k, v)
    for h in range(3):
        torch.testing.assert_close(out[:, h], rfa_attention(q[:, h], k[:, h], v[:, h], 16, omega=per.omega[h]), rtol=1e-5, atol=1e-6)
    per.train()                                                                    # training: fresh iid draws per head
    t1, t2 = per(q, k, v, generator=gen(9)), per(q, k, v, generator=gen(9))
    assert torch.equal(t1, t2)
    W = torch.stack([gaussian_draws(16, 8, generator=g_) for g_ in [gen(9)] for _ in range(3)])
    torch.testing.assert_close(t1, rfa_attention(q, k, v, 16, omega=W), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"q must have shape \[\.\.\., H, n, d\] with H = 3"): per(q[:, :2], k[:, :2], v[:, :2])
    with pytest.raises(ValueError, match="num_heads must be an int >= 1 or None"): RandomFeatureAttention(8, num_heads=0)


def test_rfa_module_official_estimator():
    q, k, v = qkv(2, 3, 10, 8, seed=208)
    m = RandomFeatureAttention(8, 16, seed=1, num_heads=3, estimator="official").eval()
    torch.testing.assert_close(m(q, k, v), official_performer_attention(q, k, v, omega=m.omega), rtol=0, atol=0)
    with pytest.raises(ValueError, match="bidirectional"): m(q, k, v, causal=True)
    with pytest.raises(ValueError, match="estimator must be one of 'snis', 'official'"): RandomFeatureAttention(8, estimator="favor")


def test_lara_return_weights():
    q, k, v = qkv(2, 12, 6, seed=209, dtype=F64)
    C, r = 4, 6 ** -0.25
    qb, kb, _ = lara_landmarks(q, k, C)
    om = (qb + kb) * r + rand(2, C, 6, seed=210, dtype=F64)
    out, w = lara_attention(q, k, v, C, omega=om, return_weights=True)
    torch.testing.assert_close(out, lara_attention(q, k, v, C, omega=om), rtol=0, atol=0)
    assert w.shape == (2, 12, C) and (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 12, dtype=F64), rtol=0, atol=1e-12)
    f = torch.stack([torch.stack([naive_f(k[b] * r, v[b], om[b, c]) for c in range(C)]) for b in range(2)])   # [2, C, dv]
    torch.testing.assert_close(w @ f, out, rtol=0, atol=1e-10)                                       # out = sum_c w_nc f(omega_c)
    with pytest.raises(ValueError, match="return_weights needs causal=False"):
        lara_attention(q, k, v, C, causal=True, return_weights=True)


# ---------------------------------------------------------------- one keyword order for the family
ORDER = ["generator", "scale", "causal", "key_padding_mask"]


@pytest.mark.parametrize("fn,positional", [
    (randomized_attention, ["q", "k", "v", "num_samples", *ORDER]), (rfa_attention, ["q", "k", "v", "num_samples", *ORDER]),
    (lara_attention, ["q", "k", "v", "num_proposals", *ORDER]),
    (official_performer_attention, ["q", "k", "v", "num_features", "generator", "scale", "key_padding_mask"]),
    (lara_landmarks, ["q", "k", "num_proposals", "key_padding_mask"]),
    (RandomizedAttention(4).forward, ["q", "k", "v", "causal", "key_padding_mask"]),
    (RandomFeatureAttention(4).forward, ["q", "k", "v", "causal", "key_padding_mask"]),
    (LinearRandomizedAttention(4).forward, ["q", "k", "v", "causal", "key_padding_mask"])])
def test_one_keyword_order(fn, positional):
    "The contract's positions, then causal, key_padding_mask; every further option is keyword-only."
    params = inspect.signature(fn).parameters.values()
    assert [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD] == positional
    assert all(p.kind is p.KEYWORD_ONLY for p in params if p.name not in positional)
