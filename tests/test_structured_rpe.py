"Structured RPE fast paths (T5 buckets via prefix sums, decay mixtures via chunked scans) vs the FFT path and naive O(n^2)."
import pytest
import torch
from kattn.structured_rpe import (t5_buckets, bucket_changes, bucketed_toeplitz_matmul, bucketed_kernelized_attention,
                                  naive_decay_rpe_bias, decay_kernelized_attention, decay_decode_init, decay_decode_step)
from kattn.toeplitz import toeplitz_matmul, naive_toeplitz_matmul, toeplitz_settings
from kattn.attention import kernelized_attention, naive_kernelized_attention

f64 = torch.float64


def inputs(n, m=3, dv=2, batch=(2, 2), seed=0, dtype=f64):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*batch, n, m, generator=g, dtype=dtype), torch.rand(*batch, n, m, generator=g, dtype=dtype),
            torch.randn(*batch, n, dv, generator=g, dtype=dtype))


def mask_for(n, seed):
    m = torch.rand(2, 1, n, generator=torch.Generator().manual_seed(seed)) < 0.25
    m[..., 0] = False                                   # a fully masked causal row is 0/0 (FFT noise vs exact 0)
    return m


def test_t5_buckets_match_reference_formula():
    # HF/T5 _relative_position_bucket, written out for scalars (relative_position = j - i)
    import math
    def ref(rp, nb=32, md=128, bidir=True):
        ret = 0
        if bidir: nb //= 2; ret += nb if rp > 0 else 0; rp = abs(rp)
        else: rp = max(-rp, 0)
        me = nb // 2
        if rp < me: return ret + rp
        return ret + min(nb - 1, me + int(math.log(rp / me) / math.log(md / me) * (nb - me)))
    n = 400
    for bidir in (True, False):
        got = t5_buckets(n, 32, 128, bidir).tolist()
        assert got == [ref(t, 32, 128, bidir) for t in range(-(n - 1), n)]


@pytest.mark.parametrize("n", [1, 2, 5, 31, 129, 300])
@pytest.mark.parametrize("causal", [False, True])
def test_bucketed_product_matches_dense_and_fft(n, causal):
    bk = t5_buckets(n, 16, 40, bidirectional=not causal)
    w = torch.randn(2, 16, dtype=f64, generator=torch.Generator().manual_seed(n))
    c, x = w[:, bk].exp(), torch.randn(2, n, 3, dtype=f64)
    y = bucketed_toeplitz_matmul(c, x, bucket_changes(bk, causal), causal)
    torch.testing.assert_close(y, naive_toeplitz_matmul(c, x, causal), rtol=0, atol=1e-11)
    torch.testing.assert_close(y, toeplitz_matmul(c, x, causal), rtol=0, atol=1e-10)


def test_bucketed_changes_are_exactly_the_bucket_boundaries():
    bk = t5_buckets(50, 8, 20)
    ch = bucket_changes(bk)
    assert all(bk[p] != bk[p - 1] for p in ch) and len(ch) == int((bk[1:] != bk[:-1]).sum())
    assert 50 in bucket_changes(t5_buckets(50, 8, 20, bidirectional=False), causal=True)


@pytest.mark.parametrize("n,causal", [(1, False), (2, True), (17, False), (64, True), (150, False), (151, True)])
def test_bucketed_attention_matches_fft_and_naive(n, causal):
    q, k, v = inputs(n, seed=n)
    w = torch.randn(2, 32, dtype=f64, generator=torch.Generator().manual_seed(1))
    mask = mask_for(n, n)
    bias = w[:, t5_buckets(n, 32, 128, not causal)]
    with toeplitz_settings(memory_budget=1):     # one feature per chunk; kernelized_attention takes the FFT path
        fast = bucketed_kernelized_attention(q, k, v, w, causal, mask)
        torch.testing.assert_close(fast, kernelized_attention(q, k, v, bias, causal, mask), rtol=0, atol=1e-10)
    torch.testing.assert_close(fast, naive_kernelized_attention(q, k, v, bias, causal, mask), rtol=0, atol=1e-10)
    torch.testing.assert_close(bucketed_kernelized_attention(q, k, v, w, causal, mask), fast, rtol=0, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_bucketed_attention_gradients(causal):
    n = 45
    q, k, v = inputs(n, seed=7)
    w = torch.randn(2, 32, dtype=f64)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, w)]
    with toeplitz_settings(memory_budget=1):
        fast = bucketed_kernelized_attention(*leaves, causal=causal, max_distance=30)
        ref = kernelized_attention(*leaves[:3], leaves[3][:, t5_buckets(n, 32, 30, not causal)], causal)
    g = torch.randn_like(ref)
    for a, r in zip(torch.autograd.grad((fast * g).sum(), leaves), torch.autograd.grad((ref * g).sum(), leaves)):
        torch.testing.assert_close(a, r, rtol=0, atol=1e-9)


DECAYS = (torch.tensor([[.5, 1.], [2., .1]], dtype=f64), torch.tensor([[.9, .5], [.99, 1.]], dtype=f64))


@pytest.mark.parametrize("n,causal,chunk", [(1, False, 4), (2, True, 1), (13, False, 4), (64, True, 16),
                                            (97, False, 8), (130, True, 64), (131, False, 200)])
def test_decay_attention_matches_fft_and_naive(n, causal, chunk):
    q, k, v = inputs(n, seed=n + 1)
    alpha, lam = DECAYS
    mask = mask_for(n, n + 2)
    bias = naive_decay_rpe_bias(alpha, lam, n)
    fast = decay_kernelized_attention(q, k, v, alpha, lam, causal, mask, chunk_size=chunk)
    torch.testing.assert_close(fast, kernelized_attention(q, k, v, bias, causal, mask), rtol=0, atol=1e-10)
    torch.testing.assert_close(fast, naive_kernelized_attention(q, k, v, bias, causal, mask), rtol=0, atol=1e-10)


@pytest.mark.parametrize("causal", [False, True])
def test_decay_attention_gradients(causal):
    n = 37
    q, k, v = inputs(n, batch=(2,), seed=3)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, *DECAYS)]
    fast = decay_kernelized_attention(*leaves, causal=causal, chunk_size=8)
    ref = naive_kernelized_attention(*leaves[:3], naive_decay_rpe_bias(leaves[3], leaves[4], n), causal)
    g = torch.randn_like(ref)
    for a, r in zip(torch.autograd.grad((fast * g).sum(), leaves), torch.autograd.grad((ref * g).sum(), leaves)):
        torch.testing.assert_close(a, r, rtol=0, atol=1e-9)


def test_decay_decoding_step_by_step_equals_parallel():
    n = 41
    q, k, v = inputs(n, seed=11)
    alpha, lam = torch.tensor([1., .3, .2], dtype=f64), torch.tensor([.9, .4, 1.], dtype=f64)
    state, outs = decay_decode_init(k[..., 0, :], v.shape[-1], 3), []
    for t in range(n):
        o, state = decay_decode_step(state, q[..., t, :], k[..., t, :], v[..., t, :], alpha, lam)
        outs.append(o)
        assert state.shape == (2, 2, 3, 3, 3)               # O(1) in t
    want = decay_kernelized_attention(q, k, v, alpha, lam, causal=True, chunk_size=4)
    torch.testing.assert_close(torch.stack(outs, -2), want, rtol=0, atol=1e-12)


def test_causality_bf16_and_errors(assert_rel_close):
    n, t = 40, 17
    q, k, v = inputs(n, dtype=torch.float32, seed=9)
    q2, k2, v2 = (x.clone() for x in (q, k, v))
    for x in (q2, k2, v2): x[..., t + 1:, :] = torch.rand_like(x[..., t + 1:, :]) * 5
    w = torch.randn(2, 32)
    fns = [lambda q, k, v: bucketed_kernelized_attention(q, k, v, w, causal=True),
           lambda q, k, v: decay_kernelized_attention(q, k, v, torch.tensor([1., .5]), torch.tensor([.9, .3]),
                                                      causal=True, chunk_size=8)]
    for f in fns:
        torch.testing.assert_close(f(q, k, v)[..., :t + 1, :], f(q2, k2, v2)[..., :t + 1, :], rtol=0, atol=1e-5)
        qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
        with torch.autocast("cpu", dtype=torch.bfloat16): out = f(qb, kb, vb)
        assert_rel_close(out, f(qb.double(), kb.double(), vb.double()), 3e-2)   # measured <= 6.4e-3
    with pytest.raises(ValueError, match="last dim R"): decay_kernelized_attention(q, k, v, torch.ones(2), torch.ones(3))
    with pytest.raises(ValueError, match="2n-1"): bucketed_toeplitz_matmul(torch.ones(5), torch.ones(4, 2), [])
    with pytest.raises(ValueError, match="v must have"): decay_kernelized_attention(q, k, v[..., :3, :], torch.ones(2), torch.ones(2))


# --- T5 buckets: always in [0, K) and the same as the layer's RelativePositionBias buckets ------------------------------
@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("K", [1, 2, 8, 32])
@pytest.mark.parametrize("max_distance", [1, 2, 4, 8, 128])
def test_t5_buckets_in_range_and_match_the_layer(bidirectional, K, max_distance):
    from kattn.layers import t5_buckets as layer_buckets
    from kattn.structured_rpe import t5_buckets
    if bidirectional and K < 2:                        # one bucket cannot hold both signs
        for f in (lambda: t5_buckets(5, K, max_distance, True), lambda: layer_buckets(torch.arange(-4, 5), K, max_distance, True)):
            with pytest.raises(ValueError, match="num_buckets must be an int >= 2"): f()
        return
    for n in (1, 5, 40):
        b = t5_buckets(n, K, max_distance, bidirectional)
        assert b.min() >= 0 and b.max() < K            # a negative bucket would silently index the bias from the end
        assert torch.equal(b, layer_buckets(torch.arange(-(n - 1), n), K, max_distance, bidirectional))


def test_nan_in_nan_out_structured_ops():
    from kattn.structured_rpe import bucketed_kernelized_attention, decay_kernelized_attention
    g = torch.Generator().manual_seed(0)
    fq, fk = (torch.rand(2, 3, 7, 4, generator=g, dtype=torch.float64) + .1 for _ in range(2))
    v = torch.randn(2, 3, 7, 5, generator=g, dtype=torch.float64)
    bb, al, la = torch.randn(3, 8, dtype=torch.float64), torch.rand(3, 2, dtype=torch.float64) + .1, torch.rand(3, 2, dtype=torch.float64) * .5 + .3
    nan = lambda t, i: t.clone().index_put_(i, torch.tensor(float("nan"), dtype=t.dtype))
    for causal in (False, True):
        rows = torch.arange(7) >= 2 if causal else torch.ones(7, dtype=torch.bool)
        ops = [lambda a, b, c, bb=bb: bucketed_kernelized_attention(a, b, c, bb, causal=causal, max_distance=16),
               lambda a, b, c, al=al, la=la: decay_kernelized_attention(a, b, c, al, la, causal=causal, chunk_size=3)]
        for op in ops:
            for args, r in (((nan(fq, (torch.tensor(0), torch.tensor(1), torch.tensor(2))), fk, v), torch.arange(7) == 2),
                            ((fq, nan(fk, (torch.tensor(0), torch.tensor(1), torch.tensor(2))), v), rows),
                            ((fq, fk, nan(v, (torch.tensor(0), torch.tensor(1), torch.tensor(2)))), rows)):
                out = op(*args)
                assert torch.isnan(out[0, 1][r]).all() and torch.isfinite(out[:, [0, 2]]).all()
        assert torch.isnan(ops[0](fq, fk, v, bb=nan(bb, (torch.tensor(1),)))[:, 1]).all()
        assert torch.isnan(ops[1](fq, fk, v, la=nan(la, (torch.tensor(1),)))[:, 1]).all()
