"Tests for kattn.layers: registry, MultiheadAttention, RelativePositionBias, decoding."
import copy
import pytest
import torch
from torch import nn
from kattn.attention import softmax_attention, normalized_kernelized_attention
from kattn.layers import (ATTENTIONS, AttentionSpec, MultiheadAttention, RelativePositionBias,
                          check_causality, convert_attention, register_attention, t5_buckets)

ALL_NAMES = ["softmax", "softmax_rpe", "normalized_softmax", "linear_elu", "performer", "trf", "nprf_rpe", "ra", "rfa", "lara", "gmm_rks",
             "gmm_prf", "fastfood_rks", "fastfood_prf", "generative_rks", "generative_prf"]
DETERMINISTIC = {"ra": {"eval_mode": "mean"}}           # RA samples at eval unless asked for its expectation
CAUSAL = [n for n, s in ATTENTIONS.items() if s.causal]


def det(name, **kw):
    "A float64 eval-mode layer whose output is a deterministic function of its input."
    torch.manual_seed(0)
    m = MultiheadAttention(16, 4, name, max_len=24, **DETERMINISTIC.get(name, {}), **kw).double().eval()
    if m.rpe is not None: nn.init.normal_(m.rpe.weight)
    return m


def test_registry_complete():
    assert set(ALL_NAMES) <= set(ATTENTIONS), sorted(set(ALL_NAMES) - set(ATTENTIONS))
    for name, spec in ATTENTIONS.items():
        assert isinstance(spec, AttentionSpec) and spec.rpe in ("none", "optional", "required") and spec.feature_map


@pytest.mark.parametrize("name", sorted(ATTENTIONS))
@pytest.mark.parametrize("causal", [False, True])
def test_forward_backward_finite(name, causal):
    if causal and not ATTENTIONS[name].causal: pytest.skip("not causal")
    torch.manual_seed(0)
    m = MultiheadAttention(32, 4, name, causal=causal, max_len=16)
    x = torch.randn(2, 13, 32, requires_grad=True)
    kpm = torch.zeros(2, 13, dtype=torch.bool); kpm[1, -3:] = True
    y = m(x, key_padding_mask=kpm)
    assert y.shape == (2, 13, 32) and torch.isfinite(y).all()
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert m.q_proj.weight.grad.abs().sum() > 0            # the attention pattern depends on the queries


@pytest.mark.parametrize("name", sorted(ATTENTIONS))
def test_bf16_autocast_matches_float64(name, assert_rel_close):
    "Every algorithm under bf16 autocast against the same layer (same draws, eval mode) in float64."
    torch.manual_seed(0)
    m = MultiheadAttention(32, 4, name, causal=ATTENTIONS[name].causal, max_len=16).eval()
    x = torch.randn(2, 11, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16): y = m(x)
        ref = copy.deepcopy(m).double()(x.double())
    assert_rel_close(y, ref, 2e-2)                                         # measured <= 5.3e-3


@pytest.mark.parametrize("name", CAUSAL)
def test_causality(name):
    m = det(name, causal=True)
    x = torch.randn(2, 17, 16, dtype=torch.float64)
    for t in (0, 6, 15): assert check_causality(m, x, t) < 1e-10


@pytest.mark.parametrize("name", sorted(ATTENTIONS))
def test_padding_invariance(name):
    "Padded keys change nothing; left and right padding agree with the unpadded sequence."
    m = det(name)
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    junk = torch.randn(2, 3, 16, dtype=torch.float64) * 30
    with torch.no_grad():
        ref = m(x)
        right = m(torch.cat([x, junk], 1), key_padding_mask=torch.arange(14).expand(2, -1) >= 11)[:, :11]
        left = m(torch.cat([junk, x], 1), key_padding_mask=torch.arange(14).expand(2, -1) < 3)[:, 3:]
    torch.testing.assert_close(right, ref, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(left, ref, atol=1e-9, rtol=1e-9)


def _assert_steps_equal_forward(m, n=12):
    "Decode n positions one by one with m.step; the outputs must equal the parallel causal forward. Returns the last state."
    x = torch.randn(2, n, 16, dtype=torch.float64)
    state, outs = None, []
    with torch.no_grad():
        par = m(x)
        for t in range(n):
            y, state = m.step(x[:, t:t + 1], state); outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 1), par, atol=1e-10, rtol=1e-9)
    return state


@pytest.mark.parametrize("name", CAUSAL)
def test_parallel_equals_step_by_step(name):
    m = det(name, causal=True)
    state = _assert_steps_equal_forward(m)
    if ATTENTIONS[name].recurrent and m.rpe is None:
        box = {"lo", "hi"} if m.algorithm.clip else set()               # sign-indefinite maps keep the values' box
        assert set(state) == {"S", "t"} | box and state["S"].shape[-2:] == (m.algorithm.feature_map.num_outputs, 5)


def test_nprf_layer_matches_luo_reference():
    m = det("nprf_rpe")
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    q, k, v = (m._split(p(x)) for p in (m.q_proj, m.k_proj, m.v_proj))
    ref = normalized_kernelized_attention(q, k, v, m.rpe(9), feature_map=m.algorithm.feature_map)
    torch.testing.assert_close(m(x), m._merge(ref), atol=1e-10, rtol=1e-10)


def test_cross_attention_shapes_and_padding():
    m = det("performer")
    x, ctx = torch.randn(2, 5, 16, dtype=torch.float64), torch.randn(2, 8, 16, dtype=torch.float64)
    kpm = torch.zeros(2, 8, dtype=torch.bool); kpm[:, -2:] = True
    y = m(x, context=ctx, key_padding_mask=kpm)
    torch.testing.assert_close(y, m(x, context=ctx[:, :6]), atol=1e-10, rtol=1e-10)


def test_rpe_convention_and_sharing():
    rpb = RelativePositionBias(3, 8, init_std=1.0)
    with torch.no_grad():
        for n in (1, 4, 8):
            b = rpb(n)
            assert b.shape == (3, 2 * n - 1)
            for i in range(n):
                for j in range(n): assert torch.equal(b[:, (j - i) + n - 1], rpb.weight[:, (j - i) + 7])
    assert RelativePositionBias(2, 5)(5).abs().sum() == 0                   # zero init
    shared = RelativePositionBias(4, 16)
    l1, l2 = MultiheadAttention(16, 4, "nprf_rpe", rpe=shared), MultiheadAttention(16, 4, "softmax", rpe=shared)
    assert l1.rpe is l2.rpe is shared
    (l1(torch.randn(1, 6, 16)) + l2(torch.randn(1, 6, 16))).sum().backward()
    assert shared.weight.grad is not None and shared.weight.grad.abs().sum() > 0


def test_t5_buckets_are_toeplitz_and_bounded():
    b = RelativePositionBias(2, 200, num_buckets=32, max_distance=64)
    assert b(200).shape == (2, 399) and b.weight.shape == (2, 32)
    off = torch.arange(-300, 301)
    bk = t5_buckets(off, 32, 64)
    assert bk.min() == 0 and bk.max() == 31
    assert (bk[300 + 64:] == 31).all() and (bk[:300 - 63] == 15).all()     # saturate beyond max_distance
    assert torch.equal(bk[300 - 7:300 + 8], torch.tensor([7, 6, 5, 4, 3, 2, 1, 0, 17, 18, 19, 20, 21, 22, 23]))


def test_bad_configs_raise_clear_errors():
    with pytest.raises(ValueError, match="valid names: .*softmax"): MultiheadAttention(16, 4, "flash")
    with pytest.raises(ValueError, match="divisible"): MultiheadAttention(18, 4)
    with pytest.raises(ValueError, match="max_len=8"): MultiheadAttention(16, 4, "softmax_rpe", max_len=8)(torch.randn(1, 9, 16))
    with pytest.raises(ValueError, match="max_len=8"): MultiheadAttention(16, 4, "nprf_rpe", max_len=8)(torch.randn(1, 9, 16))
    with pytest.raises(ValueError, match="requires rpe"): MultiheadAttention(16, 4, "softmax_rpe", rpe=False)
    with pytest.raises(ValueError, match="does not support rpe"): MultiheadAttention(16, 4, "lara", rpe=True)
    with pytest.raises(TypeError, match="bad options"): MultiheadAttention(16, 4, "performer", num_feature=3)
    with pytest.raises(ValueError, match=r"\[B, n, d_model=16\]"): MultiheadAttention(16, 4)(torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="bool"): MultiheadAttention(16, 4)(torch.randn(2, 5, 16), key_padding_mask=torch.zeros(2, 5))
    with pytest.raises(ValueError, match="step"): MultiheadAttention(16, 4).step(torch.randn(1, 1, 16))


def test_causal_on_noncausal_algorithm_raises(monkeypatch):
    monkeypatch.setitem(ATTENTIONS, "bidir_only", AttentionSpec(ATTENTIONS["softmax"].build, causal=False, rpe="none",
                                                                feature_map="none"))
    MultiheadAttention(16, 4, "bidir_only")                                  # bidirectional is fine
    with pytest.raises(ValueError, match="does not support causal=True"): MultiheadAttention(16, 4, "bidir_only", causal=True)
    with pytest.raises(TypeError): register_attention("x", object())


def test_normalized_softmax_equals_reference_and_ignores_norms():
    from kattn.attention import normalized_softmax_attention
    torch.manual_seed(0)
    m = MultiheadAttention(16, 4, "normalized_softmax", causal=True, rpe=True, max_len=9).double().eval()
    nn.init.normal_(m.rpe.weight)
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    q, k, v = m._split(m.q_proj(x)), m._split(m.k_proj(x)), m._split(m.v_proj(x))
    ref = m._merge(normalized_softmax_attention(q, k, v, m.rpe(9), causal=True))
    assert torch.allclose(m(x), ref, atol=1e-12)
    with torch.no_grad(): m.q_proj.weight.mul_(7.0); m.q_proj.bias.mul_(7.0)       # query norms do not matter
    assert torch.allclose(m(x), ref, atol=1e-12)


@pytest.mark.parametrize("trained,converted,rpe", [("softmax", "performer", False), ("softmax", "performer", True),
                                                   ("normalized_softmax", "nprf_rpe", False),
                                                   ("normalized_softmax", "nprf_rpe", True)])
def test_convert_attention_estimates_the_trained_attention(trained, converted, rpe):
    import copy
    torch.manual_seed(1)
    orig = nn.Sequential(MultiheadAttention(16, 2, trained, causal=True, rpe=rpe, max_len=10)).double().eval()
    if rpe: nn.init.normal_(orig[0].rpe.weight)
    x = torch.randn(3, 10, 16, dtype=torch.float64) * 0.5
    with torch.no_grad(): ref = orig(x)
    def err(m):
        errs = []
        for seed in range(6):
            c = convert_attention(copy.deepcopy(orig), converted, num_features=m, seed=seed, orthogonal=False).eval()
            assert c[0].rpe is not None if rpe else c[0].rpe is None
            with torch.no_grad(): errs.append((c(x) - ref).pow(2).mean().sqrt().item())
        return sum(errs) / len(errs)
    small, large = err(32), err(2048)
    assert large < 0.05 * ref.pow(2).mean().sqrt().item() and small / large > 4, (small, large)


def test_convert_attention_errors():
    m = nn.Sequential(MultiheadAttention(16, 2, "softmax", causal=True, rpe=True, max_len=8))
    with pytest.raises(ValueError, match="has rpe"): convert_attention(m, "lara")
    with pytest.raises(ValueError, match="no MultiheadAttention"): convert_attention(m, "performer", where=lambda n, l: False)
    with pytest.raises(TypeError, match="bad options"): convert_attention(m, "performer", nonsense=1)
    assert convert_attention(m, "performer", where=lambda n, l: n == "0")[0].attention == "performer"


def test_ra_default_eval_reproducible_and_step_equals_forward():
    # RA's default eval (the official code's: a component per query, no Gaussian noise) uses fixed counter-based draws:
    # two calls agree bit for bit, a sequence gives the same output alone or in a batch, and decoding step by step
    # (each step recomputes the prefix) equals the parallel forward
    torch.manual_seed(0)
    m = MultiheadAttention(16, 4, "ra", causal=True).double().eval()
    x = torch.randn(2, 12, 16, dtype=torch.float64)
    state, outs = None, []
    with torch.no_grad():
        par = m(x)
        assert torch.equal(par, m(x)) and torch.equal(m(x[1:]), par[1:])
        for t in range(12):
            y, state = m.step(x[:, t:t + 1], state); outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 1), par, atol=1e-10, rtol=1e-9)
    m.train()
    assert (m(x) - m(x)).abs().max() > 1e-3                        # training draws stay random


def test_lara_chunked_step_equals_forward():
    # causal LARA with a fixed chunk_size: chunks do not depend on the length, so decoding equals the parallel forward
    # (past the first chunk too: 12 positions, chunks of 3, 4 proposals)
    _assert_steps_equal_forward(det("lara", causal=True, num_proposals=4, chunk_size=3, mix_keys=True))


# --- NaN in, NaN out for every non-randomized algorithm of the registry (kattn.randomized is tested on its own) ---------
NAN_NAMES = [n for n in sorted(ATTENTIONS) if n not in ("ra", "rfa", "lara")]


def _poison(t, idx):
    t = t.clone(); t[idx] = float("nan"); return t


@pytest.mark.parametrize("name", NAN_NAMES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("where", ["q", "k", "v", "rpe_bias", "attn_bias", "x"])
def test_nan_in_nan_out(name, causal, where):
    m = det(name, causal=causal)
    if where == "rpe_bias" and m.rpe is None: pytest.skip("no relative bias")
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 4, 7, 4, generator=g, dtype=torch.float64) * 0.5 for _ in range(3))
    rpe = None if m.rpe is None else m.rpe(7).detach()
    ab, j = None, 3
    rows = torch.arange(7) >= j if causal else torch.ones(7, dtype=torch.bool)
    if where == "x":
        x = _poison(torch.randn(2, 7, 16, generator=g, dtype=torch.float64), (0, j, 5))
        with torch.no_grad(): out = m(x)
        assert torch.isnan(out[0, rows]).all() and torch.isfinite(out[1]).all(), name
        return
    if where == "q": q = _poison(q, (0, 1, j, 0)); rows = torch.arange(7) == j
    if where == "k": k = _poison(k, (0, 1, j, 1))
    if where == "v": v = _poison(v, (0, 1, j, 2))
    if where == "rpe_bias": rpe = _poison(rpe, (1, 6)); rows = torch.ones(7, dtype=torch.bool)   # offset 0
    if where == "attn_bias":
        ab = _poison(torch.zeros(4, 7, 7, dtype=torch.float64), (1, j, j)); rows = torch.arange(7) == j
    with torch.no_grad(): out = m.algorithm(q, k, v, rpe_bias=rpe, causal=causal, attn_bias=ab)
    hit = out[:, 1] if where in ("rpe_bias", "attn_bias") else out[0, 1]
    cols = [2] if where == "v" else slice(None)
    assert torch.isnan(hit[..., rows, :][..., cols]).all(), f"{name}: a NaN in {where} did not reach its outputs"
    assert torch.isfinite(out[:, [0, 2, 3]]).all(), f"{name}: a NaN leaked into other heads"


@pytest.mark.parametrize("name", NAN_NAMES)
def test_fully_masked_rows_are_zero(name):
    m = det(name)
    q, k, v = (torch.randn(2, 4, 5, 4, dtype=torch.float64) for _ in range(3))
    kpm = torch.zeros(2, 1, 5, dtype=torch.bool); kpm[0] = True
    with torch.no_grad(): out = m.algorithm(q, k, v, rpe_bias=None if m.rpe is None else m.rpe(5), key_padding_mask=kpm)
    assert (out[0] == 0).all() and torch.isfinite(out[1]).all() and out[1].abs().sum() > 0


# --- edges: clear errors instead of silently wrong results ------------------------------------------------------------
def test_softmax_layer_rejects_bad_rpe_and_causal_cross_lengths():
    from kattn.layers import SoftmaxAttention
    sa = SoftmaxAttention()
    q = torch.randn(1, 2, 5, 4)
    with pytest.raises(ValueError, match=r"rpe_bias.*2n-1.*9"): sa(q, q, q, rpe_bias=torch.zeros(2, 10))
    with pytest.raises(ValueError, match="causal"): sa(q[..., :3, :], q, q, causal=True)
    with pytest.raises(ValueError, match="attn_bias"): sa(q, q, q, attn_bias=torch.zeros(2, 5, 4))


@pytest.mark.parametrize("name", ["softmax", "softmax_rpe", "normalized_softmax"])
def test_registry_builds_reject_head_dim_zero(name):
    with pytest.raises(ValueError, match="head_dim"): ATTENTIONS[name].build(0, 1)


@pytest.mark.parametrize("name", ["linear_elu", "performer", "trf", "nprf_rpe", "gmm_rks", "fastfood_prf"])
def test_kernelized_layer_keeps_the_input_dtype(name):
    m = det(name).float()
    q, k, v = (torch.randn(2, 4, 6, 4) for _ in range(3))
    rpe = None if m.rpe is None else m.rpe(6).detach()
    ref = m.algorithm(q, k, v, rpe_bias=rpe)
    out = m.algorithm(q.half(), k.half(), v.half(), rpe_bias=None if rpe is None else rpe.half())
    assert out.dtype == torch.float16 == ATTENTIONS["softmax"].build(4, 4)(q.half(), k.half(), v.half()).dtype
    assert out.dtype == m.algorithm(q.half(), k.half(), v.half(), rpe_bias=rpe, attn_bias=torch.zeros(6, 6)).dtype
    if name != "trf":   # TRF's sign-indefinite denominator can nearly cancel: half-precision inputs move it a lot
        assert (out.float() - ref).abs().max() < 5e-2


# --- sign-indefinite maps (TRF, RKS): the layer's output stays inside the admissible values' box ------------------------
# TRF clips by default; the learned RKS maps keep the official unclipped output unless clip=True is passed.
@pytest.mark.parametrize("name", ["trf", "gmm_rks", "fastfood_rks", "generative_rks"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("scale", [1, 10, 30, 100])
def test_sign_indefinite_layers_stay_in_the_value_box(name, causal, scale):
    m = det(name, causal=causal, **({} if name == "trf" else {"clip": True}))
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 4, 9, 4, generator=g, dtype=torch.float64) for _ in range(3))
    kpm = torch.zeros(2, 1, 9, dtype=torch.bool); kpm[1, :, -3:] = True
    with torch.no_grad(): out = m.algorithm(q * scale, k * scale, v, causal=causal, key_padding_mask=kpm)
    lo = v.masked_fill(kpm[..., None], float("inf")); hi = v.masked_fill(kpm[..., None], -float("inf"))
    lo, hi = (lo.cummin(-2).values, hi.cummax(-2).values) if causal else (lo.amin(-2, keepdim=True), hi.amax(-2, keepdim=True))
    assert torch.isfinite(out).all()
    assert (out >= lo - 1e-12).all() and (out <= hi + 1e-12).all()         # the exact output is a convex combination


def test_trf_bf16_autocast_stays_in_the_value_box(assert_rel_close):
    "Near-cancelling TRF denominators (in any precision, bf16 included) cannot throw the output outside the values."
    torch.manual_seed(0)
    m = MultiheadAttention(64, 4, "trf", max_len=128).eval()
    x = torch.randn(4, 128, 64)
    with torch.no_grad():
        q, k, v = (m._split(p(x)) for p in (m.q_proj, m.k_proj, m.v_proj))
        ref = softmax_attention(q.double(), k.double(), v.double())
        with torch.autocast("cpu", dtype=torch.bfloat16): out = m.algorithm(q.bfloat16(), k.bfloat16(), v.bfloat16())
    vb = v.bfloat16().double()
    lo, hi = vb.amin(-2, keepdim=True), vb.amax(-2, keepdim=True)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert (out.double() >= lo - 1e-2).all() and (out.double() <= hi + 1e-2).all()
    assert ((out.double() - ref).abs() <= (hi - lo) + 1e-2).all()
    with torch.no_grad(): ref_trf = copy.deepcopy(m.algorithm).double()(q.bfloat16().double(), k.bfloat16().double(), vb)
    assert_rel_close(out, ref_trf, 1e-2)                # the same TRF estimator in float64 (measured 1.6e-3)


@pytest.mark.parametrize("name", ["trf", "performer", "nprf_rpe", "gmm_rks", "fastfood_prf"])
def test_bf16_denominators_accumulate_in_float32(name, assert_rel_close):
    "Under bf16 autocast the sums and the division run in float32: only the final rounding to bf16 differs."
    m64 = det(name, causal=True); m = copy.deepcopy(m64).float()
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 4, 21, 4, generator=g).bfloat16() for _ in range(3))
    rpe = None if m.rpe is None else m.rpe(21).detach()
    with torch.no_grad():
        ref = m64.algorithm(q.double(), k.double(), v.double(), rpe_bias=None if rpe is None else rpe.double(), causal=True)
        with torch.autocast("cpu", dtype=torch.bfloat16): out = m.algorithm(q, k, v, rpe_bias=rpe, causal=True)
    assert out.dtype == torch.bfloat16
    assert_rel_close(out, ref, 1e-2)                     # same rounded inputs in float64 (measured <= 1.7e-3)


def test_rfa_per_head_option():
    from kattn.randomized import RandomFeatureAttention
    torch.manual_seed(0)
    shared = MultiheadAttention(16, 4, "rfa", seed=3, num_samples=8).double().eval()
    per = MultiheadAttention(16, 4, "rfa", seed=3, num_samples=8, per_head=True).double().eval()
    ws, wp = shared.algorithm.core.omega, per.algorithm.core.omega
    assert ws.shape == (8, 4) and torch.equal(ws, RandomFeatureAttention(4, 8, seed=3).omega)   # default unchanged
    assert wp.shape == (4, 8, 4)
    assert min((wp[a] - wp[b]).abs().max() for a in range(4) for b in range(a + 1, 4)) > 0.1    # heads differ
    assert torch.equal(wp, MultiheadAttention(16, 4, "rfa", seed=3, num_samples=8, per_head=True).algorithm.core.omega)
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    per.q_proj, per.k_proj, per.v_proj, per.out_proj = shared.q_proj, shared.k_proj, shared.v_proj, shared.out_proj
    y_per, y_shared = per(x), shared(x)
    assert torch.isfinite(y_per).all() and (y_per - y_shared).abs().max() > 1e-4
    assert torch.equal(per(x), y_per)                                                          # fixed draws at eval
    per.algorithm.core.omega = ws.expand(4, 8, 4).clone()                                      # all heads given the shared draw
    torch.testing.assert_close(per(x), y_shared, rtol=1e-10, atol=1e-12)
    off = MultiheadAttention(16, 4, "rfa", num_samples=8, per_head=True, estimator="official")
    assert off(torch.randn(2, 7, 16)).shape == (2, 7, 16)


@pytest.mark.parametrize("case", ["rpe", "mask", "attn_bias"])
def test_softmax_layer_float64_under_bf16_autocast(case):
    # autocast leaves float64 inputs alone, so the result is the float64 one exactly (it raised a dtype error before)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    kw = {"rpe": dict(rpe_bias=torch.randn(2, 9, generator=g, dtype=torch.float64)),
          "mask": dict(causal=True, key_padding_mask=torch.tensor([[[False] * 3 + [True] * 2] * 2])),
          "attn_bias": dict(attn_bias=torch.randn(5, 5, generator=g, dtype=torch.float64))}[case]
    from kattn.layers import SoftmaxAttention
    att = SoftmaxAttention()
    ref = att(q, k, v, **kw)
    with torch.autocast("cpu", dtype=torch.bfloat16): out = att(q, k, v, **kw)
    assert out.dtype == torch.float64 and torch.equal(out, ref)
