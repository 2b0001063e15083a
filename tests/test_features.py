"Feature maps: protocol, draws, unbiasedness (Lemma 2 bounds), stabilization, devices/dtypes, errors."
import copy
import math

import pytest
import torch

from kattn.features import (EluFeatures, FeatureMap, PositiveRandomFeatures, ReluFeatures, TrigonometricRandomFeatures,
                            gaussian_draws, positive_features)

D64 = torch.float64


@pytest.mark.parametrize("cls,mult", [(PositiveRandomFeatures, 1), (TrigonometricRandomFeatures, 2)])
@pytest.mark.parametrize("d,m", [(1, 1), (7, 3), (5, 11), (64, 16)])
def test_shapes_and_protocol(cls, mult, d, m):
    fm = cls(d, m, seed=0)
    assert isinstance(fm, FeatureMap) and fm.num_outputs == mult * m
    x = torch.randn(2, 3, 9, d)
    assert fm(x).shape == (2, 3, 9, mult * m) and fm(x, is_query=True).shape == (2, 3, 9, mult * m)
    assert "weight" in fm.state_dict() and fm.weight.shape == (m, d)


@pytest.mark.parametrize("orthogonal", [False, True])
@pytest.mark.parametrize("sphere", [False, True])
def test_draws(orthogonal, sphere):
    g = torch.Generator().manual_seed(0)
    w = gaussian_draws(40, 16, orthogonal, sphere, generator=g, dtype=D64)
    assert w.shape == (40, 16)
    if sphere: torch.testing.assert_close(w.norm(dim=-1), torch.full((40,), 4.0, dtype=D64))
    if orthogonal:
        blk = w[:16] / w[:16].norm(dim=-1, keepdim=True)
        torch.testing.assert_close(blk @ blk.T, torch.eye(16, dtype=D64), atol=1e-10, rtol=0)


def test_orf_rows_are_marginally_gaussian():
    # E|w|^2 = d and Var|w|^2 = 2d for N(0, I_d); 8192 rows: sd of the mean = sqrt(2*8/8192) = 0.044
    w = gaussian_draws(8192, 8, orthogonal=True, generator=torch.Generator().manual_seed(3), dtype=D64)
    sq = (w ** 2).sum(-1)
    assert abs(sq.mean() - 8) < 5 * math.sqrt(16 / 8192)
    assert abs(sq.var() - 16) < 5 * math.sqrt(sq.var().item() ** 2 * 2 / 8192 + 1)


def _lemma2_sd(x, y, m, T):
    "sd of the mean of T PRF estimates with m iid features (Luo Lemma 2)."
    var1 = (torch.exp(((x + y) ** 2).sum()) - 1) * torch.exp(2 * (x * y).sum()) / m
    return (var1 / T).sqrt()


@pytest.mark.parametrize("seed", [0, 1])
def test_prf_unbiased_lemma2(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, generator=g, dtype=D64) * 0.3
    y = torch.randn(6, generator=g, dtype=D64) * 0.3
    m, T = 8, 4000
    w = gaussian_draws(m * T, 6, generator=g, dtype=D64).reshape(T, m, 6)
    est = (positive_features(x, w, stabilize=False) * positive_features(y, w, stabilize=False)).sum(-1)  # [T]
    exact = torch.exp((x * y).sum())
    sd = _lemma2_sd(x, y, m, T)
    assert abs(est.mean() - exact) < 4.5 * sd
    # the empirical variance of one estimate matches Lemma 2 (chi-square: rel. sd of the sample var ~ sqrt(2/T)*kurtosis)
    var_emp, var_th = est.var(), (sd ** 2) * T
    assert 0.7 < var_emp / var_th < 1.3


@pytest.mark.parametrize("d", [64, 256, 512])
def test_large_head_dim_neither_underflows_nor_overflows(d):
    fm = PositiveRandomFeatures(d, 64, seed=0)
    x = torch.randn(3, d) * d ** -0.25                  # the usual softmax scaling: features near 1/sqrt(m)
    f = fm(x)
    assert torch.isfinite(f).all() and (f > 1e-30).all()
    huge = fm(torch.randn(3, d) * 50)                   # pathological keys hit the cap instead of overflowing
    assert torch.isfinite(huge).all()


def test_eval_determinism():
    fm = PositiveRandomFeatures(8, 16).eval()
    x = torch.randn(3, 8)
    assert torch.equal(fm(x), fm(x))


@pytest.mark.parametrize("cls", [PositiveRandomFeatures, TrigonometricRandomFeatures])
@pytest.mark.parametrize("is_query", [False, True])
def test_bf16_autocast_features_are_fp32_and_match_float64(cls, is_query, assert_rel_close):
    "Under bf16 autocast the features are float32 and equal the float64 map's (same draws) up to float32 round-off."
    fm = cls(32, 16, seed=0)
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(0), dtype=torch.bfloat16) * 3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f = fm(x, is_query=is_query)
    assert f.dtype == torch.float32
    assert_rel_close(f, copy.deepcopy(fm).double()(x.double(), is_query=is_query), 1e-4)   # measured <= 3e-6


def test_errors():
    fm = PositiveRandomFeatures(8, 4)
    with pytest.raises(ValueError, match="head_dim=8"): fm(torch.randn(3, 7))
    with pytest.raises(ValueError, match=r"\[\.\.\., n, head_dim"): fm(torch.randn(8))
    with pytest.raises(TypeError, match="floating point"): fm(torch.ones(3, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"): fm([[0.0] * 8])
    with pytest.raises(ValueError, match="num_features"): PositiveRandomFeatures(8, 0)
    with pytest.raises(ValueError, match="head_dim"): TrigonometricRandomFeatures(-1, 4)
    with pytest.raises(ValueError, match="redraw_interval"): PositiveRandomFeatures(8, 4, redraw_interval=0)
    with pytest.raises(ValueError, match="num_features"): ReluFeatures(4, 5)


@pytest.mark.gpu
def test_draws_follow_the_input_device():
    fm = PositiveRandomFeatures(8, 16, seed=0)
    x = torch.randn(3, 8, device="cuda")
    assert fm(x).device.type == "cuda" and fm.weight.device.type == "cuda"
    fm.redraw(); assert fm.weight.device.type == "cuda"
    fm.redraw(torch.Generator(device="cuda").manual_seed(0)); assert fm.weight.device.type == "cuda"


# --- edges ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("m,d,name", [(0, 4, "num_features"), (-3, 4, "num_features"), (4, 0, "head_dim"),
                                      (2.5, 4, "num_features"), (True, 4, "num_features")])
def test_gaussian_draws_rejects_bad_sizes(m, d, name):
    with pytest.raises(ValueError, match=name): gaussian_draws(m, d)


@pytest.mark.parametrize("cls", [PositiveRandomFeatures, TrigonometricRandomFeatures, EluFeatures])
def test_meta_call_leaves_the_map_usable(cls):
    fm = cls(4, 4, seed=0)
    x = torch.randn(3, 4)
    before = fm(x)
    assert fm(torch.empty(2, 3, 4, device="meta")).shape[:2] == (2, 3)       # shape inference on meta
    assert torch.equal(fm(x), before)
    assert all(b.device.type == "cpu" for b in fm.buffers())


# --- TRF at large norms: finite in float32/float64 ---------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, D64])
@pytest.mark.parametrize("scale", [1, 10, 30, 100])
@pytest.mark.parametrize("causal", [False, True])
def test_trf_attention_finite_at_large_norms(dtype, scale, causal):
    from kattn.attention import kernelized_softmax_attention
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 9, 8, generator=g, dtype=dtype) for _ in range(3))
    fm = TrigonometricRandomFeatures(8, 32, seed=0)
    out = kernelized_softmax_attention(q * scale, k * scale, v, causal=causal, feature_map=fm)
    assert torch.isfinite(out).all()
