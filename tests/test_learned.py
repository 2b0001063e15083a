"Tests for kattn.learned: FWHT, the three learned spectral feature maps (RKS and PRF), implied kernels, attention paths."
import copy
import math

import pytest
import scipy.linalg
import torch

from kattn.attention import kernelized_attention, naive_kernelized_attention
from kattn.learned import (FastFoodRandomFeatures, GMMRandomFeatures, GenerativeRandomFeatures, fwht, gmm_prf_kernel,
                           gmm_rks_kernel, implied_kernel, monte_carlo_kernel, naive_hadamard, next_pow2,
                           official_num_features, pow2cast)

F64 = torch.float64
DELTA = 1e-6   # failure probability used in every Hoeffding bound below


def hoeffding(num_terms, width, num_estimates=1):
    "Half-width of a two-sided Hoeffding interval for a mean of iid terms of range `width`, union over estimates."
    return width * math.sqrt(math.log(2 * num_estimates / DELTA) / (2 * num_terms))


def all_maps(d=4, heads=2):
    return [GMMRandomFeatures(d, 8, kind="rks", num_heads=heads), GMMRandomFeatures(d, 8, kind="prf", num_heads=heads),
            FastFoodRandomFeatures(d, kind="rks"), FastFoodRandomFeatures(d, kind="prf"),
            GenerativeRandomFeatures(d, 8, kind="rks"), GenerativeRandomFeatures(d, 8, kind="prf")]


# ---------------------------------------------------------------- fast Walsh-Hadamard transform

@pytest.fixture
def one_thread():
    "Many tiny ops: one intra-op thread avoids spin contention on a loaded 2-core machine."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_fwht_equals_dense_hadamard_all_sizes(one_thread):
    g = torch.Generator().manual_seed(0)
    dense = {D: torch.from_numpy(scipy.linalg.hadamard(D)).to(F64) for D in (2 ** i for i in range(11))}
    for d in range(1, 1025):
        D = next_pow2(d)
        x = torch.randn(2, 3, d, dtype=F64, generator=g)
        ref = torch.nn.functional.pad(x, (0, D - d)) @ dense[D].T
        assert torch.allclose(fwht(x), ref, atol=1e-9 * math.sqrt(D), rtol=0), d
        if d % 61 == 0 or d == D: assert torch.allclose(fwht(x, radix=2), ref, atol=1e-9 * math.sqrt(D), rtol=0), d


def test_fwht_gradient_is_transform_of_grad():
    x = torch.randn(3, 16, dtype=F64, requires_grad=True)
    gout = torch.randn(3, 16, dtype=F64)
    (fwht(x) * gout).sum().backward()
    assert torch.allclose(x.grad, fwht(gout), atol=1e-10)          # H is symmetric


def test_fwht_bad_inputs():
    with pytest.raises(ValueError, match="d >= 1"): fwht(torch.zeros(2, 0))
    with pytest.raises(TypeError, match="torch.Tensor"): fwht([1.0, 2.0])
    with pytest.raises(ValueError, match="power of two"): naive_hadamard(6)
    with pytest.raises(ValueError, match="radix"): fwht(torch.zeros(2, 4), radix=6)


# ---------------------------------------------------------------- defaults

def test_official_counts_and_outputs():
    assert [pow2cast(64 * math.log(64)), pow2cast(32 * math.log(32)), pow2cast(3)] == [256, 128, 4]
    # spec section 2.2, Text task (d=64)
    assert GMMRandomFeatures(64).num_outputs == 129
    assert GMMRandomFeatures(64, kind="prf").num_outputs == 256
    assert FastFoodRandomFeatures(64).num_outputs == 129
    assert FastFoodRandomFeatures(64, kind="prf").num_outputs == 64
    assert GenerativeRandomFeatures(64).num_outputs == 513
    assert GenerativeRandomFeatures(64, kind="prf").num_outputs == 127
    assert official_num_features("gmm_rks", 64, "listops") == 256
    assert official_num_features("gmm_rks", 32, "retrieval") == 64


def test_official_initialisation_bounds():
    fm = GMMRandomFeatures(64, kind="rks", num_heads=4)
    assert fm.factor.abs().max() <= math.sqrt(6 / (64 * 64 + 4 * 64)) and fm.factor.abs().max() > 0.03
    assert fm.mean.abs().max() <= 1 / 64
    fm = GMMRandomFeatures(64, kind="prf", num_heads=4)
    assert fm.log_var.abs().max() <= math.sqrt(6 / (64 + 4)) and fm.mean.abs().max() <= 1 / 8
    ff = FastFoodRandomFeatures(64)
    for p in (ff.S, ff.G, ff.B):      # N(0, 1/64): 64 draws, sample std within 30% (chi-square tail ~1e-4)
        assert abs(p.std().item() - 1 / 8) < 0.3 / 8
    gm = GenerativeRandomFeatures(64, kind="rks")
    assert gm.noise_dims == (32, 128, 256) and isinstance(gm.net[-1], torch.nn.Tanh)


# ---------------------------------------------------------------- statistical kernel estimates

def test_fastfood_rff_estimates_gaussian_kernel():
    k = 4000
    fm = FastFoodRandomFeatures(6, 8 * k, kind="rks", init="rff", smoothing=1.0, seed=0).double().eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 6, dtype=F64, generator=g) * 0.6, torch.randn(8, 6, dtype=F64, generator=g) * 0.6
    est = (fm(x) * fm(y)).sum(-1) - 1.0
    exact = torch.exp(-0.5 * ((x - y) ** 2).sum(-1))
    # estimate = mean of k independent block means, each in [-1, 1]
    assert (est - exact).abs().max() < hoeffding(k, 2, len(x))


def test_fastfood_rff_rows_are_standard_normal():
    fm = FastFoodRandomFeatures(16, 16 * 2000, init="rff", seed=3)
    V = fm.frequencies(F64)                                      # [32000, 16]
    cov = V.T @ V / V.shape[0]
    # each entry of cov is a mean of 2000 independent block averages; var(w_i w_j) <= 3 -> 6 sigma bound
    assert (cov - torch.eye(16, dtype=F64)).abs().max() < 6 * math.sqrt(3 / 2000)


def test_gmm_rks_at_gaussian_init_estimates_rbf():
    R = 200_000
    fm = GMMRandomFeatures(5, R, kind="rks", smoothing=0.36, seed=0).double().eval()
    fm.reset_parameters("gaussian")
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(6, 5, dtype=F64, generator=g) * 0.7, torch.randn(6, 5, dtype=F64, generator=g) * 0.7
    est = (fm(x) * fm(y)).sum(-1)
    exact = 2 * torch.exp(-0.5 * ((x - y) ** 2).sum(-1)) + 0.36 ** 2   # the code's factor 2, plus s^2
    assert (est - exact).abs().max() < hoeffding(R, 4, len(x))        # R iid terms 2cos(.) in [-2, 2]
    assert torch.allclose(fm.kernel(x, y), exact, atol=1e-12)


def test_gmm_rks_closed_form_equals_independent_monte_carlo():
    g = torch.Generator().manual_seed(4)
    d, N = 3, 400_000
    mu, L = torch.randn(d, dtype=F64, generator=g), torch.randn(d, d, dtype=F64, generator=g) * 0.5
    tau = torch.randn(7, d, dtype=F64, generator=g)
    # sample omega from 1/2 N(mu, L^T L) + 1/2 N(-mu, L^T L) directly (not through the feature map)
    sign = torch.where(torch.rand(N, generator=g) < 0.5, -1.0, 1.0).to(F64)
    omega = torch.randn(N, d, dtype=F64, generator=g) @ L + sign[:, None] * mu
    mc = 2 * torch.cos(tau @ omega.T).mean(-1) + 0.25
    assert (mc - gmm_rks_kernel(tau, mu, L, 0.5)).abs().max() < hoeffding(N, 4, len(tau))


def test_gmm_map_closed_form_equals_map_monte_carlo():
    g = torch.Generator().manual_seed(5)
    fm = GMMRandomFeatures(4, 4096, kind="rks", num_heads=2, smoothing=0.5).double().eval()
    with torch.no_grad(): fm.mean.normal_(0, 0.5, generator=g); fm.factor.normal_(0, 0.4, generator=g)
    x, y = torch.randn(2, 2, 3, 4, dtype=F64, generator=g) * 0.6, torch.randn(2, 2, 3, 4, dtype=F64, generator=g) * 0.6
    mc = monte_carlo_kernel(fm, x, y, num_draws=16, generator=g)
    assert (mc - implied_kernel(fm, x, y)).abs().max() < hoeffding(16 * 4096, 4, mc.numel())


def test_gmm_prf_closed_form_and_rbf_at_init():
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(5, 4, dtype=F64, generator=g) * 0.3, torch.randn(5, 4, dtype=F64, generator=g) * 0.3
    zero = torch.zeros(4, dtype=F64)
    assert torch.allclose(gmm_prf_kernel(x, y, zero, zero), torch.exp(-0.5 * ((x - y) ** 2).sum(-1)), atol=1e-12)
    M = 200_000
    fm = GMMRandomFeatures(4, M, kind="prf", seed=1).double().eval()
    with torch.no_grad(): fm.mean.normal_(0, 0.3, generator=g); fm.log_var.normal_(0, 0.3, generator=g)
    terms = torch.exp(x @ fm.frequencies(dtype=F64)[0].T - (x * x).sum(-1, keepdim=True)) * \
        torch.exp(y @ fm.frequencies(dtype=F64)[0].T - (y * y).sum(-1, keepdim=True))     # [5, M] per-sample terms
    est = (fm(x) * fm(y)).sum(-1)
    assert torch.allclose(est, terms.mean(-1), rtol=1e-10)
    # unbounded terms: CLT bound of 6 standard errors (the terms have finite variance for these small inputs)
    assert ((est - fm.kernel(x, y)).abs() < 6 * terms.std(-1) / math.sqrt(M)).all()


def test_generative_mc_kernel_matches_its_frequencies():
    fm = GenerativeRandomFeatures(4, 64, kind="rks", smoothing=1.0, seed=0).double().eval()
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(3, 4, dtype=F64, generator=g), torch.randn(3, 4, dtype=F64, generator=g)
    w = fm.frequencies()
    assert torch.allclose((fm(x) * fm(y)).sum(-1), torch.cos((x - y) @ w.T).mean(-1) + 1.0, atol=1e-12)
    k = implied_kernel(fm, x, y, num_draws=8, generator=g)
    assert (k >= -1e-12).all() and (k <= 2 + 1e-12).all()      # [0, 2] with s = 1 (FastFood/generator RKS range)
    assert torch.equal(fm.frequencies(), w)                      # stored draw restored


# ---------------------------------------------------------------- gradients

def test_gradients_reach_every_learned_parameter():
    x = torch.randn(2, 2, 7, 4, dtype=F64) * 0.5
    names = set()
    for fm in all_maps():
        fm = fm.double()
        kernelized_attention(fm(x, is_query=True), fm(x), x).square().sum().backward()
        for name, p in fm.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (type(fm).__name__, name)
            names.add(name)
    assert {"mean", "factor", "log_var", "S", "G", "B", "net.0.weight", "net.3.weight", "net.6.weight"} <= names


def test_gmm_rks_gradcheck():
    fm = GMMRandomFeatures(3, 4, kind="rks", num_heads=2).double().eval()
    x = torch.randn(2, 5, 3, dtype=F64)
    def f(mean, factor):
        return torch.func.functional_call(fm, {"mean": mean, "factor": factor}, (x,))
    assert torch.autograd.gradcheck(f, (fm.mean.detach().clone().requires_grad_(), fm.factor.detach().clone().requires_grad_()))


# ---------------------------------------------------------------- attention paths

@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("rpe", [False, True])
def test_every_map_in_every_attention_path(causal, rpe):
    torch.manual_seed(0)
    n = 11
    q, k, v = (torch.randn(2, 2, n, 4, dtype=F64) * 0.5 for _ in range(3))
    b = torch.randn(2, 2, 2 * n - 1, dtype=F64) if rpe else None
    for fm in all_maps():
        fm = fm.double().eval()
        pq, pk = fm(q, is_query=True), fm(k)
        out = kernelized_attention(pq, pk, v, b, causal)
        assert torch.allclose(out, naive_kernelized_attention(pq, pk, v, b, causal), atol=1e-8)
        if causal:     # outputs at t <= 5 ignore later inputs
            q2, k2, v2 = (t.clone() for t in (q, k, v))
            for t in (q2, k2, v2): t[..., 6:, :] = torch.randn_like(t[..., 6:, :])
            out2 = kernelized_attention(fm(q2, is_query=True), fm(k2), v2, b, causal)
            assert torch.allclose(out[..., :6, :], out2[..., :6, :], atol=1e-10)


def test_every_map_in_kernelized_attention_layer_and_padding():
    from kattn.layers import KernelizedAttention
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 2, 9, 4) for _ in range(3))
    mask = torch.zeros(2, 9, dtype=torch.bool); mask[:, 7:] = True
    for fm in all_maps():
        layer = KernelizedAttention(fm).eval()
        out = layer(q, k, v, key_padding_mask=mask[:, None])
        out_trunc = layer(q, k[..., :7, :], v[..., :7, :])
        assert torch.isfinite(out).all() and torch.allclose(out, out_trunc, atol=1e-5)


def test_bf16_autocast_matches_float64(assert_rel_close):
    "Learned maps under bf16 autocast: float32 features, attention equal to the float64 map's (same draws and parameters)."
    x = torch.randn(2, 2, 9, 16, generator=torch.Generator().manual_seed(0))
    for fm in all_maps(16):
        fm.eval(); fm64 = copy.deepcopy(fm).double()                       # eval: no redraw between the two calls
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pq, pk = fm(x * 0.5, is_query=True), fm(x * 0.5)
            out = kernelized_attention(pq, pk, x, causal=True)
        x64 = x.double()
        ref = kernelized_attention(fm64(x64 * 0.5, is_query=True), fm64(x64 * 0.5), x64, causal=True)
        assert pq.dtype == torch.float32
        assert_rel_close(out, ref, 1e-5)                                      # measured <= 2e-7


# ---------------------------------------------------------------- redraw policy, state

def test_redraw_policy():
    x = torch.randn(5, 4)
    for fm in all_maps(heads=1):
        fm.requires_grad_(False)
        a = fm(x, is_query=True)
        assert not torch.equal(fm(x, is_query=True), a), type(fm).__name__     # train: fresh draw per query call
        key_before = fm(x)
        assert torch.equal(fm(x), key_before)                                     # key calls never redraw
        fm.eval(); a = fm(x, is_query=True)
        assert torch.equal(fm(x, is_query=True), a)                               # eval: deterministic
        fm.redraw_policy = "always"
        assert not torch.equal(fm(x, is_query=True), a)                           # official: redraw at eval too
        fm.redraw_policy = "never"; fm.train(); a = fm(x, is_query=True)
        assert torch.equal(fm(x, is_query=True), a)


def test_state_dict_round_trip_and_seed():
    x = torch.randn(3, 7, 8)
    for cls, kw in [(GMMRandomFeatures, {}), (FastFoodRandomFeatures, {}), (GenerativeRandomFeatures, {"kind": "prf"})]:
        a, b = cls(8, seed=0, **kw).eval(), cls(8, seed=1, **kw).eval()
        assert not torch.equal(a(x), b(x))
        b.load_state_dict(a.state_dict())
        assert torch.equal(a(x), b(x))


# ---------------------------------------------------------------- bad inputs

def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="kind"): GMMRandomFeatures(4, 8, kind="softmax")
    with pytest.raises(ValueError, match="redraw_policy"): FastFoodRandomFeatures(4, redraw_policy="sometimes")
    with pytest.raises(ValueError, match="covariance"): GMMRandomFeatures(4, 8, covariance="low-rank")
    with pytest.raises(ValueError, match="num_heads"): GMMRandomFeatures(4, 8, num_heads=0)
    with pytest.raises(ValueError, match="num_heads=3"): GMMRandomFeatures(4, 8, num_heads=3)(torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match="multiple of 8"): FastFoodRandomFeatures(6, 12)
    with pytest.raises(ValueError, match="init"): FastFoodRandomFeatures(4, init="zeros")
    with pytest.raises(ValueError, match=">= 2"): GenerativeRandomFeatures(4, 1)
    with pytest.raises(ValueError, match="noise_dims"): GenerativeRandomFeatures(4, 8, noise_dims=(4, 0))
    with pytest.raises(ValueError, match="head_dim"): GMMRandomFeatures(0, 8)
    with pytest.raises(ValueError, match="head_dim=4"): FastFoodRandomFeatures(4)(torch.randn(3, 5))
    with pytest.raises(TypeError, match="floating"): GenerativeRandomFeatures(4, 8)(torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"): GMMRandomFeatures(4, 8)([[1.0] * 4])
    with pytest.raises(TypeError, match="smoothing"): GMMRandomFeatures(4, 8, smoothing="1")
    with pytest.raises(ValueError, match="task"): official_num_features("gmm_rks", 64, "imdb")


@pytest.mark.gpu
def test_cuda_draws_on_device():
    x = torch.randn(2, 2, 33, 16, device="cuda")
    for fm in all_maps(16):
        fm = fm.cuda()
        pq, pk = fm(x, is_query=True), fm(x)
        assert pq.device.type == "cuda" and torch.isfinite(kernelized_attention(pq, pk, x, causal=True)).all()


# ---------------------------------------------------------------- through the layers registry

LEARNED_NAMES = ["gmm_rks", "gmm_prf", "fastfood_rks", "fastfood_prf", "generative_rks", "generative_prf"]


@pytest.mark.parametrize("name", LEARNED_NAMES)
def test_registry_layer_causal_rpe_and_recurrent_step(name):
    from kattn.layers import ATTENTIONS, MultiheadAttention
    assert name in ATTENTIONS
    torch.manual_seed(0)
    x = torch.randn(2, 9, 16)
    mha = MultiheadAttention(16, 2, attention=name, causal=True, rpe=True, max_len=16)
    mha(x).square().sum().backward()
    fm = mha.algorithm.feature_map
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fm.parameters())
    mha = MultiheadAttention(16, 2, attention=name, causal=True, rpe=False).eval()
    with torch.no_grad():
        full, state, steps = mha(x), None, []
        for t in range(x.shape[1]):
            y, state = mha.step(x[:, t:t + 1], state); steps.append(y)
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-4)      # fixed draws at eval: decoding == full pass


# The official code's feature sizes per LRA task (Text d=64, ListOps d=64, Retrieval d=32): (#features, #outputs).
OFFICIAL_SIZES = {
    "text": (64, {"gmm_rks": (32, 129), "gmm_prf": (256, 256), "fastfood_rks": (64, 129), "fastfood_prf": (64, 64),
                  "generative_rks": (256, 513), "generative_prf": (127, 127)}),
    "listops": (64, {"gmm_rks": (256, 1025), "gmm_prf": (256, 256), "fastfood_rks": (64, 129), "fastfood_prf": (64, 64),
                     "generative_rks": (256, 513), "generative_prf": (127, 127)}),
    "retrieval": (32, {"gmm_rks": (64, 257), "gmm_prf": (128, 128), "fastfood_rks": (32, 65), "fastfood_prf": (32, 32),
                       "generative_rks": (128, 257), "generative_prf": (63, 63)}),
}


@pytest.mark.parametrize("task", sorted(OFFICIAL_SIZES))
def test_official_sizes_per_task(task):
    from kattn.learned import FastFoodRandomFeatures, GenerativeRandomFeatures, GMMRandomFeatures
    d, sizes = OFFICIAL_SIZES[task]
    classes = {"gmm": GMMRandomFeatures, "fastfood": FastFoodRandomFeatures, "generative": GenerativeRandomFeatures}
    for name, want in sizes.items():
        family, kind = name.split("_")
        fm = classes[family](d, kind=kind, task=task)
        assert (fm.num_features, fm.num_outputs) == want, (task, name)
        if family == "generative":
            assert fm.noise_dims == ((32, 128, 256) if task == "text" else (d, 4 * d))
    smoothing = {t: GMMRandomFeatures(OFFICIAL_SIZES[t][0], kind="rks", task=t).smoothing for t in OFFICIAL_SIZES}
    assert smoothing == {"text": 0.36, "listops": 1.0, "retrieval": 1.0}


def test_paper_configs_carry_the_task():
    from kattn.models import SequenceClassifier, paper_configs
    from kattn.learned import GMMRandomFeatures
    cfgs = paper_configs()
    for task in ("text", "listops", "retrieval"):
        cfg = cfgs[f"chowdhury_lra_{task}"]
        assert (cfg.attention, cfg.attention_options, cfg.layer_order) == ("gmm_rks", {"task": task}, "renorm")
    small = cfgs["chowdhury_lra_listops"]
    from dataclasses import replace
    model = SequenceClassifier(replace(small, num_layers=1, d_model=128, num_heads=2, d_ff=64, max_len=65))
    maps = [m for m in model.modules() if isinstance(m, GMMRandomFeatures)]
    assert len(maps) == 1 and (maps[0].num_features, maps[0].smoothing, maps[0].task) == (256, 1.0, "listops")
    assert [b.renorm for b in model.modules() if hasattr(b, "renorm")] == [True]


@pytest.mark.parametrize("n", [-5, 0, 2.5, True])
def test_next_pow2_rejects_non_positive(n):
    with pytest.raises((ValueError, TypeError), match="n must be an int >= 1"): next_pow2(n)


@pytest.mark.parametrize("cls", [GMMRandomFeatures, FastFoodRandomFeatures, GenerativeRandomFeatures])
@pytest.mark.parametrize("kind", ["rks", "prf"])
def test_meta_call_leaves_learned_maps_usable(cls, kind):
    fm = cls(8, 8, kind=kind, seed=0).eval()
    x = torch.randn(3, 8)
    before = fm(x)
    try: fm(torch.empty(2, 3, 8, device="meta"))       # CPU parameters and a meta input: may refuse, must not break
    except RuntimeError as e: assert "meta" in str(e)
    assert torch.equal(fm(x), before) and all(b.device.type == "cpu" for b in fm.buffers())
    meta = cls(8, 8, kind=kind, seed=0).eval().to("meta")                 # a map moved to meta infers shapes
    assert meta(torch.empty(2, 3, 8, device="meta")).shape[:2] == (2, 3)
