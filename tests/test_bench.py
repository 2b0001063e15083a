"Benchmark harness logic (never wall-clock assertions): interleaving, medians, modes, memory, sweeps, JSON, crossover."
import pytest
import torch
import pandas as pd
from kattn.bench import (Case, run_case, time_cases, summarize, peak_memory, benchmark, sweep, ratios, crossover, paired_ratio,
                         malloc_regime, save_results, load_results, fft_floor, reset_peak_rss)

MiB = 2 ** 20


class FakeClock:
    "Alternate start/stop reads; a stop read advances by the duration scheduled for the running case."
    def __init__(self): self.t, self.next, self.reads = 0.0, 0.0, 0
    def __call__(self):
        self.reads += 1
        if self.reads % 2 == 0: self.t += self.next
        return self.t


def test_interleaved_rotated_order_and_exact_times():
    order, clock, calls = [], FakeClock(), {"a": 0, "b": 0, "c": 0}
    dur = {"a": [1, 2, 3, 4], "b": [5, 6, 7, 8], "c": [9, 10, 11, 12]}
    def hook(name, r): order.append((r, name)); clock.next = dur[name][r]
    def f(name): return lambda: calls.__setitem__(name, calls[name] + 1)
    ts = time_cases({k: f(k) for k in "abc"}, repeats=4, warmup=2, timer=clock, on_call=hook)
    assert [n for _, n in order] == list("abc" "bca" "cab" "abc")
    assert calls == {"a": 6, "b": 6, "c": 6}                       # 2 warm-up + 4 timed each
    assert ts == {k: [float(x) for x in v] for k, v in dur.items()}


def test_summarize_median_and_iqr():
    s = summarize([0.004, 0.001, 0.003, 0.002, 0.100])
    assert s["time_ms"] == pytest.approx(3.0) and s["repeats"] == 5
    assert s["iqr_ms"] == pytest.approx(4.0 - 2.0)
    assert summarize([0.5]) == {"time_ms": 500.0, "iqr_ms": 0.0, "repeats": 1}


def test_benchmark_keeps_round_times_and_paired_ratio_divides_within_rounds():
    clock = FakeClock()
    dur = {"fast": [0.010, 0.030, 0.020, 0.040], "base": [0.008, 0.020, 0.020, 0.025]}
    def hook(name, r): clock.next = dur[name][r]
    df = benchmark({k: (lambda: None) for k in dur}, repeats=4, memory=False, timer=clock, on_call=hook).set_index("case")
    assert df.loc["fast", "times_ms"] == pytest.approx([10, 30, 20, 40]) and df.loc["base", "times_ms"] == pytest.approx([8, 20, 20, 25])
    pr = paired_ratio(df.loc["fast", "times_ms"], df.loc["base", "times_ms"])   # per round: 1.25, 1.5, 1.0, 1.6
    assert (pr["median"], pr["q1"], pr["q3"], pr["rounds"]) == pytest.approx((1.375, 1.1875, 1.525, 4))
    # the ratio of medians (25 / 20 = 1.25) differs: drift common to both cases cancels only within a round
    assert df.loc["fast", "time_ms"] / df.loc["base", "time_ms"] == pytest.approx(1.25)
    with pytest.raises(ValueError, match="equal length"): paired_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="positive"): paired_ratio([1.0, -1.0], [1.0, 1.0])


def test_modes_forward_no_grad_and_backward_computes_grads():
    x = torch.randn(5, requires_grad=True)
    seen = []
    def fn():
        y = (x * 3).sum()
        seen.append(y.requires_grad)
        if y.requires_grad: y.register_hook(lambda g: seen.append(float(g)))
        return y
    run_case(Case(fn, (x,)), "fwd")
    run_case(Case(fn, (x,)), "fwd+bwd")
    assert seen == [False, True, 1.0] and x.grad is None          # grads returned, not accumulated
    with pytest.raises(ValueError, match="requires_grad"): run_case(Case(lambda: x.sum()), "fwd+bwd")
    with pytest.raises(ValueError, match="mode"): run_case(Case(fn, (x,)), "backward")


def test_peak_memory_sees_torch_allocations():
    if not reset_peak_rss(): pytest.skip("VmHWM reset not supported here (sampled fallback is a lower bound)")
    big = peak_memory(lambda: torch.ones(96 * MiB // 4).add_(1).sum())
    assert 95 * MiB <= big <= 130 * MiB
    assert peak_memory(lambda: torch.ones(8).sum()) <= 4 * MiB
    held = torch.ones(48 * MiB // 4)
    assert peak_memory(lambda: held.sum()) <= 4 * MiB              # memory in use before the call is not counted
    two = peak_memory(lambda: [torch.ones(32 * MiB // 4), torch.ones(32 * MiB // 4)])
    assert 63 * MiB <= two <= 90 * MiB                             # simultaneous allocations add up


def test_benchmark_rows_skip_errors_and_backward_only_with_inputs():
    a = torch.randn(6, 4, requires_grad=True)
    cases = {"ok": Case(lambda: a @ a.T, (a,)), "fwd_only": lambda: a.sum(), "none": None,
             "broken": Case(lambda: a @ a, (a,))}
    df = benchmark(cases, modes=("fwd", "fwd+bwd"), repeats=2, memory=False)
    got = set(zip(df.case, df["mode"]))
    assert got == {("ok", "fwd"), ("fwd_only", "fwd"), ("broken", "fwd"), ("ok", "fwd+bwd"), ("broken", "fwd+bwd")}
    assert df.set_index(["case", "mode"]).loc[("broken", "fwd"), "error"].startswith("RuntimeError")
    ok = df[df.case == "ok"]
    assert (ok.repeats == 2).all() and (ok.time_ms > 0).all() and ok.error.isna().all()


def test_sweep_adds_grid_columns_and_json_roundtrip(tmp_path):
    def factory(n, m):
        x = torch.randn(n, m)
        return {"sum": lambda: x.sum(), "big": (lambda: x @ x.T) if n > 2 else None}
    grid = [{"n": n, "m": m} for n in (2, 4) for m in (1, 3)]
    df = sweep(factory, grid, repeats=1, progress=False)
    assert len(df) == 4 + 2 and list(df.columns[:2]) == ["n", "m"]
    assert sorted(df[df.case == "big"].n.unique()) == [4]
    p = save_results(df, tmp_path / "sub" / "r.json", {"note": "x"})
    back = load_results(p)
    pd.testing.assert_frame_equal(back[["n", "m", "case"]], df[["n", "m", "case"]], check_dtype=False)
    assert back.time_ms.tolist() == pytest.approx(df.time_ms.tolist())


def test_ratios_and_crossover():
    df = pd.DataFrame({"n": [1, 1, 2, 2], "mode": "fwd", "case": ["base", "x"] * 2, "time_ms": [2.0, 1.0, 4.0, 12.0]})
    r = ratios(df, "base")
    assert r[r.case == "x"].ratio.tolist() == [0.5, 3.0] and r[r.case == "base"].ratio.tolist() == [1.0, 1.0]
    # fast loses at 1000 (2x slower) and wins at 4000 (2x faster): log-log midpoint = 2000
    assert crossover([1000, 4000], [2.0, 1.0], [1.0, 2.0]) == pytest.approx(2000.0)
    assert crossover([1, 2, 4], [1, 1, 1], [2, 0.5, 2]) == pytest.approx(2 ** 1.5)   # only the last win counts
    assert crossover([1, 2], [1, 1], [2, 3]) == 1.0
    assert crossover([1, 2], [3, 3], [2, 1]) is None


def test_fft_floor_is_identity_roundtrip():
    x = torch.randn(3, 5, 24, dtype=torch.float64)
    torch.testing.assert_close(fft_floor(x), x * 24, rtol=0, atol=1e-12)        # unnormalized: L * x


def test_single_shot_time_and_memory_from_one_call():
    from kattn.bench import single_shot
    calls = []
    r = single_shot(lambda: calls.append(torch.ones(24 * MiB // 4).sum()))
    assert len(calls) == 1 and r["repeats"] == 1 and r["time_ms"] > 0 and r["error"] is None
    if reset_peak_rss(): assert 23 <= r["peak_mib"] <= 40
    assert single_shot(lambda: torch.ones(2) @ torch.ones(3))["error"].startswith("RuntimeError")


@pytest.mark.parametrize("block_bytes", [1, 8 * 24 * 2, 8 * 24 * 4, 10 ** 7])
def test_blocked_fft_floor_round_trips_every_row(block_bytes):
    # 15 rows of L = 24 in float64: 1, 2 and 4 rows per block (the last block shorter), or all at once
    x = torch.randn(3, 5, 24, dtype=torch.float64)
    out = torch.full_like(x, float("nan"))
    assert fft_floor(x, block_bytes, out=out) is out
    torch.testing.assert_close(out, x * 24, rtol=0, atol=1e-12)
    assert fft_floor(x, block_bytes) is None                       # blocked and no `out`: computed and dropped
    with pytest.raises(ValueError, match="block_bytes"): fft_floor(x, 0)
    with pytest.raises(ValueError, match="out"): fft_floor(x, 64, out=torch.empty(3, 24))


def test_malloc_regimes_switch_and_peak_memory_restores_the_timing_regime():
    import kattn.bench as kb
    assert malloc_regime("steady") and kb._MALLOC["regime"] == "steady"
    if reset_peak_rss():                                           # 8 MiB < the steady 32 MiB threshold, still measured
        assert 7 * MiB <= peak_memory(lambda: torch.ones(8 * MiB // 4).sum()) <= 20 * MiB
    assert kb._MALLOC["regime"] == "steady"                        # peak_memory ran under "exact", then switched back
    df = benchmark({"sum": lambda: torch.ones(10).sum()}, repeats=1, malloc="exact")
    assert kb._MALLOC["regime"] == "exact" and df.time_ms.iloc[0] > 0
    with pytest.raises(ValueError, match="kind"): malloc_regime("fast")
    malloc_regime("steady")


def test_calibrate_rpe_crossover_stores_under_the_cache_dir(tmp_path, monkeypatch):
    import json
    from kattn import toeplitz
    from kattn.bench import calibrate_rpe_crossover
    monkeypatch.setenv("KATTN_CACHE_DIR", str(tmp_path))
    res = calibrate_rpe_crossover("cpu", ns=(4, 8), m=2, d=3, repeats=1)
    stored = json.loads((tmp_path / "rpe_crossover.json").read_text())
    assert res["key"] in stored and stored[res["key"]]["dense_max_n"] == res["dense_max_n"] in (0, 4, 8)
    assert res["key"].startswith("cpu: ") and torch.__version__ in res["key"]
    assert toeplitz._dense_max_n("cpu") == res["dense_max_n"]          # the op picks it up in this process
    other = calibrate_rpe_crossover("cpu", ns=(4,), m=2, d=3, repeats=1, store=False)
    assert other["ns"] == [4] and json.loads((tmp_path / "rpe_crossover.json").read_text()) == stored


def test_dense_wins_uses_the_worse_mode():
    from kattn.bench import _dense_wins
    t = lambda df, ff, db, fb: {("dense", "fwd"): df, ("fft", "fwd"): ff, ("dense", "fwd+bwd"): db, ("fft", "fwd+bwd"): fb}
    assert _dense_wins(t(1, 2, 1, 2)) and not _dense_wins(t(2, 1, 2, 1))
    assert not _dense_wins(t(1, 1.1, 4, 2))            # dense 2x slower in fwd+bwd, FFT 1.1x in fwd: FFT
