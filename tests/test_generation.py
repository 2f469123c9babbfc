"""Fast RNN-mode generation: the lean RWKV-7 decoder, parallel prefill, batches, the graph stepper.

Every fast path is compared with an independent computation: the parallel forward (chunked
core), the differentiable reference step (the blocks' own code around ``wkv7.step``) or a
by-hand greedy loop over it.
"""
from __future__ import annotations

import pytest
import torch

import rwkvlab
from rwkvlab import model as M
from rwkvlab.model import generation as G


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny7(vocab=61, C=32, L=3, N=16, seed=0, dtype=torch.float32, **ranks):
    # unequal LoRA ranks: the decoder pads them to one rank, which must add exact zeros
    r = dict(d_decay=8, d_aaa=12, d_mv=4, d_gate=8)
    r.update(ranks)
    cfg = M.Config7.make(vocab, C, L, head_size=N, dim_ffn=48, **r)
    return M.RWKV7(cfg).init_weights("random", seed=seed).to(dtype)


def ids(B, T, vocab=61, seed=0):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def greedy_by_hand(m, prompt, n):
    """Prefill with the parallel forward, then argmax + the reference step, one token at a time."""
    with torch.no_grad():
        logits, s = m(torch.tensor([prompt]))
        logits, out = logits[:, -1], []
        for _ in range(n):
            t = int(logits[0].argmax())
            out.append(t)
            logits, s = m.reference_step(torch.tensor([t]), s)
    return out, s


# ---------------------------------------------------------------- the lean step
@pytest.mark.parametrize("B,T,L,N", [(1, 1, 1, 16), (2, 7, 3, 16), (3, 13, 2, 8)])
def test_lean_step_equals_parallel_logits_and_state(B, T, L, N):
    m = tiny7(L=L, N=N, seed=B + T)
    x = ids(B, T, seed=T)
    with torch.no_grad():
        logits, state = m(x, impl="chunked")
        st, outs = None, []
        for t in range(T):
            lt, st = m.step(x[:, t], st)
            outs.append(lt)
    assert m.decoder() is not None                     # the lean path ran, not the reference one
    rwkvlab.check("lean step vs parallel logits", torch.stack(outs, 1), logits, 1e-5)
    for i, (a, b) in enumerate(zip(st, state)):
        rwkvlab.check(f"block {i} state", list(a), list(b), 1e-5)


def test_lean_step_equals_reference_step_in_float64():
    m = tiny7(seed=4, dtype=torch.float64)
    x = ids(2, 6, seed=4)
    s_ref, s_fast = None, None
    for t in range(6):
        l_ref, s_ref = m.reference_step(x[:, t], m._check_state(s_ref, 2))      # under autograd
        with torch.no_grad():
            l_fast, s_fast = m.step(x[:, t], s_fast)
        rwkvlab.check(f"token {t}: lean vs reference", l_fast, l_ref.detach(), 1e-12)
    assert s_fast[0].wkv.dtype == torch.float64


def test_step_under_autograd_differentiates_and_leaves_the_state_alone():
    m = tiny7(seed=5)
    x = ids(2, 4, seed=5)
    _, st = m(x)
    before = [t.clone() for layer in st for t in layer]
    logits, _ = m.step(x[:, 0], st)                    # grad enabled: the reference path
    logits.square().sum().backward()
    assert m.blocks[1].att.w1.grad is not None and float(m.blocks[1].att.w1.grad.abs().max()) > 0
    with torch.no_grad():
        fast, _ = m.step(x[:, 0], st)
    rwkvlab.check("lean vs autograd step", fast, logits.detach(), 1e-5)
    after = [t for layer in st for t in layer]
    assert all(torch.equal(a, b) for a, b in zip(before, after)), "step must not modify the state passed in"


def test_decoder_follows_changes_of_the_weights():
    m = tiny7(seed=6)
    tok = torch.tensor([3, 4])
    with torch.no_grad():
        a, _ = m.step(tok)
        dec = m.decoder()
        assert m.decoder() is dec                      # cached while nothing changes
        m.blocks[0].att.receptance.weight.mul_(1.5)    # in place, as an optimiser step
        b, _ = m.step(tok)
        ref, _ = m(tok[:, None])
    assert m.decoder() is not dec
    assert (a - b).abs().max() > 1e-3
    rwkvlab.check("lean step after an in-place change", b, ref[:, 0], 1e-5)
    other = tiny7(seed=7)
    m.load_state_dict(other.state_dict(), assign=True)  # parameters replaced
    with torch.no_grad():
        c, _ = m.step(tok)
        want, _ = other.step(tok)
    rwkvlab.check("lean step after load_state_dict(assign=True)", c, want, 1e-6)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 3e-2), (torch.float16, 5e-3)])
def test_half_precision_weights_with_a_float32_state(dtype, tol):
    m32 = tiny7(seed=8)
    m = tiny7(seed=8, dtype=dtype)
    x = ids(2, 9, seed=8)
    with torch.no_grad():
        ref, _ = m32(x)
        st, outs = None, []
        for t in range(9):
            lt, st = m.step(x[:, t], st)
            outs.append(lt.float())
    assert outs[0].dtype == torch.float32 and st[0].wkv.dtype == torch.float32
    assert st[0].att_shift.dtype == dtype
    rwkvlab.check(f"{dtype} decoding vs float32 parallel", torch.stack(outs, 1), ref, tol)


# ---------------------------------------------------------------- prefill and generate
def test_prefill_hands_over_the_state_the_steps_would_have_left():
    m = tiny7(seed=9)
    x = ids(2, 11, seed=9)
    with torch.no_grad():
        last, s_par = m.prefill(x)
        st, lt = None, None
        for t in range(11):
            lt, st = m.step(x[:, t], st)
        full, _ = m(x)
    rwkvlab.check("prefill logits = last parallel position", last, full[:, -1], 1e-6)
    rwkvlab.check("prefill logits = last step's", last, lt, 1e-5)
    for i, (a, b) in enumerate(zip(s_par, st)):
        rwkvlab.check(f"handed-over state, block {i}", list(a), list(b), 1e-5)


def test_generate_equals_a_greedy_loop_by_hand():
    m = tiny7(seed=10, dtype=torch.float64)
    prompt = [5, 17, 2, 40, 33]
    gen = m.generate(prompt, 12, temperature=0)
    got = list(gen)
    want, s_want = greedy_by_hand(m, prompt, 12)
    assert got == want
    for i, (a, b) in enumerate(zip(gen.state, s_want)):
        rwkvlab.check(f"generate's final state, block {i}", list(a), list(b), 1e-12)
    st = gen.stats
    assert st.prefill_tokens == 5 and st.decode_steps == 12 and st.decode_s > 0 and st.prefill_s > 0
    assert "tok/s" in st.line()


def test_generate_continues_from_a_state_and_stops_at_a_stop_token():
    m = tiny7(seed=11, dtype=torch.float64)
    prompt = [1, 2, 3, 4, 5, 6]
    with torch.no_grad():
        _, s = m(torch.tensor([prompt[:3]]))
    whole = list(m.generate(prompt, 8, temperature=0))
    rest = list(m.generate(prompt[3:], 8, temperature=0, state=s))
    assert rest == whole
    stop = whole[3]
    cut = list(m.generate(prompt, 8, temperature=0, stop={stop}))
    assert cut == whole[:whole.index(stop) + 1]


def test_sampled_generation_is_reproducible_and_the_graph_stepper_agrees():
    m = tiny7(seed=12)
    a = list(m.generate([1, 2, 3], 15, temperature=0.9, top_p=0.9, seed=4))
    b = list(m.generate([1, 2, 3], 15, temperature=0.9, top_p=0.9, seed=4))
    c = list(m.generate([1, 2, 3], 15, temperature=0.9, top_p=0.9, seed=4, graph=True))
    d = list(m.generate([1, 2, 3], 15, temperature=0.9, top_p=0.9, seed=5))
    assert a == b == c and a != d


def test_rwkv6_generates_through_the_reference_step():
    cfg = M.Config6.make(61, 32, 2, head_size=16, d_mix=4, d_decay=8, dim_ffn=48)
    m = M.RWKV6(cfg).init_weights("random", seed=1).double()
    assert m.decoder() is None
    got = list(m.generate([3, 4, 5], 6, temperature=0))
    assert got == greedy_by_hand(m, [3, 4, 5], 6)[0]
    with pytest.raises(ValueError, match="^graph:"):
        list(m.generate([3], 2, graph=True))


def test_greedy_one_token_ahead_on_the_graph_stepper_equals_the_plain_loop():
    """Greedy decoding on the static-buffer stepper runs one token ahead (the argmax feeds the next
    replay on the device, the host reads each token a step late): the tokens, each row's own
    length and stop, its final state, and the step count equal the plain loop's and the by-hand
    loop's, for one sequence and for a batch (here on CPU, the graph replayed eagerly)."""
    m = tiny7(seed=16, dtype=torch.float64)
    prompts = [[1, 2, 3], [7, 8, 4], [9, 10, 11]]
    alone = [greedy_by_hand(m, p, 7) for p in prompts]
    stop1 = alone[1][0][2]
    kw = dict(temperature=0, stop=[None, {stop1}, None])
    plain = m.generate_batch(prompts, [7, 7, 1], graph=False, **kw)
    ahead = m.generate_batch(prompts, [7, 7, 1], graph=True, **kw)
    assert ahead.tokens == plain.tokens == [alone[0][0], alone[1][0][:3], alone[2][0][:1]]
    for a, b in zip(ahead.state, plain.state):
        rwkvlab.check("one-token-ahead final states vs the plain loop's", list(a), list(b), 1e-12, quiet=True)
    for i, (a, b) in enumerate(zip(_rows(ahead.state, [0]), alone[0][1])):
        rwkvlab.check(f"row 0's final state vs by hand, block {i}", list(a), list(b), 1e-12, quiet=True)
    assert ahead.stats.decode_steps == plain.stats.decode_steps == 7
    gen = m.generate(prompts[0], 5, temperature=0, graph=True)
    assert list(gen) == alone[0][0][:5] and gen.stats.decode_steps == 5


def _rows(state, rows):
    return [type(layer)(*(t[rows] for t in layer)) for layer in state]


# ---------------------------------------------------------------- batches
def test_batch_rows_equal_separate_runs_each_with_its_own_length_and_stop():
    m = tiny7(seed=13, dtype=torch.float64)
    prompts = [[1, 2, 3], [7, 8], [9, 10, 11, 12, 13]]
    alone = [greedy_by_hand(m, p, 9) for p in prompts]
    stop_row2 = alone[2][0][4]
    res = m.generate_batch(prompts, [9, 4, 9], temperature=0, stop=[None, None, {stop_row2}])
    want2 = alone[2][0][:alone[2][0].index(stop_row2) + 1]
    assert res.tokens == [alone[0][0], alone[1][0][:4], want2]
    # each row's state is the one after its own last token
    for b, n in ((0, 9), (1, 4), (2, len(want2))):
        _, s_b = greedy_by_hand(m, prompts[b], n)
        for i, (got, want) in enumerate(zip(res.state, s_b)):
            rwkvlab.check(f"row {b} state, block {i}", [t[b:b + 1] for t in got], list(want), 1e-12)
    assert res.stats.batch == 3 and res.stats.prefill_tokens == 10


@pytest.mark.parametrize("graph", [False, True])
def test_batch_of_one_length_is_one_prefill_and_matches_rows(graph):
    m = tiny7(seed=14, dtype=torch.float64)
    prompts = ids(4, 6, seed=14).tolist()
    res = m.generate_batch(prompts, 7, temperature=0, graph=graph)
    assert res.tokens == [greedy_by_hand(m, p, 7)[0] for p in prompts]
    assert all(len(t) == 7 for t in res.tokens)


def test_batched_sampling_draws_from_softmax_over_temperature():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[0.0, 1.0, -float("inf")]]).repeat(4000, 1)
    draws = G.sample_rows(logits, 0.5, 1.0, g)
    want = 1 / (1 + torch.exp(torch.tensor(-2.0)))                   # softmax([0, 2])[1]
    assert abs(float(draws.double().mean()) - float(want)) < 0.03
    assert int(draws.max()) <= 1                                      # a masked token is never drawn
    rand = torch.randn(16, 50, generator=g)
    assert torch.equal(G.sample_rows(rand, 0.0, 0.9, g), rand.argmax(-1))
    assert torch.equal(G.sample_rows(rand, 1.0, 1e-6, g), rand.argmax(-1))   # a nucleus of one token


@pytest.mark.parametrize("kw,arg", [(dict(prompts=[]), "prompt_ids"), (dict(prompts=[[1], []]), "prompt_ids"),
                                    (dict(prompts=[[1, 99]]), "prompt_ids"), (dict(n_tokens=[1, 2, 3]), "n_tokens"),
                                    (dict(n_tokens=-1), "n_tokens"), (dict(stop="x"), "stop"),
                                    (dict(temperature=-1), "temperature"), (dict(graph="yes"), "graph"),
                                    (dict(seed=1.5), "seed"), (dict(threads=0), "threads")])
def test_generate_batch_checks_its_arguments(kw, arg):
    m = tiny7()
    args = dict(prompts=[[1, 2], [3]], n_tokens=3)
    args.update(kw)
    with pytest.raises(ValueError, match=f"^{arg}:"):
        m.generate_batch(**args)


def test_graph_capture_is_refused_off_cuda():
    m = tiny7()
    with pytest.raises(ValueError, match="^graph: CUDA graphs"):
        G.GraphStepper(m.decoder(), 1, capture=True)


# ---------------------------------------------------------------- the CLI
def _cli(capsys, *argv):
    from rwkvlab.__main__ import main

    rc = main(["generate", *argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture(scope="module")
def byte_ckpt(tmp_path_factory):
    m = tiny7(vocab=256, C=32, L=2, seed=15)
    p = tmp_path_factory.mktemp("gen") / "bytes.pth"
    M.save(m, p)
    return m, p


def test_cli_reports_prefill_and_decode_rates_and_batches(byte_ckpt, capsys):
    m, p = byte_ckpt
    rc, out, err = _cli(capsys, "--model", str(p), "--prompt", "hey", "--tokens", "5", "--temperature", "0",
                        "--batch", "3", "--dtype", "fp32", "--device", "cpu", "--threads", "1")
    assert rc == 0, err
    want = "hey" + rwkvlab.tokenizer.ByteTokenizer().decode(list(m.generate(list(b"hey"), 5, temperature=0)))
    assert out == "".join(f"--- {b}\n{want}\n" for b in range(3))
    last = err.strip().splitlines()[-1]
    assert "prefill 9 tokens" in last and "decode 5 steps x batch 3" in last and last.count("tok/s") == 2, err


@pytest.mark.parametrize("argv,option", [(["--dtype", "int8"], "--dtype"), (["--batch", "0"], "--batch"),
                                         (["--device", "nonsense"], "--device"), (["--threads", "0"], "--threads")])
def test_cli_bad_new_options_are_one_line(byte_ckpt, capsys, argv, option):
    _, p = byte_ckpt
    rc, out, err = _cli(capsys, "--model", str(p), *argv)
    assert rc == 2 and out == "" and err.startswith(f"generate: {option}: ") and err.count("\n") == 1, err


def test_cli_runs_a_bf16_checkpoint_in_bf16_and_fp32(byte_ckpt, capsys, tmp_path):
    m, _ = byte_ckpt
    p = tmp_path / "bf16.pth"
    torch.save({k: v.to(torch.bfloat16) for k, v in m.state_dict().items()}, p)   # as BlinkDL ships them
    for dtype in ("bf16", "fp32"):
        rc, out, err = _cli(capsys, "--model", str(p), "--prompt", "a", "--tokens", "4", "--dtype", dtype, "--quiet")
        assert rc == 0 and err == "" and out.startswith("a"), err
    m16 = M.load(p, dtype=torch.bfloat16)
    got = list(m16.generate([97], 4, temperature=0))
    rc, out, _ = _cli(capsys, "--model", str(p), "--prompt", "a", "--tokens", "4", "--dtype", "bf16", "--quiet",
                      "--temperature", "0")
    assert out == "a" + rwkvlab.tokenizer.ByteTokenizer().decode(got) + "\n"


def test_gpu_check_script_runs_its_cpu_dry_run(capsys):
    import importlib.util

    from rwkvlab import book

    spec = importlib.util.spec_from_file_location("gpu_generate_check", book.root() / "benchmarks" / "gpu_generate_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rc = mod.main(["--cpu-dry-run", "--size", "ch14", "--dtype", "fp32", "--batch", "1,2", "--tokens", "3", "--reps", "1"])
    out = capsys.readouterr().out
    assert rc == 0 and out.count("(ok)") == 4, out      # per batch: graph vs eager, fused vs torch WKV


def test_the_state_generate_hands_back_can_be_trained_through():
    m = tiny7(seed=16)
    gen = m.generate([1, 2, 3], 4, temperature=0)
    list(gen)
    assert not any(t.is_inference() for layer in gen.state for t in layer)
    logits, _ = m(ids(1, 3, seed=16), gen.state)          # parallel mode from it, with autograd
    logits.sum().backward()
    assert m.head.weight.grad is not None


def test_the_caller_runs_with_autograd_between_tokens_and_its_time_is_not_counted():
    import time

    m = tiny7(seed=17)
    torch.set_num_threads(2)
    assert G.decode_threads(m) == 1                  # a small model decodes on one thread ...
    gen = m.generate([1, 2], 3, temperature=0)
    for _ in gen:
        assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        assert torch.get_num_threads() == 2          # ... and the caller gets its own setting back
        time.sleep(0.05)
    assert gen.stats.decode_s < 0.05                 # three 50 ms sleeps of the caller are not decode time
    assert G.decode_threads(tiny7(C=256, L=32, N=32)) is None      # over 32 MiB: torch's setting
    torch.set_num_threads(1)


def test_the_torchscript_block_computes_what_the_python_block_does(monkeypatch):
    from rwkvlab.model import x070

    m = tiny7(seed=18)
    x = ids(2, 8, seed=18)
    with torch.no_grad():
        ref, _ = m(x)
    outs = {}
    for script in (False, True):
        dec = x070.Decoder(m, script=script)
        st = dec.new_state(2)
        with torch.inference_mode():
            outs[script] = torch.stack([dec.step_(x[:, t], st) for t in range(8)], 1).clone()
    assert x070.Decoder(m, script=True)._block() is not x070.decode_block      # it really is compiled
    rwkvlab.check("scripted vs Python block", outs[True], outs[False], 1e-6)
    rwkvlab.check("scripted block vs parallel", outs[True], ref, 1e-5)
    monkeypatch.setattr(x070.Decoder, "SCRIPT_AFTER", 3)
    dec = x070.Decoder(m)                           # automatic: Python first, the script after 3 steps
    st = dec.new_state(1)
    blocks = []
    with torch.inference_mode():
        for t in range(5):
            blocks.append(dec._block() is x070.decode_block)
            dec.step_(x[:1, t], st)
    assert blocks == [True, True, True, True, False]
    assert dec.compile() is dec and dec.script is True
