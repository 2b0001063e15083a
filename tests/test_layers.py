"Tests for kattn.layers: registry, MultiheadAttention, RelativePositionBias, decoding."
import pytest
import torch
from torch import nn
from kattn.attention import softmax_attention, normalized_kernelized_attention
from kattn.layers import (ATTENTIONS, AttentionSpec, MultiheadAttention, RelativePositionBias, RelativePositionBias2D,
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
def test_bf16_autocast_finite(name):
    torch.manual_seed(0)
    m = MultiheadAttention(32, 4, name, causal=ATTENTIONS[name].causal, max_len=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(torch.randn(2, 11, 32))
    assert torch.isfinite(y.float()).all()


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
        assert set(state) == {"S", "t"} and state["S"].shape[-2:] == (m.algorithm.feature_map.num_outputs, 5)


def test_softmax_layer_matches_reference():
    m = det("softmax_rpe", causal=True)
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    q, k, v = (m._split(p(x)) for p in (m.q_proj, m.k_proj, m.v_proj))
    torch.testing.assert_close(m(x), m._merge(softmax_attention(q, k, v, m.rpe(9), causal=True)), atol=1e-12, rtol=1e-12)


def test_nprf_layer_matches_luo_reference():
    m = det("nprf_rpe")
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    q, k, v = (m._split(p(x)) for p in (m.q_proj, m.k_proj, m.v_proj))
    ref = normalized_kernelized_attention(q, k, v, m.algorithm.feature_map, m.rpe(9))
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


def test_rpe_2d_offsets():
    r = RelativePositionBias2D(2, (3, 5), init_std=1.0)
    with torch.no_grad():
        B = r()
        assert B.shape == (2, 15, 15)
        # key (1, 2) seen from query (0, 0) has the same offset as key (2, 4) from query (1, 2)
        assert torch.equal(B[:, 0, 1 * 5 + 2], B[:, 1 * 5 + 2, 2 * 5 + 4])


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
