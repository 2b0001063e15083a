"Tests for kattn.train: schedules, exact resume, DDP equivalence (2-process gloo), bad configs."
import json, math, os
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor
from kattn.models import CausalLM, LMConfig
from kattn.train import CopyTask, TrainConfig, Trainer, lm_loss, lr_factor


def tiny_lm(attention="performer", dropout=0.1, **kw):
    return CausalLM(LMConfig(vocab_size=16, d_model=32, num_heads=2, num_layers=2, d_ff=64, max_len=20, dropout=dropout,
                             attention=attention, attention_options=kw))


def test_schedules():
    c = TrainConfig(warmup_steps=10, max_steps=110)
    assert lr_factor(0, c) == pytest.approx(0.1) and lr_factor(9, c) == pytest.approx(1.0)
    assert lr_factor(39, c) == pytest.approx(math.sqrt(10 / 40))                    # inverse sqrt
    lin = TrainConfig(warmup_steps=10, max_steps=110, schedule="linear")
    assert lr_factor(60, lin) == pytest.approx(0.5) and lr_factor(110, lin) == pytest.approx(0.0)
    cos = TrainConfig(warmup_steps=10, max_steps=110, schedule="cosine", min_lr_ratio=0.2)
    assert lr_factor(60, cos) == pytest.approx(0.6) and lr_factor(110, cos) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="schedule"): lr_factor(20, TrainConfig(warmup_steps=1, schedule="poly"))


def _run(steps, out, init_seed, **kw):
    torch.manual_seed(init_seed)
    model = tiny_lm("performer", redraw_interval=2)                     # dropout + global-RNG feature redraws
    cfg = TrainConfig(max_steps=steps, batch_size=12, grad_accum=2, lr=3e-3, warmup_steps=3, log_every=1, eval_every=2,
                      progress=False, out_dir=str(out), seed=3, **kw)
    tr = Trainer(model, cfg, CopyTask(30, k=8), loss_fn=lm_loss,
                 eval_fn=lambda m: {"rand": float(torch.rand(()))})     # eval consumes RNG; must not perturb training
    return tr.fit(), model


def test_resume_is_exact(tmp_path):
    N, k = 8, 3
    full, m_full = _run(N, tmp_path / "full", 0)
    _run(k, tmp_path / "cut", 0)
    assert (tmp_path / "cut" / "checkpoint.pt").exists()
    resumed, m_res = _run(N, tmp_path / "cut", 999)                      # different init: all must come from the checkpoint
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]
    sa, sb = m_full.state_dict(), m_res.state_dict()
    assert sa.keys() == sb.keys()
    for n in sa: assert (torch.equal(sa[n], sb[n]) if isinstance(sa[n], Tensor) else sa[n] == sb[n]), n
    lines = [json.loads(l) for l in open(tmp_path / "full" / "metrics.jsonl")]
    assert [l["step"] for l in lines if "loss" in l] == list(range(1, N + 1))
    assert all("eval/rand" in l for l in lines if l["step"] % 2 == 0 and "loss" not in l)
    assert all(l["tokens_per_s"] > 0 for l in lines if "loss" in l)


def test_bf16_and_accumulation_equivalence():
    "grad_accum=2 with half-size micro-batches equals one full batch (no dropout, deterministic features)."
    res = []
    for acc in (1, 2):
        torch.manual_seed(0)
        m = tiny_lm("softmax_rpe", dropout=0.0)
        cfg = TrainConfig(max_steps=3, batch_size=8, grad_accum=acc, lr=1e-3, warmup_steps=1, log_every=0, eval_every=0,
                          progress=False, seed=0)
        Trainer(m, cfg, CopyTask(32, k=8), loss_fn=lm_loss).fit()
        res.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    torch.testing.assert_close(res[0], res[1], atol=2e-6, rtol=1e-5)
    torch.manual_seed(0)
    m = tiny_lm("nprf_rpe")
    hist = Trainer(m, TrainConfig(max_steps=2, batch_size=4, bf16=True, warmup_steps=1, log_every=0, eval_every=0, progress=False),
                   CopyTask(16, k=8), loss_fn=lm_loss).fit()
    assert all(math.isfinite(h["loss"]) for h in hist)


def test_bad_train_configs():
    m = tiny_lm()
    with pytest.raises(ValueError, match="multiple of world_size\\*grad_accum"):
        Trainer(m, TrainConfig(batch_size=10, grad_accum=3), CopyTask(40, k=8))
    with pytest.raises(ValueError, match="optimizer"): Trainer(m, TrainConfig(batch_size=4, optimizer="sgd"), CopyTask(40, k=8))
    with pytest.raises(ValueError, match="smaller than one micro-batch"): Trainer(m, TrainConfig(batch_size=64), CopyTask(10, k=8))


# -- DDP: 2 gloo processes with the global batch split == 1 process with the whole batch -------------------------
STEPS, GLOBAL_BATCH = 4, 16


def _train(world, rank, out):
    torch.manual_seed(0)
    model = tiny_lm("performer", dropout=0.0, redraw_interval=1)        # redrawn every step from the global RNG
    cfg = TrainConfig(max_steps=STEPS, batch_size=GLOBAL_BATCH, lr=3e-3, warmup_steps=2, log_every=0, eval_every=0,
                      progress=False, seed=5)
    hist = Trainer(model, cfg, CopyTask(64, k=8), loss_fn=lm_loss).fit()
    fm = model.body.blocks[0].attn.algorithm.feature_map
    torch.save({"params": {n: p.detach() for n, p in model.named_parameters()}, "draw": fm.weight.clone(),
                "losses": [h["loss"] for h in hist]}, os.path.join(out, f"r{world}_{rank}.pt"))


def _worker(rank, world, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(out, 'store')}", rank=rank, world_size=world)
    try: _train(world, rank, out)
    finally: dist.destroy_process_group()


def test_ddp_two_gloo_processes_equal_one(tmp_path):
    out = str(tmp_path)
    mp.spawn(_worker, args=(2, out), nprocs=2, join=True)
    _train(1, 0, out)
    one, r0, r1 = (torch.load(os.path.join(out, f), weights_only=False) for f in ("r1_0.pt", "r2_0.pt", "r2_1.pt"))
    assert torch.equal(r0["draw"], r1["draw"])                           # identical feature draws on every rank
    assert torch.equal(one["draw"], r0["draw"])
    for n in one["params"]:
        assert torch.equal(r0["params"][n], r1["params"][n]), n          # ranks stay in sync
        torch.testing.assert_close(r0["params"][n], one["params"][n], atol=1e-5, rtol=1e-4)
    assert r0["losses"] == pytest.approx(one["losses"], abs=1e-5)


def test_trainer_progress_bar_respects_tqdm_disable(capsys, monkeypatch):
    # `kattn run` sets TQDM_DISABLE so that executed records hold no progress-bar output
    def run():
        torch.manual_seed(0)
        m = CausalLM(LMConfig(vocab_size=16, d_model=16, num_heads=2, num_layers=1, d_ff=32, max_len=10, dropout=0.0,
                              attention="softmax", attention_options={}))
        Trainer(m, TrainConfig(max_steps=3, batch_size=4, warmup_steps=1, log_every=0, eval_every=0), CopyTask(16, k=4),
                loss_fn=lm_loss).fit()
        return capsys.readouterr().err
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert "3/3" in run()                                   # the bar is shown by default
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert run() == ""


# ---- damaged checkpoints, temporaries, metrics after resume ----------------------------------------------------------

def _ckpt(tmp_path):
    _run(2, tmp_path, 0)
    f = tmp_path / "checkpoint.pt"; assert f.is_file()
    return f


@pytest.mark.parametrize("damage", ["truncate", "empty", "flip32", "tail"])
def test_damaged_checkpoint_is_named(tmp_path, damage):
    f = _ckpt(tmp_path); b = f.read_bytes()
    if damage == "truncate": f.write_bytes(b[: len(b) // 2])
    elif damage == "empty": f.write_bytes(b"")
    elif damage == "tail": f.write_bytes(b + b"\0" * 8)
    else:                                                    # 32 flipped bytes inside a tensor's storage
        i = b.index(b"data/0") + 200
        f.write_bytes(b[:i] + bytes(x ^ 0xFF for x in b[i:i + 32]) + b[i + 32:])
    with pytest.raises(ValueError, match="checkpoint.pt") as e: _run(4, tmp_path, 0)
    msg = str(e.value)
    assert {"truncate": "truncated", "empty": "empty", "flip32": "SHA-256", "tail": "bytes"}[damage] in msg, msg


def test_checkpoint_roundtrip_has_checksum(tmp_path):
    f = _ckpt(tmp_path)
    from kattn.train import load_checkpoint
    s = load_checkpoint(f)
    assert s["step"] == 2 and "model" in s


def test_interrupted_save_leaves_no_temporary(tmp_path, monkeypatch):
    f = _ckpt(tmp_path); good = f.read_bytes()
    real = torch.save
    def dies(obj, fh, *a, **k): real(obj, fh, *a, **k); raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(KeyboardInterrupt): _run(3, tmp_path, 0)
    monkeypatch.setattr(torch, "save", real)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "metrics.jsonl"] and f.read_bytes() == good


def test_stale_temporary_removed_on_start(tmp_path):
    _ckpt(tmp_path)
    (tmp_path / "checkpoint.tmp").write_bytes(b"half a checkpoint from a killed run")
    def ev(m): raise RuntimeError("stop before any checkpoint is written")
    cfg = TrainConfig(max_steps=4, batch_size=12, grad_accum=2, lr=3e-3, warmup_steps=3, log_every=1, eval_every=1,
                      progress=False, out_dir=str(tmp_path), seed=3)
    with pytest.raises(RuntimeError, match="stop before"): Trainer(tiny_lm(), cfg, CopyTask(30, k=8), loss_fn=lm_loss, eval_fn=ev).fit()
    assert not (tmp_path / "checkpoint.tmp").exists()


def test_metrics_have_no_duplicate_steps_after_resume(tmp_path):
    N = 7
    def run(steps, fail_at=None):
        torch.manual_seed(0)
        def ev(m):
            if tr.step == fail_at: raise RuntimeError("crash after logging, before the next checkpoint")
            return {"x": 1.0}
        cfg = TrainConfig(max_steps=steps, batch_size=12, grad_accum=2, lr=3e-3, warmup_steps=3, log_every=1, eval_every=1,
                          ckpt_every=2, progress=False, out_dir=str(tmp_path), seed=3)
        tr = Trainer(tiny_lm("performer", redraw_interval=2), cfg, CopyTask(30, k=8), loss_fn=lm_loss, eval_fn=ev)
        return tr.fit()
    with pytest.raises(RuntimeError, match="crash"): run(N, fail_at=5)      # checkpoint at 4, metrics up to 5
    run(N)
    lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    assert [l["step"] for l in lines if "loss" in l] == list(range(1, N + 1))
    assert [l["step"] for l in lines if "eval/x" in l] == list(range(1, N + 1))


def test_image_training_runs_under_torchrun(tmp_path):
    # what the image-classification template hands to torchrun: a ViT, AugmentedImages and a partial of the image loss
    from functools import partial
    from torch.utils.data import TensorDataset
    from kattn.data.images import AugmentedImages
    from kattn.models import ViT, ViTConfig
    from kattn.train import fit_in_processes, image_classification_loss
    torch.manual_seed(0)
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 2, (64,))
    x[y == 1] += 1.0
    model = ViT(ViTConfig(image_size=8, patch_size=4, in_channels=1, d_model=16, num_heads=2, num_layers=1, d_ff=32,
                          num_classes=2, attention="lara", attention_options={"num_proposals": 1, "grid": (2, 2), "gamma": 2.0}))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(max_steps=3, batch_size=16, lr=1e-2, warmup_steps=1, log_every=0, eval_every=0, progress=False)
    hist = fit_in_processes(model, cfg, AugmentedImages(TensorDataset(x, y), pad=1),
                            partial(image_classification_loss, label_smoothing=0.1), nproc=2)
    assert len(hist) == 3 and all(math.isfinite(h["loss"]) for h in hist)
    assert not torch.equal(before["head.weight"], model.state_dict()["head.weight"])   # trained weights came back
