"""Bad and edge-case input across the public API: each case of the reliability issue, once for every
implementation it concerns, so that a regression in any one rung fails here.

One contract, from one table (``SEQ`` and ``STEPS`` below), for wkv6, wkv7 and attention:

* ``scale`` is a finite real number — int, float or a numpy scalar, never ``bool``, NaN or ±inf;
* ``initial_state`` may be any float dtype; every implementation casts it to its accumulation
  dtype (float32, or float64 for the torch rungs' float64 references);
* empty sizes (B, H, K or V = 0) are a ``ValueError`` naming the argument, in every implementation;
* a tensor on another device (``meta`` here) is a device error, raised before any value is read.
"""
from __future__ import annotations

import io
import math
import pickle
import re

import numpy as np
import pytest
import torch

import rwkvlab
from rwkvlab import aft, attention, book, rel_err, wkv4, wkv6, wkv7
from rwkvlab import model as M
from rwkvlab import tokenizer as tk

DEV = rwkvlab.device.device()
GPU = rwkvlab.device.has_gpu()


# --------------------------------------------------------------------------- the table
def _wkv6_inputs(B=1, T=3, H=1, K=16, V=16, seed=0):
    r, k, v, w, u = wkv6.random_inputs(B, T, H, K, V, seed=seed)
    return [x.to(DEV) for x in (r, k, v, w, u)]


def _wkv7_inputs(B=1, T=3, H=1, K=16, V=16, seed=0):
    return [x.to(DEV) for x in wkv7.random_inputs(B, T, H, K, V, seed=seed)]


def _attn_inputs(B=1, T=3, H=1, K=16, V=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, H, n, generator=g).to(DEV) for n in (K, K, V)]


# name -> (function, input maker, index of the [B, T, H, V] input, takes initial_state)
SEQ = {
    "wkv6.naive": (wkv6.naive, _wkv6_inputs, 2, True),
    "wkv6.chunked": (wkv6.chunked, _wkv6_inputs, 2, True),
    "wkv6.triton_recurrent": (wkv6.triton_recurrent, _wkv6_inputs, 2, True),
    "wkv6.triton_chunked": (wkv6.triton_chunked, _wkv6_inputs, 2, True),
    "wkv7.naive": (wkv7.naive, _wkv7_inputs, 3, True),
    "wkv7.chunked": (wkv7.chunked, _wkv7_inputs, 3, True),
    "wkv7.triton_recurrent": (wkv7.triton_recurrent, _wkv7_inputs, 3, True),
    "wkv7.triton_chunked": (wkv7.triton_chunked, _wkv7_inputs, 3, True),
    "attention.naive": (attention.naive, _attn_inputs, 2, False),
    "attention.parallel": (attention.parallel, _attn_inputs, 2, False),
    "attention.chunked": (attention.chunked, _attn_inputs, 2, False),
    "attention.triton_chunked": (attention.triton_chunked, _attn_inputs, 2, False),
}
WKV = [n for n, (_, _, _, st) in SEQ.items() if st]


def _step6(xs, state=None, scale=1.0):
    r, k, v, w, u = xs
    return wkv6.step(r[:, 0], k[:, 0], v[:, 0], w[:, 0], u, state=state, scale=scale)


def _step7(xs, state=None, scale=1.0):
    r, w, k, v, a, b = (x[:, 0] for x in xs)
    if state is None:
        state = torch.zeros(r.shape[0], r.shape[1], r.shape[2], v.shape[-1], device=r.device)
    return wkv7.step(r, w, k, v, a, b, state, scale=scale)


def _kv_step(xs, state=None, scale=None):
    q, k, v = (x[:, 0] for x in xs)
    return attention.kv_cache_step(q, k, v, scale=scale)


STEPS = {"wkv6.step": (_step6, _wkv6_inputs), "wkv7.step": (_step7, _wkv7_inputs),
         "attention.kv_cache_step": (_kv_step, _attn_inputs)}

BAD_SCALES = [float("nan"), float("inf"), -float("inf"), np.float32("nan"), True, np.bool_(True), "1",
              torch.tensor(1.0), [1.0]]
GOOD_SCALES = [np.float32(0.5), np.float64(0.5), 0.5, torch.tensor(0.5).item()]


@pytest.mark.parametrize("scale", BAD_SCALES, ids=repr)
@pytest.mark.parametrize("name", list(SEQ) + list(STEPS))
def test_scale_must_be_a_finite_real_number(name, scale):
    if name in SEQ:
        fn, make, _, _ = SEQ[name]
        call = lambda: fn(*make(), scale=scale)  # noqa: E731
    else:
        step, make = STEPS[name]
        call = lambda: step(make(), scale=scale)  # noqa: E731
    with pytest.raises(ValueError, match="^scale:"):
        call()


@pytest.mark.parametrize("name", list(SEQ) + list(STEPS))
def test_scale_accepts_numpy_scalars_and_ints(name):
    if name in SEQ:
        fn, make, _, _ = SEQ[name]
        run = lambda s: fn(*make(), scale=s)  # noqa: E731
    else:
        step, make = STEPS[name]
        run = lambda s: step(make(), scale=s)  # noqa: E731
    want = run(0.5)
    for s in GOOD_SCALES:
        assert rel_err(run(s), want) == 0, f"{name}: scale={s!r} ({type(s).__name__})"
    run(1)
    run(np.int64(1))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", WKV + ["wkv6.step", "wkv7.step"])
def test_initial_state_of_any_float_dtype_is_cast(name, dtype):
    # the documented contract: any float dtype, cast to float32 (every rung, the Triton ones too)
    if name in SEQ:
        fn, make, vi, _ = SEQ[name]
        xs = make(B=2)
        run = lambda s: fn(*xs, initial_state=s, output_final_state=True)  # noqa: E731
    else:
        step, make = STEPS[name]
        xs = make(B=2)
        run = lambda s: step(xs, state=s)  # noqa: E731
    V = xs[2 if name.startswith("wkv6") else 3].shape[-1]
    h0 = torch.randn(2, 1, 16, V, generator=torch.Generator().manual_seed(1)).to(DEV, dtype)
    o, ht = run(h0)
    o_ref, ht_ref = run(h0.float())
    assert ht.dtype == torch.float32
    assert rel_err(o, o_ref) <= 1e-6 and rel_err(ht, ht_ref) <= 1e-6


@pytest.mark.parametrize("name", WKV)
def test_initial_state_gradient_comes_back_in_its_dtype(name):
    fn, make, _, _ = SEQ[name]
    xs = make()
    h0 = torch.randn(1, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    h0 = h0.to(DEV).requires_grad_()
    o, ht = fn(*xs, initial_state=h0, output_final_state=True)
    (o.float().sum() + ht.sum()).backward()
    assert h0.grad is not None and h0.grad.dtype == torch.float64 and torch.isfinite(h0.grad).all()


# --------------------------------------------------------------------------- empty sizes
EMPTY = {"B": (dict(B=0), 0), "H": (dict(H=0), 0), "K": (dict(K=0), 0), "V": (dict(V=0), 1)}


def _empty_inputs(make, sizes, vi):
    """Inputs of the usual shapes with one size 0 (built by hand: the makers cannot draw K = 0)."""
    shape = {**dict(B=1, T=3, H=1, K=16, V=16), **sizes}
    xs = make()
    out = []
    for i, x in enumerate(xs):
        if x.ndim == 4:
            n = shape["V"] if i == vi else shape["K"]
            out.append(torch.zeros(shape["B"], shape["T"], shape["H"], n, device=DEV))
        else:                                           # wkv6's u [H, K]
            out.append(torch.zeros(shape["H"], shape["K"], device=DEV))
    return out


@pytest.mark.parametrize("size", list(EMPTY))
@pytest.mark.parametrize("name", list(SEQ))
def test_empty_sizes_are_an_error_naming_the_argument(name, size):
    fn, make, vi, _ = SEQ[name]
    sizes, which = EMPTY[size]
    xs = _empty_inputs(make, sizes, vi)
    arg = {"wkv6": ["r", "v"], "wkv7": ["r", "v"], "attention": ["q", "v"]}[name.split(".")[0]][which]
    with pytest.raises(ValueError, match=f"^{arg}: expected {size} >= 1"):
        fn(*xs)


@pytest.mark.parametrize("name", list(wkv4.IMPLEMENTATIONS))
@pytest.mark.parametrize("B,C", [(0, 4), (2, 0)])
def test_wkv4_empty_sizes(name, B, C):
    k = torch.zeros(B, 3, C, device=DEV)
    with pytest.raises(ValueError, match="^k: expected"):
        wkv4.IMPLEMENTATIONS[name](k, k.clone(), torch.ones(C, device=DEV), torch.zeros(C, device=DEV))


@pytest.mark.parametrize("name", ["naive", "parallel", "chunked", "triton_chunked"])
@pytest.mark.parametrize("B,D", [(0, 4), (2, 0)])
def test_aft_empty_sizes(name, B, D):
    q = torch.zeros(B, 3, D, device=DEV)
    with pytest.raises(ValueError, match="^q: expected"):
        getattr(aft, name)(q, q.clone(), q.clone(), torch.zeros(3, 3, device=DEV))


# --------------------------------------------------------------------------- integer sizes
@pytest.mark.parametrize("bad", [True, False, 2.0, "16", None, 0])
@pytest.mark.parametrize("call", [
    lambda b: wkv4.chunked(*[torch.rand(1, 4, 2)] * 2, torch.ones(2), torch.zeros(2), chunk_size=b),
    lambda b: attention.chunked(*[torch.rand(1, 4, 1, 8)] * 3, block_size=b),
    lambda b: attention.triton_chunked(*[torch.rand(1, 4, 1, 8, device=DEV)] * 3, block_size=b),
    lambda b: aft.chunked(*[torch.rand(1, 4, 8)] * 3, torch.zeros(4, 4), block_size=b),
    lambda b: aft.triton_chunked(*[torch.rand(1, 4, 8, device=DEV)] * 3, torch.zeros(4, 4, device=DEV), block_size=b),
    lambda b: aft.triton_chunked(*[torch.rand(1, 4, 8, device=DEV)] * 3, torch.zeros(4, 4, device=DEV), block_d=b),
], ids=["wkv4.chunked", "attention.chunked", "attention.triton_chunked", "aft.chunked", "aft.triton_chunked",
        "aft.triton_chunked.block_d"])
def test_block_and_chunk_sizes_are_ints_not_bools(call, bad):
    with pytest.raises(ValueError, match="^(chunk_size|block_size|block_d):"):
        call(bad)


def test_chunk_sizes_accept_numpy_ints():
    k = torch.rand(1, 5, 2, dtype=torch.float64)
    w, u = torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    assert rel_err(wkv4.chunked(k, k, w, u, chunk_size=np.int64(2))[0], wkv4.naive(k, k, w, u)[0]) < 1e-12


@pytest.mark.parametrize("lam", [float("inf"), float("nan"), -1.0, True, "1"], ids=repr)
def test_aft_decay_bias_needs_a_finite_rate(lam):
    with pytest.raises(ValueError, match="^lam:"):
        aft.decay_bias(4, lam)
    with pytest.raises(ValueError, match="^T:"):
        aft.decay_bias(True, 0.5)
    assert torch.isfinite(aft.decay_bias(4, np.float32(0.5))).all()


# --------------------------------------------------------------------------- devices
def _on_meta(xs, i):
    return [x.to("meta") if j == i else x for j, x in enumerate(xs)]


@pytest.mark.parametrize("name", list(SEQ))
def test_a_tensor_on_another_device_is_a_device_error(name):
    fn, make, _, _ = SEQ[name]
    xs = make()
    for i in range(len(xs)):
        with pytest.raises(ValueError, match="device"):
            fn(*_on_meta(xs, i))
    with pytest.raises(ValueError, match="meta"):                 # all of them on meta: no values to check
        fn(*[x.to("meta") for x in xs])


@pytest.mark.parametrize("name", list(STEPS))
def test_steps_report_meta_tensors_as_a_device_error(name):
    step, make = STEPS[name]
    xs = make()
    for i in range(len(xs)):
        with pytest.raises(ValueError, match="device"):
            step(_on_meta(xs, i))


@pytest.mark.parametrize("name", list(wkv4.IMPLEMENTATIONS))
def test_wkv4_meta_tensor_is_a_device_error(name):
    xs = [torch.rand(1, 4, 2, device=DEV), torch.rand(1, 4, 2, device=DEV), torch.ones(2, device=DEV),
          torch.zeros(2, device=DEV)]
    for i in range(4):
        with pytest.raises(ValueError, match="device"):
            wkv4.IMPLEMENTATIONS[name](*_on_meta(xs, i))


@pytest.mark.parametrize("name", ["naive", "parallel", "chunked", "triton_chunked"])
def test_aft_meta_tensor_is_a_device_error(name):
    xs = [torch.rand(1, 4, 8, device=DEV) for _ in range(3)] + [torch.zeros(4, 4, device=DEV)]
    for i in range(4):
        with pytest.raises(ValueError, match="device"):
            getattr(aft, name)(*_on_meta(xs, i))


# --------------------------------------------------------------------------- check / rel_err
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_check_fails_when_the_reference_is_not_finite(bad, capsys):
    ref = torch.zeros(3)
    ref[1] = bad
    assert rel_err(torch.zeros(3), ref) == math.inf
    assert rel_err(ref, ref.clone()) == math.inf                     # not even equal to itself
    with pytest.raises(AssertionError, match="NaN or Inf"):
        rwkvlab.check("x", torch.zeros(3), torch.full((3,), bad))
    assert "FAILED" in capsys.readouterr().out
    with pytest.raises(AssertionError):
        rwkvlab.check("pair", (torch.zeros(2), torch.zeros(2)), (torch.zeros(2), ref[:2].clone() + ref[1]))


# --------------------------------------------------------------------------- the model
def _tiny(version="x070", vocab=61, seed=0):
    if version == "x070":
        cfg = M.Config7.make(vocab, 32, 1, head_size=16, d_decay=8, d_aaa=8, d_mv=8, d_gate=8, dim_ffn=48)
        return M.RWKV7(cfg).init_weights("random", seed=seed)
    cfg = M.Config6.make(vocab, 32, 1, head_size=16, d_mix=4, d_decay=8, dim_ffn=48)
    return M.RWKV6(cfg).init_weights("random", seed=seed)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    m = _tiny()
    M.save(m, d / "good.pth")
    M.save(_tiny(vocab=256, seed=4), d / "bytes.pth")           # a byte model: the CLI's tokenizer is built in
    return m, d


def _files(d):
    good = (d / "good.pth").read_bytes()
    cases = {"random bytes": bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
             "truncated": good[: len(good) // 2], "empty": b""}
    buf = io.BytesIO()
    torch.save(torch.nn.Linear(2, 2), buf)                         # a pickled module, not a state dict
    cases["pickled module"] = buf.getvalue()
    buf = io.BytesIO()
    torch.save([torch.zeros(2)], buf)                              # a list of tensors
    cases["a list"] = buf.getvalue()
    cases["plain pickle"] = pickle.dumps({"emb.weight": [1, 2]})
    return cases


@pytest.mark.parametrize("case", ["random bytes", "truncated", "empty", "pickled module", "a list", "plain pickle"])
def test_load_of_a_corrupt_file_is_one_value_error(saved, case):
    _, d = saved
    p = d / f"{case.replace(' ', '_')}.pth"
    p.write_bytes(_files(d)[case])
    with pytest.raises(ValueError, match=f"^path_or_state_dict: {re.escape(repr(str(p)))}"):
        M.load(p)


@pytest.mark.parametrize("spoil,key", [
    (lambda sd: sd.update({"blocks.0.att.r_k": sd["blocks.0.att.r_k"].tolist()}), "blocks.0.att.r_k"),
    (lambda sd: sd.update({"emb.weight": sd["emb.weight"].numpy()}), "emb.weight"),
    (lambda sd: sd["blocks.0.ffn.key.weight"].__setitem__((0, 0), float("nan")), "blocks.0.ffn.key.weight"),
    (lambda sd: sd["head.weight"].__setitem__((1, 2), float("inf")), "head.weight"),
    (lambda sd: sd.update({"ln_out.bias": sd["ln_out.bias"].long()}), "ln_out.bias"),
], ids=["list", "numpy", "nan", "inf", "int"])
def test_load_names_the_bad_key(saved, spoil, key):
    m, _ = saved
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    spoil(sd)
    with pytest.raises(ValueError, match=f"^checkpoint: {re.escape(repr(key))}"):
        M.load(sd)


def test_load_checks_dtype_device_and_impl(saved):
    m, d = saved
    for dtype in (torch.int32, torch.bool, "float32", None):
        with pytest.raises(ValueError, match="^dtype:"):
            M.load(d / "good.pth", dtype=dtype)
    for device in ("meta", "nonsense", 3.5):
        with pytest.raises(ValueError, match="^device:"):
            M.load(d / "good.pth", device=device)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="^device: 'cuda'.*no CUDA"):
            M.load(d / "good.pth", device="cuda")
    with pytest.raises(ValueError, match="^impl:"):
        M.load(d / "good.pth", impl="fast")
    got = M.load(d / "good.pth", dtype=torch.float64)
    assert got.emb.weight.dtype == torch.float64


def test_model_reports_tokens_and_states_on_another_device(saved):
    m, _ = saved
    with pytest.raises(ValueError, match="^token: expected a tensor on the model's device"):
        m.step(torch.tensor([1], device="meta"))
    with pytest.raises(ValueError, match="^idx: expected a tensor on the model's device"):
        m(torch.tensor([[1, 2]], device="meta"))
    state = m.empty_state(1)
    state[0] = M.LayerState(state[0].att_shift, state[0].wkv.to("meta"), state[0].ffn_shift)
    with pytest.raises(ValueError, match="^state: block 0 wkv expected on the model's device"):
        m.step(torch.tensor([1]), state)


@pytest.mark.parametrize("T", [0.01, 1e-6, 1e-300, 5e-324])
def test_sample_is_stable_at_small_temperatures(T):
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([0.0, 3.0, 1.0, 2.9, -float("inf")])
    assert {M.sample(logits, temperature=T, top_p=1.0, generator=g) for _ in range(20)} <= {1, 3}
    if T <= 1e-6:
        assert M.sample(logits, temperature=T, top_p=1.0, generator=g) == 1       # the argmax
    big = torch.randn(1000, generator=g) * 30
    assert M.sample(big.bfloat16(), temperature=T, generator=g) == int(big.bfloat16().float().argmax())


def test_sample_draws_from_softmax_of_logits_over_temperature():
    g = torch.Generator().manual_seed(1)
    logits = torch.tensor([0.0, 1.0])
    draws = [M.sample(logits, temperature=0.5, top_p=1.0, generator=g) for _ in range(4000)]
    want = 1 / (1 + math.exp(-2.0))                                  # softmax([0, 2])[1] = 0.881
    assert abs(sum(draws) / len(draws) - want) < 0.03


@pytest.mark.parametrize("kw,arg", [
    (dict(logits=torch.tensor([0.0, float("nan")])), "logits"),
    (dict(logits=torch.tensor([0.0, float("inf")])), "logits"),
    (dict(logits=torch.full((3,), -float("inf"))), "logits"),
    (dict(logits=torch.zeros(2, 3)), "logits"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=float("inf")), "temperature"),
    (dict(temperature=-0.1), "temperature"),
    (dict(top_p=float("nan")), "top_p"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
], ids=lambda x: repr(x)[:40])
def test_sample_bad_input(kw, arg):
    args = dict(logits=torch.tensor([0.0, 1.0]), temperature=1.0, top_p=0.9)
    args.update(kw)
    with pytest.raises(ValueError, match=f"^{arg}:"):
        M.sample(**args)


@pytest.mark.parametrize("kw,arg", [(dict(n_tokens=-1), "n_tokens"), (dict(n_tokens=True), "n_tokens"),
                                    (dict(n_tokens=2.0), "n_tokens"), (dict(temperature=float("nan")), "temperature"),
                                    (dict(top_p=0), "top_p"), (dict(prompt_ids=[]), "prompt_ids")])
def test_generate_checks_its_arguments_when_called(saved, kw, arg):
    m, _ = saved
    args = dict(prompt_ids=[1, 2], n_tokens=3)
    args.update(kw)
    with pytest.raises(ValueError, match=f"^{arg}:"):
        m.generate(**args)                                           # raises at the call, not at next()


def test_generate_yields_n_tokens(saved):
    m, _ = saved
    assert len(list(m.generate([1, 2], 4, temperature=0))) == 4
    assert list(m.generate([1, 2], 0)) == []


# --------------------------------------------------------------------------- tokenizers
@pytest.fixture(scope="module", params=["bytes", "world"])
def tokenizer(request):
    return tk.ByteTokenizer() if request.param == "bytes" else tk.WorldTokenizer()


@pytest.mark.parametrize("ids", [[3.7], [None], [True], ["3"], None, 5, "abc", [1, 2.0]], ids=repr)
def test_decode_takes_ints_only(tokenizer, ids):
    with pytest.raises(ValueError, match="^ids:"):
        tokenizer.decode(ids)


def test_decode_accepts_numpy_and_tensor_ints(tokenizer):
    want = tokenizer.decode([72, 105])
    assert tokenizer.decode(np.array([72, 105])) == want
    assert tokenizer.decode(torch.tensor([72, 105])) == want
    with pytest.raises(ValueError, match="^ids:"):
        tokenizer.decode(torch.tensor([72.0, 105.0]))


@pytest.mark.parametrize("text", ["\ud800", "ok \udcff tail", "\udfff"], ids=repr)
def test_encode_a_lone_surrogate_names_the_argument(tokenizer, text):
    with pytest.raises(ValueError, match="^text: character"):
        tokenizer.encode(text)


def test_world_vocabulary_that_is_not_utf8(tmp_path):
    p = tmp_path / "vocab.txt"
    p.write_bytes(b"1 'a' 1\n2 '\xff\xfe' 2\n")
    with pytest.raises(ValueError, match="^vocab_path: .* is not UTF-8"):
        tk.WorldTokenizer(p)


# --------------------------------------------------------------------------- the generate CLI
def _cli(capsys, *argv):
    from rwkvlab.__main__ import main

    rc = main(["generate", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def world_ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("world")
    M.save(_tiny("x060", vocab=65536, seed=2), d / "world.pth")
    return d / "world.pth"


@pytest.mark.parametrize("argv,option", [
    (["--temperature", "-1"], "--temperature"),
    (["--temperature", "nan"], "--temperature"),
    (["--temperature", "inf"], "--temperature"),
    (["--top-p", "0"], "--top-p"),
    (["--top-p", "1.5"], "--top-p"),
    (["--top-p", "nan"], "--top-p"),
    (["--impl", "fast"], "--impl"),
    (["--tokens", "-1"], "--tokens"),
], ids=lambda x: " ".join(x) if isinstance(x, list) else x)
def test_generate_cli_bad_option_exits_2_naming_it(saved, capsys, argv, option):
    _, d = saved
    rc, out, err = _cli(capsys, "--model", str(d / "good.pth"), "--prompt", "hi", *argv)
    assert rc == 2 and out == "", (rc, out, err)                    # nothing generated, not even the prompt
    assert err.startswith(f"generate: {option}: ") and err.count("\n") == 1, err


@pytest.mark.parametrize("case", ["missing", "random bytes", "truncated", "empty", "pickled module"])
def test_generate_cli_bad_model_exits_2(saved, capsys, case):
    _, d = saved
    p = d / f"cli_{case.replace(' ', '_')}.pth"
    if case != "missing":
        p.write_bytes(_files(d)[case])
    rc, out, err = _cli(capsys, "--model", str(p), "--prompt", "hi", "--tokens", "2")
    assert rc == 2 and out == "", (rc, out, err)
    assert err.startswith("generate: --model: ") and err.count("\n") == 1, err


def test_generate_cli_bad_vocabulary_exits_2(world_ckpt, tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"1 'caf\xe9' 4\n")
    for vocab in (bad, tmp_path / "missing.txt"):
        rc, out, err = _cli(capsys, "--model", str(world_ckpt), "--vocab", str(vocab), "--tokens", "2")
        assert rc == 2 and out == "", (rc, out, err)
        assert err.startswith("generate: --vocab: ") and err.count("\n") == 1, err


def test_generate_cli_lone_surrogate_prompt_exits_2(saved, capsys):
    _, d = saved
    rc, out, err = _cli(capsys, "--model", str(d / "bytes.pth"), "--prompt", "a\udcff", "--tokens", "2")
    assert rc == 2 and out == "" and err.startswith("generate: --prompt: text:"), err


def test_generate_cli_small_temperature_runs(saved, capsys):
    m, d = saved
    rc, out, err = _cli(capsys, "--model", str(d / "good.pth"), "--prompt", "\x01", "--tokens", "3",
                        "--temperature", "1e-6")
    assert rc == 2 and "--model" in err    # a 61-token vocabulary has no built-in tokenizer ...
    byte = M.load(d / "bytes.pth")
    rc, out, err = _cli(capsys, "--model", str(d / "bytes.pth"), "--prompt", "ab", "--tokens", "3",
                        "--temperature", "1e-6")
    assert rc == 0, err                    # ... a byte model runs, and 1e-6 is greedy
    want = tk.ByteTokenizer().decode(list(byte.generate(list(b"ab"), 3, temperature=0)))
    assert out == "ab" + want + "\n"


# --------------------------------------------------------------------------- the book's files
def test_book_files_are_found_from_the_working_directory_not_the_package(tmp_path, monkeypatch):
    here = book.root()
    monkeypatch.delenv(book.BOOK_ENV, raising=False)
    monkeypatch.setattr(book, "ROOT", None)
    monkeypatch.setattr(book, "__file__", str(tmp_path / "site-packages" / "rwkvlab" / "book.py"))
    monkeypatch.chdir(tmp_path)
    assert book.find_root() is None                             # a wheel installed elsewhere: nothing found ...
    with pytest.raises(ValueError, match=f"^book: .*{re.escape(str(tmp_path))}"):
        book.root()                                             # ... and the error says where it looked
    with pytest.raises(ValueError, match="^book:"):
        book.data_path("shakespeare.txt")
    monkeypatch.chdir(here / "notebooks")
    assert book.find_root() == here                             # from inside the checkout (the chapters' cwd)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(book.BOOK_ENV, str(here))
    assert book.root() == here and book.data_path("shakespeare.txt").is_file()
    with pytest.raises(ValueError, match="^data: .*nope.txt"):
        book.data_path("nope.txt")


def test_the_package_reads_no_data_relative_to_its_own_files():
    from pathlib import Path

    pkg = Path(rwkvlab.__file__).parent
    for f in pkg.rglob("*.py"):
        if f.name == "book.py":
            continue                                            # find_root's last resort (an editable install)
        assert "__file__" not in f.read_text(encoding="utf-8"), f"{f.relative_to(pkg)} locates files from __file__"
    for f in (book.root() / "notebooks").glob("[0-9][0-9]_*.py"):
        assert "book import ROOT" not in f.read_text(encoding="utf-8"), f.name


def test_packed_batch_reads_cu_seqlens_once(monkeypatch):
    """A packed batch's tables come from one host read of cu_seqlens per tensor: a read of a GPU
    tensor waits for all queued work, and one read per launch cost ~1 ms a call on an H200. The
    first forward reads it once (validation and tables share the copy), its backward and a second
    forward with the same tensor not at all; after an in-place change it is read again. Counted:
    every host read (tolist, cpu, item, int, bool) made from rwkvlab's own files."""
    import traceback

    from rwkvlab import wkv6, wkv7

    reads = []
    for name in ("tolist", "cpu", "item", "__int__", "__bool__", "__index__"):
        real = getattr(torch.Tensor, name)

        def spy(self, *a, _real=real, _name=name, **kw):
            frame = traceback.extract_stack()[-2]
            if "rwkvlab" in frame.filename:
                reads.append((_name, frame.filename.rsplit("rwkvlab", 1)[-1], frame.lineno))
            return _real(self, *a, **kw)
        monkeypatch.setattr(torch.Tensor, name, spy)

    g = torch.Generator().manual_seed(0)
    dev = rwkvlab.device.device()                   # the Triton rungs' device: a GPU's, or the CPU's
    for kind, fn in (("wkv6", wkv6.triton_chunked), ("wkv7", wkv7.triton_chunked)):
        cu = torch.tensor([0, 30, 70, 100], device=dev)
        x = [torch.randn(1, 100, 2, 16, generator=g).to(dev).requires_grad_() for _ in range(6)]
        w = (-0.5 * torch.rand(1, 100, 2, 16, generator=g)).to(dev).requires_grad_()
        args = (x[0], x[1], x[2], w, x[3][0, 0]) if kind == "wkv6" else (x[0], w, x[1], x[2], x[3], x[4])
        reads.clear()
        o, ht = fn(*args, cu_seqlens=cu, output_final_state=True, check_values=False)
        assert len(reads) == 1, (kind, reads)
        reads.clear()
        (o.sum() + ht.sum()).backward()
        assert reads == [], (kind, reads)
        o2, _ = fn(*args, cu_seqlens=cu, output_final_state=True, check_values=False)
        assert reads == [] and torch.equal(o2, o), (kind, reads)
        cu[1] = 40                                           # changed in place: read again, new tables
        o3, _ = fn(*args, cu_seqlens=cu, output_final_state=True, check_values=False)
        assert len(reads) == 1 and not torch.equal(o3, o), (kind, reads)
