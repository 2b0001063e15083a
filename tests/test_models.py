"Tests for kattn.models: LM decoding, classifiers, seq2seq search, ViT 2D RPE, MLM, configs."
import pytest
import torch
from torch import nn
from kattn.layers import RelativePositionBias
from kattn.models import (CausalLM, ClassifierConfig, DualEncoderClassifier, LMConfig, MaskedLM, Seq2Seq, Seq2SeqConfig,
                          SequenceClassifier, TransformerConfig, ViT, ViTConfig, mask_tokens, paper_configs)


def small_lm(attention, **kw):
    torch.manual_seed(0)
    return CausalLM(LMConfig(vocab_size=13, d_model=32, num_heads=4, num_layers=2, d_ff=64, max_len=24, dropout=0.0,
                             attention=attention, attention_options=kw)).double().eval()


def test_config_defaults_are_the_papers():
    lm = LMConfig()
    assert (lm.num_layers, lm.num_heads, lm.d_model, lm.d_ff, lm.dropout, lm.max_len) == (6, 8, 512, 2048, 0.1, 512)   # Luo §4.2
    assert lm.attention == "nprf_rpe" and lm.attention_options["num_features"] == 64
    s2s = Seq2SeqConfig()                                                                                # Luo §4.3
    assert (s2s.num_layers, s2s.num_decoder_layers, s2s.d_model, s2s.num_heads, s2s.dropout) == (6, 6, 512, 4, 0.3)
    assert s2s.attention_options["num_features"] == 16 and s2s.decoder_options["num_features"] == 24
    c = ClassifierConfig()                                                                               # Chowdhury LRA Text
    assert (c.d_model, c.num_layers, c.num_heads, c.d_ff, c.pooling) == (256, 4, 4, 1024, "cls")
    v = ViTConfig()                                                                                      # DeiT-Small/16
    assert (v.d_model, v.num_heads, v.num_layers, v.image_size // v.patch_size) == (384, 6, 12, 14)
    assert set(paper_configs()) >= {"luo_wikitext103_lm", "luo_iwslt14", "luo_deit_base", "chowdhury_lra_retrieval"}


@pytest.mark.parametrize("attention", ["performer", "nprf_rpe", "softmax_rpe", "lara"])
def test_generate_equals_full_recompute(attention):
    lm = small_lm(attention)
    prompt = torch.randint(0, 13, (2, 4))
    ref = prompt
    with torch.no_grad():
        for _ in range(7): ref = torch.cat([ref, lm(ref)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(lm.generate(prompt, 7), ref)


def test_lm_shares_one_rpe_table_and_loss_is_causal():
    lm = small_lm("nprf_rpe")
    tables = {id(b.attn.rpe) for b in lm.body.blocks}
    assert len(tables) == 1 and isinstance(lm.body.blocks[0].attn.rpe, RelativePositionBias)
    ids = torch.randint(0, 13, (2, 10))
    ids2 = ids.clone(); ids2[:, 6:] = (ids2[:, 6:] + 1) % 13
    with torch.no_grad():
        torch.testing.assert_close(lm(ids)[:, :6], lm(ids2)[:, :6], atol=1e-10, rtol=1e-10)
    assert torch.isfinite(lm.loss(ids))


@pytest.mark.parametrize("attention", ["softmax", "performer", "lara"])
def test_classifier_mean_pooling_ignores_padding(attention):
    torch.manual_seed(0)
    clf = SequenceClassifier(ClassifierConfig(vocab_size=20, d_model=32, num_heads=4, num_layers=2, d_ff=64, max_len=40,
                                              attention=attention, pooling="mean", pad_id=0, head_hidden=(16,),
                                              dropout=0.0)).double().eval()
    ids = torch.randint(1, 20, (3, 11))
    with torch.no_grad():
        torch.testing.assert_close(clf(ids), clf(torch.cat([ids, torch.zeros(3, 5, dtype=torch.long)], 1)), atol=1e-9, rtol=1e-9)


def test_cls_pooling_and_dual_encoder():
    cfg = ClassifierConfig(vocab_size=20, d_model=32, num_heads=4, num_layers=1, d_ff=64, max_len=40, head_hidden=(16, 8),
                           pad_id=0, num_classes=3)
    clf = SequenceClassifier(cfg)
    out = clf(torch.randint(1, 20, (2, 9))); assert out.shape == (2, 3)
    out.sum().backward(); assert clf.encoder.cls.grad.abs().sum() > 0
    torch.manual_seed(0)
    dual = DualEncoderClassifier(ClassifierConfig(vocab_size=20, d_model=32, num_heads=4, num_layers=1, d_ff=64, max_len=40,
                                                  interaction="nli", head_hidden=(16,), dropout=0.0)).eval()
    a, b = torch.randint(1, 20, (2, 7)), torch.randint(1, 20, (2, 5))
    assert dual(a, b).shape == (2, 2)
    with torch.no_grad():     # the shared encoder embeds each document independently
        torch.testing.assert_close(dual.encoder(a), dual.encoder(torch.cat([a, b[:, :0]], 1)))
    with pytest.raises(ValueError, match="interaction"): DualEncoderClassifier(ClassifierConfig(vocab_size=5, interaction="dot"))


def s2s_model(decoder="nprf_rpe"):
    torch.manual_seed(0)
    cfg = Seq2SeqConfig(vocab_size=5, d_model=32, num_heads=4, num_layers=2, num_decoder_layers=2, d_ff=64, max_len=16,
                        dropout=0.0, attention="nprf_rpe", decoder_attention=decoder, cross_attention="performer",
                        attention_options={}, decoder_options={}, cross_options={})
    return Seq2Seq(cfg).double().eval()


def test_seq2seq_greedy_matches_parallel_and_beam1():
    m = s2s_model()
    src = torch.randint(2, 5, (3, 7))
    g = m.greedy_decode(src, bos=0, eos=1, max_len=6)
    with torch.no_grad(): pred = m(src, g[:, :-1]).argmax(-1)
    keep = torch.cat([torch.ones(3, 1, dtype=torch.bool), g[:, 1:-1] != 1], 1)     # positions before (and at) the first eos
    assert torch.equal(pred[keep], g[:, 1:][keep])
    best, _ = m.beam_search(src, bos=0, eos=1, beam_size=1, max_len=6, length_penalty=0.0)
    assert torch.equal(best, g)


def test_vit_2d_rpe_zero_init_is_identity_and_trains():
    torch.manual_seed(0)
    kw = dict(image_size=16, patch_size=4, d_model=32, num_heads=4, num_layers=2, d_ff=64, num_classes=5, pooling="cls")
    plain, rpe = ViT(ViTConfig(**kw)).double().eval(), ViT(ViTConfig(**kw, rpe_2d=True)).double().eval()
    rpe.load_state_dict(plain.state_dict(), strict=False)
    img = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad(): torch.testing.assert_close(rpe(img), plain(img))          # zero bias = no bias
    for att in ("softmax", "nprf_rpe"):
        v = ViT(ViTConfig(**{**kw, "pooling": "mean"}, attention=att, rpe_2d=True))
        v(torch.randn(2, 3, 16, 16)).sum().backward()
        assert v.rpe2d[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="divisible"): ViT(ViTConfig(image_size=15, patch_size=4))


def test_mlm_masking_rates_and_loss():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (300, 400), generator=g)
    special = torch.zeros_like(ids, dtype=torch.bool); special[:, 0] = True
    inp, lab = mask_tokens(ids, 1, 100, special=special, generator=g)
    chosen = lab != -100
    N = ids.numel() - 300
    assert not chosen[:, 0].any()
    assert abs(chosen.sum().item() / N - 0.15) < 5 * (0.15 * 0.85 / N) ** 0.5
    n = chosen.sum().item(); sd = (0.25 / n) ** 0.5
    assert abs((inp[chosen] == 1).float().mean().item() - 0.8) < 5 * sd
    assert torch.equal(inp[~chosen], ids[~chosen])
    m = MaskedLM(TransformerConfig(vocab_size=100, d_model=32, num_heads=4, num_layers=1, d_ff=64, max_len=400))
    assert m.head.proj.weight is m.body.embed.weight
    loss = m.loss(inp[:2], lab[:2]); loss.backward()
    assert torch.isfinite(loss) and abs(loss.item() - torch.log(torch.tensor(100.)).item()) < 1.0


def test_model_bad_configs():
    with pytest.raises(ValueError, match="vocab_size"): CausalLM(LMConfig())
    with pytest.raises(ValueError, match="pooling"): SequenceClassifier(ClassifierConfig(vocab_size=5, pooling="max"))
    with pytest.raises(ValueError, match="pos_embedding"): CausalLM(LMConfig(vocab_size=5, pos_embedding="rope"))
    with pytest.raises(ValueError, match="max_len"): small_lm("performer")(torch.zeros(1, 30, dtype=torch.long))


class UniformAttention(nn.Module):
    "Attention frozen to exactly uniform weights over the non-padding keys (a diagnostic, not a registry entry)."
    def forward(self, q, k, v, rpe_bias=None, causal=False, key_padding_mask=None, attn_bias=None):
        w = torch.ones(k.shape[:-1], dtype=v.dtype)
        if key_padding_mask is not None: w = w * (~key_padding_mask).reshape(k.shape[0], 1, k.shape[-2]).to(v.dtype)
        mean = (w[..., None] * v).sum(-2, keepdim=True) / w.sum(-1)[..., None, None]
        return mean.expand(*q.shape[:-1], v.shape[-1])


def _needle_accuracy(init: str, former_embedding: bool = False, seed: int = 0, n: int = 64, steps: int = 600):
    "Test accuracy of a uniform-attention classifier on the needle task (one signal token among n; 4 classes)."
    from kattn.data import sparsity
    x, y, _ = sparsity.generate(2048 + 512, seq_len=n, sparsity=1 / n, num_classes=4, seed=0)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    torch.manual_seed(seed)
    m = SequenceClassifier(ClassifierConfig(vocab_size=21, d_model=64, num_heads=2, num_layers=1, d_ff=128, dropout=0.0,
                                            max_len=n + 1, head_hidden=(64,), num_classes=4, pad_id=0, init=init))
    if former_embedding: nn.init.normal_(m.encoder.body.embed.weight, std=64 ** -0.5)   # the library's former default
    for blk in m.encoder.body.blocks: blk.attn.algorithm = UniformAttention()
    opt, g = torch.optim.AdamW(m.parameters(), lr=3e-3), torch.Generator().manual_seed(seed)
    for _ in range(steps):
        i = torch.randint(0, 2048, (32,), generator=g)
        loss = nn.functional.cross_entropy(m(x[i]), y[i]); opt.zero_grad(); loss.backward(); opt.step()
    with torch.no_grad(): return (m.eval()(x[2048:]).argmax(-1) == y[2048:]).float().mean().item()


def test_uniform_attention_learns_needle_with_lra_init():
    # Tokens must be distinguishable after the sinusoidal positions are added: with the LRA init (N(0, 1) embeddings,
    # Xavier layers) even attention frozen to uniform finds the single signal token; the library's former default
    # (PyTorch's layer defaults and an N(0, 1/d) table) stays at chance (0.25).
    assert _needle_accuracy("lra") >= 0.95
    assert _needle_accuracy("torch", former_embedding=True) < 0.3


def test_init_schemes():
    torch.manual_seed(0)
    cfg = dict(vocab_size=300, d_model=64, num_heads=2, num_layers=1, d_ff=128, max_len=8, attention="softmax",
               attention_options={})
    fs, lra, th = (CausalLM(LMConfig(**cfg, init=i)) for i in ("fairseq", "lra", "torch"))
    assert fs.body.embed.scale == 8.0 and lra.body.embed.scale == 1.0
    assert abs(fs.body.embed.weight.std().item() - 0.125) < 0.01 and abs(lra.body.embed.weight.std().item() - 1) < 0.05
    a_fs, a_lra = fs.body.blocks[0].attn, lra.body.blocks[0].attn
    bound = (6 / (64 + 64)) ** 0.5                                         # Xavier-uniform bound, fan_in = fan_out = 64
    assert bound / 2 ** 0.5 * 0.9 < a_fs.q_proj.weight.abs().max().item() <= bound / 2 ** 0.5
    assert bound * 0.9 < a_lra.q_proj.weight.abs().max().item() <= bound and a_lra.q_proj.bias is None
    assert torch.equal(a_fs.out_proj.bias, torch.zeros(64))
    ffn = lra.body.blocks[0].ffn.fc1
    assert ffn.bias.abs().max().item() < 1e-5 and ffn.weight.abs().max().item() <= (6 / (64 + 128)) ** 0.5
    vit = ViT(ViTConfig(image_size=8, patch_size=4, d_model=32, num_heads=2, num_layers=1, d_ff=64, num_classes=3))
    w = vit.body.blocks[0].ffn.fc1.weight
    assert w.abs().max().item() <= 0.04 and abs(w.std().item() - 0.0176) < 0.003   # N(0, .02^2) truncated at 2 sd
    assert CausalLM(LMConfig(**cfg, init="lra", proj_bias=True)).body.blocks[0].attn.q_proj.bias is not None
    with pytest.raises(ValueError, match="init must be one of"): CausalLM(LMConfig(**cfg, init="xavier"))


@pytest.mark.parametrize("prob", [1.5, -0.1, float("nan")])
def test_mask_tokens_rejects_bad_prob(prob):
    with pytest.raises(ValueError, match=r"prob.*\[0, 1\]"): mask_tokens(torch.zeros(2, 5, dtype=torch.long), 1, 10, prob=prob)


# --- edges: configs reject sizes that would build a silently broken model ----------------------------------------------
@pytest.mark.parametrize("cls", [TransformerConfig, LMConfig, ClassifierConfig, Seq2SeqConfig, ViTConfig])
@pytest.mark.parametrize("kw,name", [(dict(num_layers=-1), "num_layers"), (dict(num_layers=0), "num_layers"),
                                     (dict(d_model=4, num_heads=8), "head_dim"), (dict(d_model=30, num_heads=4), "num_heads"),
                                     (dict(num_heads=0), "num_heads"), (dict(d_ff=0), "d_ff"), (dict(max_len=0), "max_len"),
                                     (dict(dropout=1.5), "dropout"), (dict(num_layers=2.0), "num_layers")])
def test_configs_reject_bad_sizes(cls, kw, name):
    with pytest.raises((ValueError, TypeError), match=name): cls(**kw)


def test_seq2seq_config_rejects_negative_decoder_layers():
    with pytest.raises(ValueError, match="num_decoder_layers"): Seq2SeqConfig(num_decoder_layers=-1)
