"""Whole RWKV-6/7 language models: the official formulas, the two modes, checkpoints, generate.

The reference here is written independently of rwkvlab.model: it reads a state dict by the
official RWKV-LM names and runs the RNN equations token by token in float64, with the state
in the official orientation (rows = value channels, RWKV-LM's CUDA kernels) rather than the
K×V layout rwkvlab uses. Agreement checks the names, the formulas and the layout at once.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import rwkvlab
from rwkvlab import model as M
from rwkvlab import wkv6, wkv7
from rwkvlab.checking import rel_err
from rwkvlab.tokenizer import ByteTokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny tensors: extra intra-op threads only wait on each other on a busy CPU
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- independent reference
def _ln(x, sd, name, eps=1e-5):
    return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps)


def _gn(x, sd, name, H):
    # per-head LayerNorm with eps 64e-5 == GroupNorm(H groups)
    xs = x.reshape(H, -1)
    xs = (xs - xs.mean(-1, keepdim=True)) / torch.sqrt(xs.var(-1, unbiased=False, keepdim=True) + 64e-5)
    return xs.reshape(-1) * sd[name + ".weight"] + sd[name + ".bias"]


def official_x070(sd, tokens):
    """RWKV-7 in RNN form for one sequence (list of ints) → logits [T, V], float64."""
    sd = {k: v.double().squeeze(0).squeeze(0) if v.ndim == 3 else v.double() for k, v in sd.items()}
    L = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    H, N = sd["blocks.0.att.r_k"].shape
    C = H * N
    prev_att = [torch.zeros(C, dtype=torch.float64) for _ in range(L)]
    prev_ffn = [torch.zeros(C, dtype=torch.float64) for _ in range(L)]
    S = [torch.zeros(H, N, N, dtype=torch.float64) for _ in range(L)]  # S[h, i(value), j(key)]
    out = []
    for tok in tokens:
        x = sd["emb.weight"][tok]
        x = _ln(x, sd, "blocks.0.ln0")
        v_first = None
        for i in range(L):
            p = f"blocks.{i}.att."
            xa = _ln(x, sd, f"blocks.{i}.ln1")
            d = prev_att[i] - xa
            prev_att[i] = xa
            mix = {s: xa + d * sd[p + "x_" + s] for s in "rwkvag"}
            r = sd[p + "receptance.weight"] @ mix["r"]
            w = torch.exp(-torch.exp(-F.softplus(-(sd[p + "w0"] + torch.tanh(mix["w"] @ sd[p + "w1"]) @ sd[p + "w2"])) - 0.5))
            k = sd[p + "key.weight"] @ mix["k"]
            v = sd[p + "value.weight"] @ mix["v"]
            if i == 0:
                v_first = v
            else:
                v = v + (v_first - v) * torch.sigmoid(sd[p + "v0"] + (mix["v"] @ sd[p + "v1"]) @ sd[p + "v2"])
            a = torch.sigmoid(sd[p + "a0"] + (mix["a"] @ sd[p + "a1"]) @ sd[p + "a2"])
            g = torch.sigmoid(mix["g"] @ sd[p + "g1"]) @ sd[p + "g2"]
            kk = (k * sd[p + "k_k"]).reshape(H, N)
            kk = kk / kk.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            k = k * (1 + (a - 1) * sd[p + "k_a"])
            rh, wh, kh, vh, ah = (t.reshape(H, N) for t in (r, w, k, v, a))
            aa, bb = -kk, kk * ah
            # CUDA kernel: sa = Σ_j a_j S_ij ; S_ij = S_ij w_j + sa b_j + v_i k_j ; y_i = Σ_j S_ij r_j
            sa = torch.einsum("hij,hj->hi", S[i], aa)
            S[i] = S[i] * wh[:, None, :] + sa[:, :, None] * bb[:, None, :] + vh[:, :, None] * kh[:, None, :]
            y = torch.einsum("hij,hj->hi", S[i], rh).reshape(C)
            y = _gn(y, sd, p + "ln_x", H)
            y = y + ((rh * kh * sd[p + "r_k"]).sum(-1, keepdim=True) * vh).reshape(C)
            x = x + sd[p + "output.weight"] @ (y * g)
            f = f"blocks.{i}.ffn."
            xf = _ln(x, sd, f"blocks.{i}.ln2")
            kf = xf + (prev_ffn[i] - xf) * sd[f + "x_k"]
            prev_ffn[i] = xf
            x = x + sd[f + "value.weight"] @ torch.relu(sd[f + "key.weight"] @ kf) ** 2
        out.append(sd["head.weight"] @ _ln(x, sd, "ln_out"))
    return torch.stack(out)


def official_x060(sd, tokens):
    """RWKV-6 in RNN form for one sequence → logits [T, V], float64 (state S[h, key, value])."""
    sd = {k: v.double().squeeze(0).squeeze(0) if v.ndim == 3 and v.shape[0] == 1 else v.double() for k, v in sd.items()}
    L = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    H, N = sd["blocks.0.att.time_faaaa"].shape
    C = H * N
    prev_att = [torch.zeros(C, dtype=torch.float64) for _ in range(L)]
    prev_ffn = [torch.zeros(C, dtype=torch.float64) for _ in range(L)]
    S = [torch.zeros(H, N, N, dtype=torch.float64) for _ in range(L)]
    out = []
    for tok in tokens:
        x = _ln(sd["emb.weight"][tok], sd, "blocks.0.ln0")
        for i in range(L):
            p = f"blocks.{i}.att."
            xa = _ln(x, sd, f"blocks.{i}.ln1")
            d = prev_att[i] - xa
            prev_att[i] = xa
            xxx = torch.tanh((xa + d * sd[p + "time_maa_x"]) @ sd[p + "time_maa_w1"]).reshape(5, -1)
            m = torch.einsum("fd,fdc->fc", xxx, sd[p + "time_maa_w2"])
            mix = {s: xa + d * (sd[p + "time_maa_" + s] + m[j]) for j, s in enumerate("wkvrg")}
            r = sd[p + "receptance.weight"] @ mix["r"]
            k = sd[p + "key.weight"] @ mix["k"]
            v = sd[p + "value.weight"] @ mix["v"]
            g = F.silu(sd[p + "gate.weight"] @ mix["g"])
            w = torch.exp(-torch.exp(sd[p + "time_decay"] + torch.tanh(mix["w"] @ sd[p + "time_decay_w1"]) @ sd[p + "time_decay_w2"]))
            rh, kh, vh, wh = (t.reshape(H, N) for t in (r, k, v, w))
            kv = kh[:, :, None] * vh[:, None, :]
            y = torch.einsum("hk,hkv->hv", rh, S[i] + sd[p + "time_faaaa"][:, :, None] * kv).reshape(C)
            S[i] = wh[:, :, None] * S[i] + kv
            x = x + sd[p + "output.weight"] @ (_gn(y, sd, p + "ln_x", H) * g)
            f = f"blocks.{i}.ffn."
            xf = _ln(x, sd, f"blocks.{i}.ln2")
            df = prev_ffn[i] - xf
            prev_ffn[i] = xf
            kf = torch.relu(sd[f + "key.weight"] @ (xf + df * sd[f + "time_maa_k"])) ** 2
            rf = torch.sigmoid(sd[f + "receptance.weight"] @ (xf + df * sd[f + "time_maa_r"]))
            x = x + rf * (sd[f + "value.weight"] @ kf)
        out.append(sd["head.weight"] @ _ln(x, sd, "ln_out"))
    return torch.stack(out)


# ---------------------------------------------------------------- tiny models
def tiny(version, vocab=61, C=32, L=2, N=16, seed=0, scheme="random"):
    if version == "x070":
        cfg = M.Config7.make(vocab, C, L, head_size=N, d_decay=8, d_aaa=8, d_mv=8, d_gate=8, dim_ffn=48)
        m = M.RWKV7(cfg)
    else:
        cfg = M.Config6.make(vocab, C, L, head_size=N, d_mix=4, d_decay=8, dim_ffn=48)
        m = M.RWKV6(cfg)
    return m.init_weights(scheme, seed=seed)


def tokens(B, T, vocab=61, seed=0):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


VERSIONS = ["x070", "x060"]
OFFICIAL = {"x070": official_x070, "x060": official_x060}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_matches_official_formulas(version, impl):
    m = tiny(version, seed=3).double()
    idx = tokens(2, 9, seed=1)
    logits, _ = m(idx, impl=impl)
    for b in range(2):
        ref = OFFICIAL[version](m.state_dict(), idx[b].tolist())
        rwkvlab.check(f"{version} {impl} vs official formulas, row {b}", logits[b], ref, 1e-10)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("B,T", [(1, 1), (2, 7), (3, 20)])
def test_parallel_equals_rnn_mode(version, B, T):
    m = tiny(version, seed=B + T)
    idx = tokens(B, T, seed=T)
    with torch.no_grad():
        logits, state = m(idx)
        st, steps = None, []
        for t in range(T):
            lt, st = m.step(idx[:, t], st)
            steps.append(lt)
    rwkvlab.check(f"{version} RNN vs parallel logits", torch.stack(steps, 1), logits, 1e-5)
    for i, (a, b) in enumerate(zip(st, state)):
        rwkvlab.check(f"{version} block {i} state", list(a), list(b), 1e-5)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("cut", [1, 6, 12])
def test_split_and_continue_equals_whole(version, cut):
    m = tiny(version, seed=7)
    idx = tokens(2, 13, seed=2)
    with torch.no_grad():
        whole, s_whole = m(idx)
        first, s = m(idx[:, :cut])
        second, s = m(idx[:, cut:], s)
    rwkvlab.check(f"{version} split at {cut}", torch.cat([first, second], 1), whole, 1e-5)
    rwkvlab.check(f"{version} split state", [t for layer in s for t in layer], [t for layer in s_whole for t in layer], 1e-5)


def test_training_recipe_init_runs_and_models_are_not_trivial():
    for version in VERSIONS:
        m = tiny(version, scheme="rwkv")
        logits, _ = m(tokens(1, 5))
        assert torch.isfinite(logits).all()
        # the recipe zeroes the output maps: the stack then is emb → ln0 → ln_out → head
        assert all(float(b.att.output.weight.detach().abs().max()) == 0 for b in m.blocks)
    m = tiny("x070")
    assert all(float(p.detach().abs().max()) > 0 for p in m.parameters())


@pytest.mark.parametrize("version", VERSIONS)
def test_gradients_chunked_equal_naive(version):
    m = tiny(version, seed=11).double()
    idx = tokens(2, 10, seed=4)
    grads = {}
    for impl in ("naive", "chunked"):
        m.zero_grad()
        logits, _ = m(idx, impl=impl)
        F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1)).backward()
        grads[impl] = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in m.parameters()]
    rwkvlab.check(f"{version} parameter gradients chunked vs naive", grads["chunked"], grads["naive"], 1e-8)
    assert any(float(g.abs().max()) > 0 for g in grads["naive"])


TRITON = ["triton_recurrent", "triton_chunked"]


def test_both_versions_have_both_triton_cores():
    # the list above is fixed, not filtered: a missing core is a failure, never a vanished test
    for mod in (wkv6, wkv7):
        for n in TRITON:
            assert callable(getattr(mod, n, None)), f"{mod.__name__}.{n} is missing"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("impl", TRITON)
def test_triton_cores_in_the_model(version, impl):
    dev = rwkvlab.device.device()          # the kernels' device: CPU (interpreter) here, CUDA on a GPU
    m = tiny(version, seed=5).to(dev)
    idx = tokens(1, 6, seed=5).to(dev)
    with torch.no_grad():
        ref, _ = m(idx, impl="naive")
        got, _ = m(idx, impl=impl)
    rwkvlab.check(f"{version} model with {impl}", got, ref, 1e-4)


def test_model_declares_rwkv7_decay_bound_to_the_chunked_kernel(monkeypatch):
    """x070 tells wkv7.triton_chunked that w ≥ −e^{−1/2} (its fast path); at the edge of that range
    (w0 large, so w = −e^{−1/2} to float32 rounding) the declared bound must still hold, and the
    logits equal the naive core's."""
    from rwkvlab.wkv7 import kernels_chunked

    dev = rwkvlab.device.device()
    m = tiny("x070", seed=6).to(dev)
    with torch.no_grad():
        for blk in m.blocks:
            blk.att.w0.fill_(60.0)
    seen = []
    real = kernels_chunked.triton_chunked

    def spy(*args, **kw):
        seen.append(kw.get("lower_bound"))
        return real(*args, **kw)

    monkeypatch.setattr(wkv7, "triton_chunked", spy)
    spy.__name__ = "triton_chunked"
    idx = tokens(1, 6, seed=6).to(dev)
    with torch.no_grad():
        ref, _ = m(idx, impl="naive")
        got, _ = m(idx, impl="triton_chunked")
    assert seen and all(lb is not None and lb <= wkv7.RWKV7_LOWER_BOUND for lb in seen)
    rwkvlab.check("x070 at w = -e^-0.5 with the declared bound", got, ref, 1e-4)


def test_default_core_follows_the_input_device():
    from rwkvlab.model.common import default_impl

    assert default_impl(torch.zeros(1)) == "chunked"          # CPU tensors never go to compiled kernels
    assert tiny("x070").impl is None


# ---------------------------------------------------------------- checkpoints
OFFICIAL_NAMES = {
    "x070": ["emb.weight", "blocks.0.ln0.weight", "blocks.0.ln1.bias", "blocks.1.ln2.weight", "blocks.0.att.x_r",
             "blocks.0.att.x_w", "blocks.0.att.x_k", "blocks.0.att.x_v", "blocks.0.att.x_a", "blocks.0.att.x_g",
             "blocks.0.att.w0", "blocks.0.att.w1", "blocks.0.att.w2", "blocks.0.att.a0", "blocks.0.att.a1",
             "blocks.0.att.a2", "blocks.1.att.v0", "blocks.1.att.v1", "blocks.1.att.v2", "blocks.0.att.g1",
             "blocks.0.att.g2", "blocks.0.att.k_k", "blocks.0.att.k_a", "blocks.0.att.r_k",
             "blocks.0.att.receptance.weight", "blocks.0.att.key.weight", "blocks.0.att.value.weight",
             "blocks.0.att.output.weight", "blocks.0.att.ln_x.weight", "blocks.0.att.ln_x.bias",
             "blocks.0.ffn.x_k", "blocks.0.ffn.key.weight", "blocks.0.ffn.value.weight", "ln_out.weight",
             "head.weight"],
    "x060": ["emb.weight", "blocks.0.ln0.bias", "blocks.0.att.time_maa_x", "blocks.0.att.time_maa_w",
             "blocks.0.att.time_maa_k", "blocks.0.att.time_maa_v", "blocks.0.att.time_maa_r",
             "blocks.0.att.time_maa_g", "blocks.0.att.time_maa_w1", "blocks.0.att.time_maa_w2",
             "blocks.0.att.time_decay", "blocks.0.att.time_decay_w1", "blocks.0.att.time_decay_w2",
             "blocks.0.att.time_faaaa", "blocks.0.att.gate.weight", "blocks.0.att.ln_x.weight",
             "blocks.1.ffn.time_maa_k", "blocks.1.ffn.time_maa_r", "blocks.1.ffn.receptance.weight",
             "blocks.1.ffn.key.weight", "blocks.1.ffn.value.weight", "ln_out.bias", "head.weight"],
}


@pytest.mark.parametrize("version", VERSIONS)
def test_save_load_round_trip_with_official_names(version, tmp_path):
    m = tiny(version, seed=9)
    path = tmp_path / "tiny.pth"
    M.save(m, path)
    sd = torch.load(path, weights_only=True)
    missing = [k for k in OFFICIAL_NAMES[version] if k not in sd]
    assert not missing, missing
    assert "blocks.1.ln0.weight" not in sd          # ln0 only in block 0
    assert tuple(sd["blocks.0.att.x_r" if version == "x070" else "blocks.0.att.time_maa_x"].shape) == (1, 1, 32)
    assert M.detect(sd) == version
    m2 = M.load(path)
    assert type(m2) is type(m) and m2.cfg == m.cfg
    idx = tokens(2, 5)
    with torch.no_grad():
        rwkvlab.check(f"{version} logits after save/load", m2(idx)[0], m(idx)[0], 0.0)


def test_loader_reads_sizes_and_converts_dtype():
    m = tiny("x070", vocab=40, C=64, L=3, N=32)
    sd = {k: v.to(torch.bfloat16) for k, v in m.state_dict().items()}
    m2 = M.load(sd)
    c = m2.cfg
    assert (c.vocab_size, c.n_embd, c.n_layer, c.n_head, c.head_size, c.dim_ffn, c.d_decay) == (40, 64, 3, 2, 32, 48, 8)
    assert m2.emb.weight.dtype == torch.float32


def test_loader_errors_name_the_key():
    sd = tiny("x070").state_dict()
    bad = dict(sd)
    del bad["blocks.1.att.k_a"]
    with pytest.raises(ValueError, match=r"blocks\.1\.att\.k_a.*\(1, 1, 32\)"):
        M.load(bad)
    bad = dict(sd, **{"blocks.0.att.bogus": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"unexpected key 'blocks\.0\.att\.bogus'"):
        M.load(bad)
    bad = dict(sd, **{"blocks.1.att.w0": torch.zeros(1, 1, 31)})
    with pytest.raises(ValueError, match=r"blocks\.1\.att\.w0.*\(1, 1, 31\).*expected \(1, 1, 32\)"):
        M.load(bad)
    bad = dict(sd)
    del bad["blocks.0.att.r_k"]
    with pytest.raises(ValueError, match="neither an RWKV-7"):
        M.load(bad)
    with pytest.raises(ValueError, match=r"^path_or_state_dict:"):
        M.load("/nonexistent/model.pth")
    # block 0's unused value-residual LoRA may be absent (some exporters drop it)
    ok = {k: v for k, v in sd.items() if k not in ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")}
    assert isinstance(M.load(ok), M.RWKV7)


def test_bad_inputs_raise_naming_the_argument():
    m = tiny("x070")
    with pytest.raises(ValueError, match=r"^idx:"):
        m(torch.zeros(2, 3))                         # float ids
    with pytest.raises(ValueError, match=r"^idx:"):
        m(torch.tensor([[1, 2, 99]]))                # out of vocabulary
    with pytest.raises(ValueError, match=r"^token:"):
        m.step(torch.tensor([[1]]))                  # [B, 1] instead of [B]
    with pytest.raises(ValueError, match=r"^impl:"):
        m(tokens(1, 3), impl="fastest")
    _, state = m(tokens(2, 3))
    with pytest.raises(ValueError, match=r"^state:"):
        m(tokens(3, 3), state)                       # batch mismatch
    with pytest.raises(ValueError, match=r"^head_size:"):
        M.Config7.make(10, 48, 1, head_size=32)._check()


def test_state_size_does_not_grow_with_length():
    m = tiny("x070")
    _, s1 = m(tokens(1, 2))
    _, s2 = m(tokens(1, 40))
    C, L, N = 32, 2, 16
    assert M.state_nbytes(s1) == M.state_nbytes(s2) == L * 4 * (2 * C + C * N)


def test_sample():
    logits = torch.tensor([0.0, 3.0, 1.0, 2.9])
    g = torch.Generator().manual_seed(0)
    assert M.sample(logits, temperature=0) == 1
    assert M.sample(logits, top_p=1e-6, generator=g) == 1        # nucleus of one token
    draws = {M.sample(logits, temperature=1.0, top_p=0.9, generator=g) for _ in range(200)}
    assert draws == {1, 3}                                       # 0 and 2 fall outside the 0.9 nucleus
    with pytest.raises(ValueError, match=r"^top_p:"):
        M.sample(logits, top_p=0)


# ---------------------------------------------------------------- generate, end to end
def _run_generate(*args):
    return subprocess.run([sys.executable, "-m", "rwkvlab", "generate", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _greedy(m, ids, n):
    return list(m.generate(ids, n, temperature=0))


def test_generate_byte_model_end_to_end(tmp_path):
    m = tiny("x070", vocab=256, seed=1)
    path = tmp_path / "bytes.pth"
    M.save(m, path)
    prompt = "Hello"
    res = _run_generate("--model", str(path), "--prompt", prompt, "--tokens", "12", "--temperature", "0")
    assert res.returncode == 0, res.stderr
    want = ByteTokenizer().decode(_greedy(m, list(prompt.encode()), 12))
    assert res.stdout == prompt + want + "\n"
    assert "x070" in res.stderr


def test_generate_world_model_end_to_end(tmp_path):
    from rwkvlab.tokenizer import WorldTokenizer

    m = tiny("x060", vocab=65536, seed=2)
    path = tmp_path / "world.pth"
    M.save(m, path)
    prompt = "The Eiffel tower is in"
    res = _run_generate("--model", str(path), "--prompt", prompt, "--tokens", "6", "--temperature", "0")
    assert res.returncode == 0, res.stderr
    tok = WorldTokenizer()
    want = tok.decode(_greedy(m, tok.encode(prompt), 6))
    assert res.stdout == prompt + want + "\n"


def test_generate_without_a_checkpoint_says_where_to_get_one():
    res = _run_generate("--prompt", "hi")
    assert res.returncode == 2
    assert "huggingface.co/BlinkDL" in res.stderr and "--model" in res.stderr


# ---------------------------------------------------------------- the softmax baseline
def test_transformer_baseline_parallel_equals_kv_cache_decoding():
    from rwkvlab.model import transformer as tf

    cfg = tf.Config(vocab_size=61, n_embd=32, n_layer=2, head_size=16, dim_ffn=48, max_len=16)
    m = tf.Transformer(cfg).init_weights(seed=1)
    with torch.no_grad():
        for blk in m.blocks:                           # make the attention path matter
            blk.proj.weight.normal_(0, 0.2)
            blk.value.weight.normal_(0, 0.2)
        idx = tokens(2, 9, seed=3)
        logits, cache = m(idx)
        c, outs = None, []
        for t in range(9):
            lt, c = m.step(idx[:, t], c)
            outs.append(lt)
    rwkvlab.check("softmax baseline: KV-cache decoding vs parallel", torch.stack(outs, 1), logits, 1e-5)
    rwkvlab.check("softmax baseline: cache", [x for kv in c for x in kv], [x for kv in cache for x in kv], 1e-6)
    assert tf.cache_nbytes(c) == 2 * 2 * 2 * 9 * 32 * 4    # B rows, K and V, L blocks, T tokens, C floats
    with pytest.raises(ValueError, match=r"^idx:"):
        m(tokens(1, 17))


# ---------------------------------------------------------------- training helpers
def test_recall_batches_answer_with_the_latest_value():
    from rwkvlab.model.train import RECALL_TASKS, Recall

    for task in list(RECALL_TASKS.values()) + [Recall(n_keys=3, n_values=5, n_pairs=7, n_queries=5, overwrite=True)]:
        inp, tgt, mask = task.batch(64, torch.Generator().manual_seed(0))
        assert inp.shape == tgt.shape == mask.shape == (64, task.length)
        assert (inp[:, 1:] == tgt[:, :-1]).all()
        assert int(mask.sum()) == 64 * task.n_queries
        for b in range(64):
            seq = inp[b].tolist() + [tgt[b, -1].item()]
            pairs = list(zip(seq[0:2 * task.n_pairs:2], seq[1:2 * task.n_pairs:2]))
            latest = dict(pairs)                               # later pairs overwrite earlier ones
            if not task.overwrite:
                assert len(latest) == task.n_pairs             # distinct keys
            queries = list(zip(seq[2 * task.n_pairs::2], seq[2 * task.n_pairs + 1::2]))
            assert all(latest[k] == v for k, v in queries)
            assert all(0 <= k < task.n_keys <= v < task.vocab_size for k, v in pairs)
    with pytest.raises(ValueError, match=r"^n_pairs:"):
        Recall(n_keys=4, n_pairs=5).batch(2, torch.Generator())


def test_fit_learns_and_text_batches(capsys):
    from rwkvlab.model import train

    task = train.Recall(n_keys=4, n_values=4, n_pairs=2, n_queries=2)
    models = train.small_models(task.vocab_size, n_embd=16, n_layer=1, head_size=8, max_len=task.length + 1)
    assert M.state_nbytes(models["RWKV-7"](tokens(1, 3, vocab=8))[1]) == M.state_nbytes(models["RWKV-6"](tokens(1, 3, vocab=8))[1])
    g = torch.Generator().manual_seed(0)
    losses = train.fit(models["RWKV-6"], lambda: task.batch(32, g), 60, 1e-2, label="t")
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.3
    assert "60/60" in capsys.readouterr().out                 # the progress bar finished
    data = torch.arange(100)
    x, y, m = train.text_batches(data, 4, 10, torch.Generator().manual_seed(0))()
    assert x.shape == y.shape == (4, 10) and m is None and (y == x + 1).all()
    with pytest.raises(ValueError, match=r"^data:"):
        train.text_batches(torch.arange(5), 2, 10, torch.Generator())


@pytest.mark.parametrize("version", VERSIONS)
def test_triton_core_skips_the_value_checks_wait(version, monkeypatch):
    """The model calls triton_chunked with check_values=False (its own code made the values; the
    check's flag read would make every layer wait for the device), and the answer is unchanged."""
    from rwkvlab.wkv6 import kernels_subchunk as ks
    from rwkvlab.wkv7 import kernels_chunked as kc

    dev = rwkvlab.device.device()
    m = tiny(version).to(dev)
    idx = tokens(2, 21).to(dev)
    with torch.no_grad():
        want, _ = m(idx, impl="chunked")
        checks = []
        if version == "x070":            # the check switch as both forwards (plain and folded) receive it
            real = kc._forward_args
            monkeypatch.setattr(kc, "_forward_args", lambda *a, **k: (checks.append(a[4]), real(*a, **k))[1])
        else:
            real = ks.fwd
            monkeypatch.setattr(ks, "fwd", lambda *a, **k: (checks.append(a[11]), real(*a, **k))[1])
        got, _ = m(idx, impl="triton_chunked")
    assert checks and not any(checks)
    assert (got.float() - want.float()).abs().max() / want.float().abs().max() < 1e-5


def test_x070_fused_time_mix_pieces_match_the_torch_ones(monkeypatch):
    """x070's time mix with its elementwise pieces as Triton kernels (token shift + six mixes,
    GroupNorm + bonus + gate; what a GPU takes by default) against the torch pieces: the logits,
    the state handed on, and the gradient of every parameter, over two segments (the shift state)."""
    from rwkvlab.model import x070
    from rwkvlab.wkv7 import kernels_fused as kf

    dev = rwkvlab.device.device()
    idx = tokens(2, 19).to(dev)
    out = {}
    for fused in (False, True):
        monkeypatch.setattr(x070, "FUSED", fused)
        calls = []
        for name in ("fused_addcmul", "fused_output"):
            real = getattr(kf, name)
            monkeypatch.setattr(kf, name, lambda *a, _real=real, **k: (calls.append(1), _real(*a, **k))[1])
        m = tiny("x070", seed=3).to(dev)
        with torch.no_grad():
            for p in m.parameters():          # every parameter away from its init, so each path matters
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())).to(dev))
        logits1, state = m(idx[:, :11], impl="chunked")
        logits2, _ = m(idx[:, 11:], state, impl="chunked")
        loss = logits1.float().square().mean() + logits2.float().square().mean()
        grads = torch.autograd.grad(loss, list(m.parameters()), allow_unused=True)   # block 0's v0..v2: unused
        out[fused] = (torch.cat([logits1, logits2], 1), grads, bool(calls))
        monkeypatch.undo()
    (l0, g0, c0), (l1, g1, c1) = out[False], out[True]
    assert not c0 and c1                                       # the switch picks the path
    assert rel_err(l1, l0) < 1e-5
    names = [n for n, _ in tiny("x070").named_parameters()]
    for n, a_, b_ in zip(names, g1, g0):
        assert (a_ is None) == (b_ is None), n
        assert a_ is None or rel_err(a_, b_) < 1e-5, (n, rel_err(a_, b_))    # achieved ≤ 2e-6
