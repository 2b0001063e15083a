"Kernelized attention: every fast path vs the naive O(n^2) reference (float64), gradients, invariants, errors."
import copy
import pytest
import torch

from kattn.attention import (kernelized_attention, kernelized_softmax_attention, naive_kernelized_attention,
                             normalized_kernelized_attention, normalized_softmax_attention, rpe_matrix,
                             softmax_attention)
from kattn.features import EluFeatures, PositiveRandomFeatures, TrigonometricRandomFeatures
from kattn.toeplitz import toeplitz_settings

D64 = torch.float64
PATHS = [dict(), dict(causal=True), dict(rpe=True), dict(rpe=True, causal=True), dict(mask=True),
         dict(mask=True, causal=True), dict(mask=True, rpe=True), dict(mask=True, rpe=True, causal=True)]


def case(n, m=5, dv=3, batch=(2, 3), seed=0, positive=True):
    g = torch.Generator().manual_seed(seed)
    phi_q = torch.rand(*batch, n, m, generator=g, dtype=D64) + 0.05
    phi_k = torch.rand(*batch, n, m, generator=g, dtype=D64) + 0.05
    if not positive: phi_q, phi_k = phi_q - 0.3, phi_k - 0.3
    v = torch.randn(*batch, n, dv, generator=g, dtype=D64)
    b = torch.randn(batch[-1], 2 * n - 1, generator=g, dtype=D64) * 2
    mask = torch.rand(batch[0], 1, n, generator=g) < 0.3
    mask[..., 0] = False
    return phi_q, phi_k, v, b, mask


def kwargs(path, b, mask):
    return dict(causal=path.get("causal", False), rpe_bias=b if path.get("rpe") else None,
                key_padding_mask=mask if path.get("mask") else None)


@pytest.mark.parametrize("n", [1, 2, 5, 64, 129])
@pytest.mark.parametrize("path", PATHS, ids=lambda p: "-".join(p) or "plain")
def test_fast_equals_naive_float64(n, path):
    phi_q, phi_k, v, b, mask = case(n, m=7, dv=5)
    kw = kwargs(path, b, mask)
    ref = naive_kernelized_attention(phi_q, phi_k, v, **kw)
    torch.testing.assert_close(kernelized_attention(phi_q, phi_k, v, **kw), ref, rtol=0, atol=1e-10)
    # small chunks / tiny memory budget: the chunk loops really run
    with toeplitz_settings(memory_budget=1):
        torch.testing.assert_close(kernelized_attention(phi_q, phi_k, v, **kw, chunk_size=7), ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("path", PATHS[:4], ids=lambda p: "-".join(p) or "plain")
def test_signed_features_equal_naive(path):
    # TRF-like signed features: the algebra is the same (denominators stay away from 0 for this seed)
    phi_q, phi_k, v, b, mask = case(9, positive=False, seed=3)
    phi_q, phi_k = phi_q + 0.5, phi_k + 0.5
    kw = kwargs(path, b, mask)
    torch.testing.assert_close(kernelized_attention(phi_q, phi_k, v, **kw),
                               naive_kernelized_attention(phi_q, phi_k, v, **kw), rtol=0, atol=1e-10)


def test_naive_reference_reduces_to_softmax():
    # phi_q_i . phi_k_j = exp(q_i . k_j / sqrt(d)) exactly -> Eq. 10 is softmax attention with the same bias
    g = torch.Generator().manual_seed(1)
    n, d = 7, 3
    q, k, v = (torch.randn(n, d, generator=g, dtype=D64) for _ in range(3))
    b = torch.randn(2 * n - 1, generator=g, dtype=D64)
    mask = torch.tensor([False, True, False, False, False, True, False])
    phi_q, phi_k = torch.eye(n, dtype=D64), torch.exp(q @ k.T / d ** 0.5).T
    for kw in [{}, dict(causal=True), dict(rpe_bias=b), dict(rpe_bias=b, causal=True, key_padding_mask=mask)]:
        torch.testing.assert_close(naive_kernelized_attention(phi_q, phi_k, v, **kw), softmax_attention(q, k, v, **kw),
                                   rtol=0, atol=1e-12)


def test_softmax_reference_matches_sdpa_with_materialized_bias():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 3, 11, 5, generator=g, dtype=D64) for _ in range(3))
    b = torch.randn(3, 21, generator=g, dtype=D64)
    bias = rpe_matrix(b)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    torch.testing.assert_close(softmax_attention(q, k, v, rpe_bias=b), ref, rtol=0, atol=1e-12)
    causal_mask = torch.ones(11, 11, dtype=torch.bool).tril()
    ref_c = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias.masked_fill(~causal_mask, float("-inf")))
    torch.testing.assert_close(softmax_attention(q, k, v, rpe_bias=b, causal=True), ref_c, rtol=0, atol=1e-12)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: "-".join(p) or "plain")
def test_gradients_equal_naive(path):
    phi_q, phi_k, v, b, mask = case(13, m=4, dv=3, batch=(2, 2), seed=5)
    kw = kwargs(path, b, mask)
    leaves = [t.clone().requires_grad_() for t in (phi_q, phi_k, v, b)]
    def run(fn, **extra):
        kw2 = {**kw, "rpe_bias": leaves[3] if kw["rpe_bias"] is not None else None}
        out = fn(*leaves[:3], **kw2, **extra)
        gout = torch.linspace(-1, 1, out.numel(), dtype=D64).reshape(out.shape)
        return torch.autograd.grad((out * gout).sum(), leaves, allow_unused=True)
    with toeplitz_settings(memory_budget=1): fast = run(kernelized_attention, chunk_size=4)
    ref = run(naive_kernelized_attention)
    for a, r in zip(fast, ref):
        if r is None: assert a is None or torch.all(a == 0)
        else: torch.testing.assert_close(a, r, rtol=0, atol=1e-10)


@pytest.mark.parametrize("group_bytes", [1, 5000, 10 ** 9])
def test_causal_groups_of_chunks(group_bytes):
    "Causal path without bias split into groups of chunks (a running state carried between groups): equals naive."
    with toeplitz_settings(group_bytes=group_bytes): _causal_groups_of_chunks()   # 1, 5000: 1, 2 chunks per group; 1e9: one


def _causal_groups_of_chunks():
    phi_q, phi_k, v, _, mask = case(29, m=4, dv=3, batch=(2, 2), seed=11)
    leaves = [t.clone().requires_grad_() for t in (phi_q, phi_k, v)]
    leaves_r = [t.clone().requires_grad_() for t in (phi_q, phi_k, v)]
    for kw in (dict(), dict(key_padding_mask=mask)):
        out = kernelized_attention(*leaves, causal=True, chunk_size=3, **kw)
        ref = naive_kernelized_attention(*leaves_r, causal=True, **kw)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
        gout = torch.linspace(-1, 1, out.numel(), dtype=D64).reshape(out.shape)
        for a, r in zip(torch.autograd.grad((out * gout).sum(), leaves), torch.autograd.grad((ref * gout).sum(), leaves_r)):
            torch.testing.assert_close(a, r, rtol=0, atol=1e-10)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: "-".join(p) or "plain")
def test_gradcheck(path):
    phi_q, phi_k, v, b, mask = case(5, m=3, dv=2, batch=(1, 2), seed=7)
    kw = kwargs(path, b, mask)
    args = [phi_q.requires_grad_(), phi_k.requires_grad_(), v.requires_grad_()]
    if kw["rpe_bias"] is not None: args.append(b.requires_grad_())
    def f(*a):
        return kernelized_attention(*a[:3], **{**kw, "rpe_bias": a[3] if len(a) > 3 else None}, chunk_size=2)
    with toeplitz_settings(memory_budget=1): assert torch.autograd.gradcheck(f, args, fast_mode=True)


def test_bias_shift_invariance():
    phi_q, phi_k, v, b, _ = case(17)
    for causal in (False, True):
        torch.testing.assert_close(kernelized_attention(phi_q, phi_k, v, b + 123.0, causal),
                                   kernelized_attention(phi_q, phi_k, v, b, causal), rtol=0, atol=1e-10)


def _rms(a, r): return (a - r).pow(2).mean().sqrt().item()


@pytest.mark.parametrize("causal", [False, True])
def test_converges_to_softmax_as_m_grows(causal):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 24, 8, generator=g, dtype=D64) * 0.6 for _ in range(3))
    b = torch.randn(2, 47, generator=g, dtype=D64)
    exact = softmax_attention(q, k, v, b, causal)          # scale 1/sqrt(d); the helper applies d^-1/4 to q and k
    err = {m: sum(_rms(kernelized_softmax_attention(q, k, v,
                                                    b, causal, feature_map=PositiveRandomFeatures(8, m, False, seed=s).double()), exact) for s in range(4)) / 4 for m in (16, 128, 1024)}
    # Monte-Carlo error ~ 1/sqrt(m): 64x more features -> ~8x smaller; require 3x and monotone
    assert err[1024] < err[128] < err[16] and err[16] / err[1024] > 3, err
    assert err[1024] < 0.03, err


def test_normalized_converges_to_normalized_softmax():
    g = torch.Generator().manual_seed(1)
    q, k = (torch.randn(2, 20, 16, generator=g, dtype=D64) * 5 for _ in range(2))   # norms of q, k do not matter
    v = torch.randn(2, 20, 16, generator=g, dtype=D64)
    b = torch.randn(39, generator=g, dtype=D64) * 3
    exact = normalized_softmax_attention(q, k, v, b)
    err = {m: sum(_rms(normalized_kernelized_attention(q, k, v, b, feature_map=PositiveRandomFeatures(16, m, False, seed=s).double()),
                       exact) for s in range(4)) / 4 for m in (16, 1024)}
    assert err[1024] < err[16] / 3 and err[1024] < 0.02, err
    # the exact target really is softmax(q_hat . k_hat + b) with no 1/sqrt(d)
    qh, kh = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(exact, softmax_attention(qh, kh, v, b, scale=1.0), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rpe", [False, True])
def test_causality(dtype, rpe):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 40, 8, generator=g) for _ in range(3))
    b = torch.randn(2, 79, generator=g) if rpe else None
    t = 23
    k2, v2, q2 = k.clone(), v.clone(), q.clone()
    k2[..., t + 1:, :] = torch.randn(2, 2, 40 - t - 1, 8, generator=g) * 3
    v2[..., t + 1:, :] = torch.randn(2, 2, 40 - t - 1, 8, generator=g) * 100
    q2[..., t + 1:, :] *= -2
    fm = PositiveRandomFeatures(8, 16, seed=0)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        o1 = kernelized_softmax_attention(q.to(dtype), k.to(dtype), v.to(dtype), b, True, chunk_size=8, feature_map=fm)
        o2 = kernelized_softmax_attention(q2.to(dtype), k2.to(dtype), v2.to(dtype), b, True, chunk_size=8, feature_map=fm)
    if rpe:   # FFT: causal in exact arithmetic; round-off is relative to the largest term of the whole sequence
        torch.testing.assert_close(o1[..., :t + 1, :], o2[..., :t + 1, :], rtol=0, atol=2e-3)
    else:     # chunked prefix sums: bit-exact
        assert torch.equal(o1[..., :t + 1, :], o2[..., :t + 1, :])


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("rpe", [False, True])
def test_padding_left_right_and_unpadded_agree(causal, rpe):
    g = torch.Generator().manual_seed(4)
    n, p = 10, 4
    q, k, v = (torch.randn(3, n, 8, generator=g, dtype=D64) for _ in range(3))
    b = torch.randn(2 * (n + p) - 1, generator=g, dtype=D64) if rpe else None
    fm = PositiveRandomFeatures(8, 16, seed=0).double()
    def pad(t, left):
        z = torch.randn(3, p, t.shape[-1], generator=g, dtype=D64) * 50
        return torch.cat([z, t] if left else [t, z], -2)
    ml, mr = torch.arange(n + p) < p, torch.arange(n + p) >= n
    out_l = kernelized_softmax_attention(pad(q, 1), pad(k, 1), pad(v, 1), b, causal, ml, feature_map=fm)[:, p:]
    out_r = kernelized_softmax_attention(pad(q, 0), pad(k, 0), pad(v, 0), b, causal, mr, feature_map=fm)[:, :n]
    torch.testing.assert_close(out_l, out_r, rtol=0, atol=1e-10)
    b0 = None if b is None else b[p:-p]                           # the same offsets -(n-1)..(n-1)
    torch.testing.assert_close(out_r, kernelized_softmax_attention(q, k, v, b0, causal, feature_map=fm), rtol=0, atol=1e-10)


def test_padded_keys_can_hold_nonfinite_values():
    phi_q, phi_k, v, b, _ = case(6, batch=(1, 1))
    mask = torch.tensor([False, False, True, False, True, False])
    phi_k2, v2 = phi_k.clone(), v.clone()
    phi_k2[..., 2, :], v2[..., 4, :] = float("inf"), float("nan")
    for kw in [{}, dict(causal=True), dict(rpe_bias=b)]:
        torch.testing.assert_close(kernelized_attention(phi_q, phi_k2, v2, key_padding_mask=mask, **kw),
                                   kernelized_attention(phi_q, phi_k, v, key_padding_mask=mask, **kw))


def test_all_keys_padded_gives_zeros():
    phi_q, phi_k, v, b, _ = case(4, batch=(1, 1))
    mask = torch.ones(4, dtype=torch.bool)
    for kw in [{}, dict(causal=True), dict(rpe_bias=b)]:
        assert torch.equal(kernelized_attention(phi_q, phi_k, v, key_padding_mask=mask, **kw), torch.zeros_like(v))
    assert torch.equal(softmax_attention(phi_q, phi_k, v, key_padding_mask=mask), torch.zeros_like(v))


def test_eval_determinism():
    fm = PositiveRandomFeatures(8, 16).eval()
    q, k, v = (torch.randn(2, 12, 8) for _ in range(3))
    b = torch.randn(23)
    o1 = normalized_kernelized_attention(q, k, v, b, feature_map=fm)
    fm2 = PositiveRandomFeatures(8, 16).eval(); fm2.load_state_dict(fm.state_dict())
    assert torch.equal(o1, normalized_kernelized_attention(q, k, v, b, feature_map=fm))
    assert torch.equal(o1, normalized_kernelized_attention(q, k, v, b, feature_map=fm2))


@pytest.mark.parametrize("fm", [PositiveRandomFeatures(16, 32, seed=0), TrigonometricRandomFeatures(16, 16, seed=0),
                                EluFeatures(16)], ids=["prf", "trf", "elu"])
@pytest.mark.parametrize("path", PATHS[:4], ids=lambda p: "-".join(p) or "plain")
def test_bf16_autocast_matches_float64(fm, path):
    # the same estimator (same draws) in float64 on the same bf16-rounded inputs is the reference: a zero, NaN or
    # mis-scaled output fails (relative error 1 or more), bf16 round-off passes (measured: <= 2e-3)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 96, 16, generator=g).bfloat16() for _ in range(3))
    b = (torch.randn(2, 191, generator=g) * 30 + 500) if path.get("rpe") else None     # large biases: exp(b - max b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = kernelized_softmax_attention(q, k, v, b, path.get("causal", False), feature_map=fm)
    ref = kernelized_softmax_attention(q.double(), k.double(), v.double(),
                                       None if b is None else b.double(), path.get("causal", False), feature_map=copy.deepcopy(fm).double())
    assert torch.isfinite(out).all()
    assert (out.double() - ref).norm() / ref.norm() < 2e-2


def test_fp32_close_to_float64():
    phi_q, phi_k, v, b, mask = case(200, m=16, dv=8, batch=(1, 2))
    b = b / 4                                   # biases spanning a few nats (FFT round-off: see the next test)
    for kw in [dict(causal=True), dict(rpe_bias=b), dict(rpe_bias=b, causal=True, key_padding_mask=mask)]:
        ref = naive_kernelized_attention(phi_q, phi_k, v, **kw)
        kw32 = {k_: (t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t) for k_, t in kw.items()}
        out = kernelized_attention(phi_q.float(), phi_k.float(), v.float(), **kw32)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-4)


def test_wide_bias_range():
    # FFT round-off is absolute, relative to the largest weight: a bias spanning ~24 nats is lost in float32 for the
    # queries that only see small weights, but float64 (FFT in float64) still matches the reference.
    phi_q, phi_k, v, _, _ = case(64, m=4, dv=3, batch=(1, 1))
    b = torch.linspace(-24, 0, 127, dtype=D64)          # future offsets dominate
    for causal in (False, True):
        ref = naive_kernelized_attention(phi_q, phi_k, v, rpe_bias=b, causal=causal)
        torch.testing.assert_close(kernelized_attention(phi_q, phi_k, v, rpe_bias=b, causal=causal), ref,
                                   rtol=0, atol=1e-9)
    # causal: the max runs over the admissible offsets only, so past weights are not scaled into underflow
    out32 = kernelized_attention(phi_q.float(), phi_k.float(), v.float(), rpe_bias=b.float(), causal=True)
    assert torch.isfinite(out32).all()


def test_cross_attention_lengths():
    phi_q, _, _, _, _ = case(7)
    _, phi_k, v, _, _ = case(11)
    ref = naive_kernelized_attention(phi_q, phi_k, v)
    torch.testing.assert_close(kernelized_attention(phi_q, phi_k, v), ref, rtol=0, atol=1e-10)


def test_errors():
    phi, v = torch.rand(2, 5, 4), torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match="v must have n = 4"): kernelized_attention(phi, phi[:, :4], v)
    with pytest.raises(ValueError, match=r"2n-1\] = \[\.\.\., 9\]"): kernelized_attention(phi, phi, v, rpe_bias=torch.randn(8))
    with pytest.raises(ValueError, match="same n"): kernelized_attention(phi[:, :4], phi, v, causal=True)
    with pytest.raises(ValueError, match="same n"): kernelized_attention(phi[:, :4], phi, v, rpe_bias=torch.randn(9))
    with pytest.raises(ValueError, match="same last dim"): kernelized_attention(phi, phi[..., :3], v)
    with pytest.raises(ValueError, match="phi_q must have shape"): kernelized_attention(phi[0, 0], phi, v)
    with pytest.raises(TypeError, match="phi_q must be floating point"): kernelized_attention(phi.long(), phi, v)
    with pytest.raises(TypeError, match="rpe_bias must be floating point"):
        kernelized_attention(phi, phi, v, rpe_bias=torch.ones(9, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"): kernelized_attention(phi.tolist(), phi, v)
    with pytest.raises(TypeError, match="key_padding_mask must be a bool"):
        kernelized_attention(phi, phi, v, key_padding_mask=torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"\[B, 1, n\]"):
        kernelized_attention(phi, phi, v, key_padding_mask=torch.zeros(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="batch dims"): kernelized_attention(torch.rand(3, 5, 4), phi, v)
    with pytest.raises(ValueError, match="chunk_size"): kernelized_attention(phi, phi, v, causal=True, chunk_size=0)
    with pytest.raises(ValueError, match="v must have"): softmax_attention(phi, phi, v[..., 0])
    with pytest.raises(ValueError, match="rpe_bias must have shape"): softmax_attention(phi, phi, v, rpe_bias=torch.randn(2, 7))


@pytest.mark.gpu
def test_cuda_matches_cpu():
    phi_q, phi_k, v, b, mask = case(33)
    for kw in [dict(causal=True), dict(rpe_bias=b, causal=True, key_padding_mask=mask), dict(rpe_bias=b)]:
        cpu = kernelized_attention(phi_q, phi_k, v, **kw)
        kwc = {k_: (t.cuda() if isinstance(t, torch.Tensor) else t) for k_, t in kw.items()}
        gpu = kernelized_attention(phi_q.cuda(), phi_k.cuda(), v.cuda(), **kwc)
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-10)


def test_full_gradcheck_rpe_causal_masked():
    phi_q, phi_k, v, b, mask = case(4, m=2, dv=2, batch=(1, 1), seed=8)
    args = [t.requires_grad_() for t in (phi_q, phi_k, v, b)]
    assert torch.autograd.gradcheck(
        lambda a, b_, c, d: kernelized_attention(a, b_, c, rpe_bias=d, causal=True, key_padding_mask=mask), args)


def test_rpe_backward_with_checkpointed_chunks_equals_single_chunk():
    phi_q, phi_k, v, b, _ = case(33, m=6, dv=4, batch=(2, 1), seed=9)
    def grads(budget):
        leaves = [t.clone().requires_grad_() for t in (phi_q, phi_k, v, b)]
        with toeplitz_settings(memory_budget=budget, dense_max_n=0):
            out = kernelized_attention(*leaves[:3], rpe_bias=leaves[3])
            return torch.autograd.grad(out.pow(2).sum(), leaves)
    for a, r in zip(grads(1), grads(2 ** 30)): torch.testing.assert_close(a, r, rtol=0, atol=1e-11)


def test_rpe_block_plans():
    from kattn.toeplitz import _plan_blocks
    row = 2 * 72 * 8                                   # one (feature, column) signal: B = 2, L = 72, float64
    def plan(cap, units=1, budget=2 ** 40, m=7, dv=5):    # cap None: CUDA, where only the budget applies
        with toeplitz_settings(block_bytes=cap, memory_budget=budget):
            return _plan_blocks(m, 2, dv, 72, 8, "cpu" if cap else "cuda", units)
    assert [plan(row * p) for p in (1, 3, 5, 10, 20, 10 ** 6)] == [(1, 1), (1, 3), (1, 5), (2, 5), (4, 5), (7, 5)]
    assert plan(row * 15) == (3, 5) and plan(row * 15, m=6) == (3, 5) and plan(row * 20, m=6) == (3, 5)   # even split
    assert plan(row * 32, dv=65) == (1, 22) and plan(row * 64, dv=65) == (1, 33)    # 22+22+21, 33+32: no 1-wide sliver
    assert plan(None, units=4, budget=4 * row * 10) == (2, 5)            # no cap: the budget alone decides
    assert plan(row * 20, units=4, budget=4 * row * 3) == (1, 3)         # the smaller of budget/units and the cap
    assert plan(1) == (1, 1)                                             # never below one signal per block


@pytest.mark.parametrize("pairs", [1, 3, 5, 10, 20])
@pytest.mark.parametrize("causal", [False, True])
def test_rpe_blocks_of_features_and_columns_equal_naive(pairs, causal):
    # n = 33 -> L = 72, B = 2, d_v + 1 = 5 columns, m = 7 features: the plans above, remainders included
    phi_q, phi_k, v, b, mask = case(33, m=7, dv=4, batch=(2, 1), seed=11)
    kw = dict(causal=causal, key_padding_mask=mask)
    leaves = [t.clone().requires_grad_() for t in (phi_q, phi_k, v, b)]
    with toeplitz_settings(block_bytes=2 * 72 * 8 * pairs, dense_max_n=0):
        fast = kernelized_attention(*leaves[:3], rpe_bias=leaves[3], **kw)
    ref_leaves = [t.clone().requires_grad_() for t in (phi_q, phi_k, v, b)]
    ref = naive_kernelized_attention(*ref_leaves[:3], rpe_bias=ref_leaves[3], **kw)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-10)
    gout = torch.randn_like(ref)
    for a, r in zip(torch.autograd.grad((fast * gout).sum(), leaves), torch.autograd.grad((ref * gout).sum(), ref_leaves)):
        torch.testing.assert_close(a, r, rtol=0, atol=1e-10)


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "16M"])
def test_memory_budget_and_block_bytes_must_be_positive_ints(bad):
    for name in ("memory_budget", "block_bytes"):
        with pytest.raises(ValueError, match=name):
            with toeplitz_settings(**{name: bad}): pass


def test_tuning_is_not_in_the_signature():
    phi_q, phi_k, v, b, _ = case(4)
    for name in ("memory_budget", "block_bytes"):
        with pytest.raises(TypeError, match=name): kernelized_attention(phi_q, phi_k, v, rpe_bias=b, **{name: 2 ** 20})


# --- NaN in, NaN out: a NaN input reaches every output it feeds; only fully masked rows are 0 --------------------------
def _fm(cls):
    return cls(4, 8, seed=0)


def _fft(f, *a, **kw):
    with toeplitz_settings(block_bytes=256, dense_max_n=0): return f(*a, **kw)


NAN_OPS = {
    "softmax_attention": lambda q, k, v, **kw: softmax_attention(q, k, v, **kw),
    "normalized_softmax_attention": lambda q, k, v, **kw: normalized_softmax_attention(q, k, v, **kw),
    "naive_kernelized_attention": lambda q, k, v, **kw: naive_kernelized_attention(q.exp(), k.exp(), v, **kw),
    "kernelized_attention": lambda q, k, v, **kw: kernelized_attention(q.exp(), k.exp(), v, **kw),
    "kernelized_attention_fft": lambda q, k, v, **kw: _fft(kernelized_attention, q.exp(), k.exp(), v, **kw),
    "kernelized_softmax_attention_prf": lambda q, k, v, **kw: kernelized_softmax_attention(
        q, k, v, **kw, feature_map=_fm(PositiveRandomFeatures)),
    "kernelized_softmax_attention_trf": lambda q, k, v, **kw: kernelized_softmax_attention(
        q, k, v, **kw, feature_map=_fm(TrigonometricRandomFeatures)),
    "normalized_kernelized_attention": lambda q, k, v, **kw: normalized_kernelized_attention(
        q, k, v, **kw, feature_map=_fm(PositiveRandomFeatures)),
}
NAN_PATHS = [dict(), dict(causal=True), dict(rpe=True), dict(rpe=True, causal=True)]


def _nan_inputs(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 3, n, 4, generator=g, dtype=D64) * 0.5 for _ in range(3))
    return q, k, v, torch.randn(3, 2 * n - 1, generator=g, dtype=D64)


def _poisoned(t, idx):
    t = t.clone(); t[idx] = float("nan"); return t


@pytest.mark.parametrize("op", sorted(NAN_OPS))
@pytest.mark.parametrize("path", NAN_PATHS, ids=lambda p: "+".join(p) or "plain")
@pytest.mark.parametrize("where", ["q", "k", "v", "rpe_bias", "rpe_bias_all"])
def test_nan_in_nan_out(op, path, where):
    if where.startswith("rpe") and not path.get("rpe"): pytest.skip("no bias on this path")
    q, k, v, b = _nan_inputs()
    causal, n, j = path.get("causal", False), q.shape[-2], 2
    rows = torch.arange(n) >= j if causal else torch.ones(n, dtype=torch.bool)   # queries that admit key j
    args = dict(q=q, k=k, v=v, rpe_bias=b)
    if where == "q": args["q"] = _poisoned(q, (0, 1, j, 0)); rows = torch.arange(n) == j
    if where == "k": args["k"] = _poisoned(k, (0, 1, j, 1))
    if where == "v": args["v"] = _poisoned(v, (0, 1, j, 2))
    if where == "rpe_bias": args["rpe_bias"] = _poisoned(b, (1, n - 1))       # offset 0: every query admits it
    if where == "rpe_bias_all": args["rpe_bias"] = _poisoned(b, (1,))           # head 1's whole bias row
    if where.startswith("rpe"): rows = torch.ones(n, dtype=torch.bool)
    out = NAN_OPS[op](args["q"], args["k"], args["v"], rpe_bias=args["rpe_bias"] if path.get("rpe") else None,
                      causal=causal)
    hit = out[:, 1] if where.startswith("rpe") else out[0, 1]               # the head (and batch) that saw the NaN
    cols = [2] if where == "v" else slice(None)
    assert torch.isnan(hit[..., rows, :][..., cols]).all(), f"{op}: a NaN in {where} did not reach its outputs"
    assert torch.isfinite(out[:, [0, 2]]).all(), f"{op}: a NaN leaked into other heads"


@pytest.mark.parametrize("op", sorted(NAN_OPS))
def test_fully_masked_rows_are_zero_and_nan_still_propagates(op):
    q, k, v, b = _nan_inputs()
    mask = torch.zeros(2, 1, 6, dtype=torch.bool); mask[0] = True            # batch 0: every key padded
    out = NAN_OPS[op](_poisoned(q, (1, 1, 3, 0)), k, v, key_padding_mask=mask)
    assert (out[0] == 0).all()
    assert torch.isnan(out[1, 1, 3]).all() and torch.isfinite(out[1, [0, 2]]).all()


# --- double backward: the dense forms are twice differentiable; the FFT RPE path says it is not -----------------------
def _dd_inputs(n=5):
    g = torch.Generator().manual_seed(0)
    fq, fk = (torch.rand(1, n, 3, generator=g, dtype=D64).add(0.1).requires_grad_() for _ in range(2))
    v = torch.randn(1, n, 2, generator=g, dtype=D64, requires_grad=True)
    return fq, fk, v, torch.randn(2 * n - 1, generator=g, dtype=D64, requires_grad=True)


@pytest.mark.parametrize("causal", [False, True])
def test_double_backward_dense_rpe_path(causal):
    f = lambda fq, fk, v, b: kernelized_attention(fq, fk, v, rpe_bias=b, causal=causal)
    with toeplitz_settings(dense_max_n=5): assert torch.autograd.gradgradcheck(f, _dd_inputs())


@pytest.mark.parametrize("causal", [False, True])
def test_double_backward_fft_rpe_path_raises(causal):
    fq, fk, v, b = _dd_inputs()
    f = lambda fq, fk, v, b: _fft(kernelized_attention, fq, fk, v, rpe_bias=b, causal=causal)
    assert torch.autograd.gradcheck(f, (fq, fk, v, b))                     # first order is exact
    for wrt in (fq, fk, v, b):
        g, = torch.autograd.grad(f(fq, fk, v, b).square().sum(), wrt, create_graph=True)
        with pytest.raises(RuntimeError, match="double backward"):
            torch.autograd.grad(g.square().sum(), (fq, fk, v, b), allow_unused=True)


# --- dense/FFT switch: the same numbers on both sides, and the ops moved from the layers ---------------------------
@pytest.mark.parametrize("n", [9, 40])
@pytest.mark.parametrize("causal", [False, True])
def test_dense_and_fft_forms_agree_across_the_switch(n, causal):
    phi_q, phi_k, v, b, mask = case(n, m=5, dv=3, batch=(2, 2), seed=n)
    kw = dict(causal=causal, key_padding_mask=mask)
    res = []
    for switch in (n, n - 1):                                  # the crossover at n: dense; at n - 1: FFT
        leaves = [t.clone().requires_grad_() for t in (phi_q, phi_k, v, b)]
        with toeplitz_settings(dense_max_n=switch): out = kernelized_attention(*leaves[:3], rpe_bias=leaves[3], **kw)
        res.append((out, torch.autograd.grad((out * torch.cos(out)).sum(), leaves)))
    torch.testing.assert_close(res[0][0], res[1][0], rtol=0, atol=1e-12)
    for a, r in zip(res[0][1], res[1][1]): torch.testing.assert_close(a, r, rtol=0, atol=1e-12)


def test_dense_kernelized_attention_is_the_rpe_dense_form():
    import kattn.layers
    from kattn.attention import dense_kernelized_attention
    assert kattn.layers.dense_kernelized_attention is dense_kernelized_attention    # the old import path works
    phi_q, phi_k, v, b, mask = case(11, m=4, dv=3, batch=(2, 3), seed=3)
    for kw in (dict(), dict(causal=True, key_padding_mask=mask)):
        torch.testing.assert_close(dense_kernelized_attention(phi_q, phi_k, v, rpe_matrix(b), **kw),
                                   naive_kernelized_attention(phi_q, phi_k, v, b, **kw), rtol=0, atol=1e-12)


def test_attention_family_options_are_keyword_only():
    import inspect
    for f in (kernelized_attention, normalized_softmax_attention, normalized_kernelized_attention):
        params = inspect.signature(f).parameters
        for name in ("eps", "chunk_size", "clip"):
            if name in params: assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, (f.__name__, name)
    assert list(inspect.signature(softmax_attention).parameters) == ["q", "k", "v", "rpe_bias", "causal", "key_padding_mask", "scale"]
    assert list(inspect.signature(kernelized_attention).parameters)[:6] == ["phi_q", "phi_k", "v", "rpe_bias", "causal", "key_padding_mask"]
    for f in (kernelized_softmax_attention, normalized_kernelized_attention, normalized_softmax_attention):
        params = inspect.signature(f).parameters
        assert list(params)[:7] == ["q", "k", "v", "rpe_bias", "causal", "key_padding_mask", "scale"], f.__name__
        assert all(p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD) for p in list(params.values())[7:])


def test_attention_has_no_fft_of_its_own():
    "Every RPE path goes through kattn.toeplitz; the attention module computes no transform itself."
    import inspect
    import kattn.attention
    assert "fft" not in inspect.getsource(kattn.attention)
