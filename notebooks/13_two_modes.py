# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     notebook_metadata_filter: -jupytext.text_representation
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Two modes, one model: parallel training, RNN inference
#
# Every RWKV model can be run two ways. In **parallel mode** it reads a whole sequence at once,
# as a transformer does when it trains: the WKV state update runs in its chunked form
# (chapters 6 and 10), and every position's logits come out together. In **RNN mode** it reads
# one token, updates a fixed-size state, and emits the next logits — the form that generates
# text in constant memory. They are the same function. This chapter checks that numerically on
# the book's own models (the algebra behind it is chapters 6 and 10) and measures what each mode
# costs. At its end you will be able to
#
# * say exactly what an RWKV model remembers between tokens, and how many bytes that is;
# * run `rwkvlab.model` in both modes, cut a text anywhere and continue from the state, and
#   check all of it against the parallel forward;
# * measure memory and time per token against the number of tokens already read, for RWKV and
#   for a softmax transformer of the same width and depth decoding with a KV cache;
# * predict from the shapes alone when the KV cache outgrows the RWKV state (for the
#   width-768 configuration: after 33 tokens).
#
# The idea in one line: the state after $t$ tokens is a complete summary of them, so
#
# $$
# \operatorname{model}(x_{1:t}) \;=\; \operatorname{model}\big(x_{s+1:t};\; \text{state}(x_{1:s})\big)
# \qquad\text{for every } 0 \le s < t ,
# $$
#
# and RNN mode is the case $t = s + 1$, applied over and over.

# %%
import rwkvlab

print(rwkvlab.device.describe())

# %%
import copy
import inspect
import statistics
import time
from unittest import mock

import matplotlib.pyplot as plt
import torch

from rwkvlab import attention
from rwkvlab import model as M
from rwkvlab import wkv7
from rwkvlab.model import transformer as tf
from rwkvlab.model import x070

torch.manual_seed(0)
# One thread: these tensors are tiny, and on a shared or busy CPU several threads per
# operation wait on each other far longer than they compute (we measured 20× slow-downs).
torch.set_num_threads(1)
gen = torch.Generator().manual_seed(0)

# %% [markdown]
# ## 1. What an RWKV model remembers
#
# Go through one block of chapter 12 and ask what each line needs from earlier tokens. The
# token shift needs the previous token's input to the time mix, a vector of $C$ numbers. The
# state update needs $S_{t-1}$, one $N\times N$ matrix per head, so $H N^2 = C N$ numbers. The
# channel mix has its own token shift: $C$ more. Nothing else looks back. The state of a whole
# model is therefore, per sequence,
#
# $$
# \underbrace{L\,(2C + C N)}_{\text{numbers}} \quad\text{independent of how many tokens have been read.}
# $$
#
# `rwkvlab.model` keeps it as a list with one `LayerState(att_shift, wkv, ffn_shift)` per block;
# the WKV matrices are float32 (the package's contract, chapter 00), whatever the model's dtype.

# %%
cfg = M.Config7.make(vocab_size=256, n_embd=64, n_layer=2, head_size=32, d_decay=16, d_aaa=16, d_mv=16, d_gate=16)
net = M.RWKV7(cfg).init_weights("random", seed=0)
idx = torch.randint(0, 256, (2, 24), generator=gen)
with torch.no_grad():
    logits, state = net(idx)
for i, layer in enumerate(state):
    print(f"block {i}: " + ", ".join(f"{f} {tuple(t.shape)}" for f, t in zip(layer._fields, layer)))
C, L, N = cfg.n_embd, cfg.n_layer, cfg.head_size
per_sequence = 4 * L * (2 * C + C * N)
print(f"state: {M.state_nbytes(state)} bytes for 2 sequences = {per_sequence} bytes each")
assert M.state_nbytes(state) == 2 * per_sequence
with torch.no_grad():
    assert M.state_nbytes(net(idx[:, :3])[1]) == M.state_nbytes(state), "the state does not grow with T"

# %% [markdown]
# ## 2. The two modes in code
#
# Both modes can run the same blocks. The model hands each block a *core*, the function that
# applies the WKV update to `[B, T, H, N]` tensors: in parallel mode a sequence implementation
# of `rwkvlab.wkv7` (`chunked` by default on CPU, the chunked Triton kernel on a GPU), in RNN
# mode `wkv7.step` on a single token. Everything else — token shift, projections, norms, MLP —
# is literally the same code, run on a sequence of length one: that is `reference_step`, the
# RNN step that autograd can differentiate.
#
# `model.step` runs it whenever gradients are being recorded. For inference (under
# `torch.no_grad()`, as in every loop below) it runs a second implementation of the same
# equations, `x070.Decoder`, built for speed rather than for reading; section 4 says why it
# exists and what it changes. Both are checked against parallel mode here.

# %%
print(inspect.getsource(M.LanguageModel.forward))
print(inspect.getsource(M.LanguageModel.step))
print(inspect.getsource(M.LanguageModel.reference_step))
print(inspect.getsource(M.LanguageModel._run))
print(inspect.getsource(x070.RWKV7.sequence_core))
print(inspect.getsource(x070.RWKV7.step_core))

# %% [markdown]
# Now the claim. Feed the 24 tokens one at a time through `step` and compare every position's
# logits, and the final state, with the parallel forward. Then cut the sequence at several
# places, run each piece in parallel mode starting from the previous piece's state, and
# compare again. The same holds for RWKV-6, whose core is `rwkvlab.wkv6`.

# %%
def rnn_mode(model, idx, state=None):
    outs = []
    with torch.no_grad():
        for t in range(idx.shape[1]):
            lt, state = model.step(idx[:, t], state)
            outs.append(lt)
    return torch.stack(outs, 1), state


def flat(state):
    return [t for layer in state for t in layer]


def in_pieces(model, idx, cuts):
    outs, state = [], None
    with torch.no_grad():
        for s, e in zip([0] + cuts, cuts + [idx.shape[1]]):
            lt, state = model(idx[:, s:e], state)
            outs.append(lt)
    return torch.cat(outs, 1), state


net6 = M.RWKV6(M.Config6.make(vocab_size=256, n_embd=64, n_layer=2, head_size=32, d_mix=8, d_decay=16))
net6.init_weights("random", seed=1)


def reference_mode(model, idx):
    outs, state = [], model._check_state(None, idx.shape[0])
    with torch.no_grad():
        for t in range(idx.shape[1]):
            lt, state = model.reference_step(idx[:, t], state)
            outs.append(lt)
    return torch.stack(outs, 1), state


for name, mdl in (("RWKV-7", net), ("RWKV-6", net6)):
    with torch.no_grad():
        ref, ref_state = mdl(idx)
    got, got_state = rnn_mode(mdl, idx)
    rwkvlab.check(f"{name}: RNN mode vs parallel, logits", got, ref, 1e-5)
    got_r, got_r_state = reference_mode(mdl, idx)
    rwkvlab.check(f"{name}: reference step vs parallel, logits and state", [got_r] + flat(got_r_state),
                  [ref] + flat(ref_state), 1e-5)
    rwkvlab.check(f"{name}: RNN mode vs parallel, final state", flat(got_state), flat(ref_state), 1e-5)
    for cuts in ([1], [7, 8, 20], [5, 10, 15, 23]):
        got, got_state = in_pieces(mdl, idx, cuts)
        rwkvlab.check(f"{name}: pieces cut at {cuts}", [got] + flat(got_state), [ref] + flat(ref_state), 1e-5)

# %% [markdown]
# Why should they agree? Parallel mode is not an approximation of the recurrence: the chunked
# WKV forms of chapters 6 and 10 are exact algebraic rearrangements of it, and every other
# operation in the block acts on one position at a time (or, for the token shift, on two
# neighbouring ones, which the shift state supplies across a cut). The only difference is the
# order of floating-point additions, which is why the errors printed above are of the order of
# float32 rounding (about $10^{-7}$), and do not grow with the length. That last point is worth
# a look:

# %%
T_long = rwkvlab.device.pick(96, 512)
long_idx = torch.randint(0, 256, (1, T_long), generator=gen)
with torch.no_grad():
    par, _ = net(long_idx)
seq, _ = rnn_mode(net, long_idx)
err_by_pos = ((seq - par).norm(dim=-1) / par.norm(dim=-1))[0]
fig, ax = plt.subplots(figsize=(7, 2.8))
ax.semilogy(err_by_pos)
ax.set_xlabel("position t")
ax.set_ylabel("relative error of logits")
ax.set_title("RNN mode vs parallel mode, float32")
plt.tight_layout()
plt.show()
print(f"largest per-position error over {T_long} tokens: {err_by_pos.max():.0e}")
assert float(err_by_pos.max()) < 1e-5

# %% [markdown]
# This equality is what makes RWKV practical. A chat application reads a long prompt in
# parallel mode (fast, like a transformer's prefill), keeps only the state, and then
# generates in RNN mode; the next user message is again read in parallel from the saved state.
# `model.generate` does exactly the first two steps: `model.prefill` reads the prompt in one
# parallel call (the head applied to its last position only), and the state it leaves is handed
# to the RNN steps. `model.generate_batch` does the same for several sequences at once, each with
# its own state, its own length and its own stop tokens. The loop itself lives in
# `rwkvlab.model.generation`; here is the hand-over, checked: the state after prefill equals the
# state after reading the prompt one step at a time, and the text generated greedily equals a
# loop that re-reads it with `reference_step`.

# %%
print(inspect.getsource(M.LanguageModel.prefill))
prompt = idx[0, :10].tolist()
with torch.no_grad():
    last, s_prefill = net.prefill(torch.tensor([prompt]))
    _, s_steps = rnn_mode(net, torch.tensor([prompt]))
rwkvlab.check("state handed over by prefill vs ten RNN steps", flat(s_prefill), flat(s_steps), 1e-5)
g = net.generate(prompt, 12, temperature=0)
made = list(g)
with torch.no_grad():
    lt, st, by_hand = last, s_prefill, []
    for _ in range(12):
        by_hand.append(int(lt[0].argmax()))
        lt, st = net.reference_step(torch.tensor(by_hand[-1:]), st)
assert made == by_hand, (made, by_hand)
print(f"generate: {made} = the greedy loop by hand; {g.stats.line()}")

# %% [markdown]
# ## 3. Memory per token: the state against a KV cache
#
# A softmax transformer decodes with a **KV cache**: to produce token $t+1$ it attends over the
# keys and values of all $t$ earlier tokens, so it must keep them, $2C$ numbers per token per
# layer (keys and values of all heads). For a transformer of the same width and depth:
#
# $$
# \text{KV cache}(T) = 2\,L\,C\,T, \qquad \text{RWKV state} = L\,(2C + CN)
# \quad\Longrightarrow\quad
# \text{equal at } T^\ast = 1 + \tfrac{N}{2}.
# $$
#
# The crossover depends only on the head size. With $N = 64$, as in every released RWKV-7,
# a same-shaped KV cache is as large as the *entire* RWKV state at 33 tokens, in the same
# precision, and larger after that; a bfloat16 cache against a float32 state (half the bytes
# per number) moves the crossover to $2 + N = 66$. Past it, the cache keeps growing and the
# state does not.
#
# We measure instead of trusting the formula: the softmax baseline of `rwkvlab.model.transformer`
# (same residual layout and MLP as the RWKV models, `attention.kv_cache_step` for decoding) is
# built with the same $C$, $L$ and heads as `net`, both generate 64 tokens, and we weigh the
# objects each one holds after every token.

# %%
tcfg = tf.Config(vocab_size=256, n_embd=C, n_layer=L, head_size=N, dim_ffn=cfg.dim_ffn, max_len=128)
base = tf.Transformer(tcfg).init_weights(seed=0)
T_gen = 64
toks = torch.randint(0, 256, (1, T_gen), generator=gen)
rwkv_bytes, kv_bytes = [], []
st, cache = None, None
with torch.no_grad():
    for t in range(T_gen):
        _, st = net.step(toks[:, t], st)
        _, cache = base.step(toks[:, t], cache)
        rwkv_bytes.append(M.state_nbytes(st))
        kv_bytes.append(tf.cache_nbytes(cache))
tokens_read = list(range(1, T_gen + 1))
crossover = next(t for t, a, b in zip(tokens_read, rwkv_bytes, kv_bytes) if b >= a)
fig, ax = plt.subplots(figsize=(7, 3.2))
ax.plot(tokens_read, [b / 1024 for b in rwkv_bytes], label="RWKV-7 state")
ax.plot(tokens_read, [b / 1024 for b in kv_bytes], label="softmax KV cache")
ax.axvline(crossover, ls=":", c="gray")
ax.set_xlabel("tokens read")
ax.set_ylabel("KiB per sequence")
ax.set_title(f"C = {C}, L = {L}, N = {N}: the cache overtakes the state at T = {crossover}")
ax.legend()
plt.tight_layout()
plt.show()
assert len(set(rwkv_bytes)) == 1, "the RWKV state has one size"
assert all(b == 2 * L * C * 4 * t for t, b in zip(tokens_read, kv_bytes)), "the cache grows by 2LC floats a token"
assert crossover == 1 + N // 2
print(f"measured crossover: {crossover} tokens = 1 + N/2")

# %% [markdown]
# For real model sizes the formula gives:

# %%
for name, (C_, L_, N_) in {"RWKV-7 0.1B (L12, C768)": (768, 12, 64), "RWKV-7 1.5B (L24, C2048)": (2048, 24, 64),
                           "RWKV-7 7B-class (L32, C4096)": (4096, 32, 64)}.items():
    state_mb = 4 * L_ * (2 * C_ + C_ * N_) / 2**20
    kv_per_token_kb = 2 * 2 * L_ * C_ / 2**10                 # bfloat16 cache
    print(f"{name:30s} state {state_mb:6.1f} MiB (float32) | same-shape bf16 KV cache: "
          f"{kv_per_token_kb:5.0f} KiB/token, {kv_per_token_kb * 32768 / 2**20:6.2f} GiB at 32k tokens")

# %% [markdown]
# Two honest caveats. Real transformers shrink their caches with grouped-query attention
# (several query heads share one key/value head), which divides the cache by the group size
# but keeps it linear in $T$. And the RWKV state is small only per *sequence*: serving a batch
# of $B$ sequences needs $B$ states — still nothing like $B$ caches of a long context.
#
# ## 4. Time per token while generating
#
# In RNN mode every token costs the same: a fixed number of matrix-vector products and one
# $N\times N$ update per head. With a KV cache, token $t$ also computes $t$ attention scores
# per head and reads $t$ keys and values: the cost per token grows linearly with the position,
# and generating $T$ tokens costs $O(T^2)$ in all.
#
# First the token mixers alone, at the shape of the 0.1B model (12 heads of 64): one
# `wkv7.step` against one `attention.kv_cache_step` over a cache that already holds $T$
# tokens. Then the whole small models above. Times are medians of a few runs on this machine;
# on the shared CPU where the book is tested they are noisy, so the only assertions are loose.

# %%
def median_time(fn, repeats=7):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


H0, N0 = 12, 64
r_, w_, k_, v_ = (torch.randn(1, H0, N0, generator=gen) for _ in range(4))
w_ = -0.6 * torch.sigmoid(w_)
kk = torch.nn.functional.normalize(torch.randn(1, H0, N0, generator=gen), dim=-1)
S = torch.zeros(1, H0, N0, N0)
positions = rwkvlab.device.pick([16, 64, 256, 1024, 4096], [16, 64, 256, 1024, 4096, 16384, 65536])
t_state = median_time(lambda: wkv7.step(r_, w_, k_, v_, -kk, 0.5 * kk, S))
t_cache = []
for T in positions:
    cache_T = attention.KVCache(torch.randn(1, T, H0, N0), torch.randn(1, T, H0, N0))
    t_cache.append(median_time(lambda: attention.kv_cache_step(r_, k_, v_, cache_T)))
for T, tc in zip(positions, t_cache):
    print(f"T = {T:6d}: wkv7.step {1e3 * t_state:7.3f} ms | kv_cache_step {1e3 * tc:7.3f} ms")
assert all(t > 0 for t in t_cache) and t_state > 0
assert t_cache[-1] > 2 * t_cache[0], "attention over 4096 cached tokens costs more than over 16"

# %%
dev = rwkvlab.device.device()
big = M.RWKV7(M.Config7.make(vocab_size=256, n_embd=256, n_layer=4, head_size=64)).init_weights("rwkv").to(dev)
bigtf = tf.Transformer(tf.Config(256, 256, 4, 64, 1024, max_len=max(positions) + 1)).init_weights().to(dev)
tok = torch.tensor([7], device=dev)
with torch.no_grad():
    st0 = big.empty_state(1)
    t_rwkv = median_time(lambda: big.step(tok, st0))                          # the lean decoder
    t_rwkv_ref = median_time(lambda: big.reference_step(tok, st0))            # blocks + wkv7.step
    t_tf = []
    for T in positions:
        cache_T = [attention.KVCache(torch.randn(1, T, 4, 64, device=dev), torch.randn(1, T, 4, 64, device=dev))
                   for _ in range(4)]
        t_tf.append(median_time(lambda: bigtf.step(tok, cache_T), repeats=5))
fig, axes = plt.subplots(1, 2, figsize=(12, 3.4))
axes[0].loglog(positions, [1e3 * t_state] * len(positions), "o-", label="wkv7.step (state)")
axes[0].loglog(positions, [1e3 * t for t in t_cache], "s-", label="kv_cache_step (T cached)")
axes[0].set_title("token mixer only, 12 heads of 64")
axes[1].loglog(positions, [1e3 * t_rwkv] * len(positions), "o-", label="RWKV-7 model.step (lean decoder)")
axes[1].loglog(positions, [1e3 * t_rwkv_ref] * len(positions), "^--", label="RWKV-7 reference_step")
axes[1].loglog(positions, [1e3 * t for t in t_tf], "s-", label="softmax model.step")
axes[1].set_title("whole model, C = 256, L = 4")
for ax in axes:
    ax.set_xlabel("tokens already read")
    ax.set_ylabel("ms per generated token")
    ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
print(f"RWKV-7 step: {1e3 * t_rwkv:.2f} ms (reference step {1e3 * t_rwkv_ref:.2f} ms) at any position; softmax step: "
      + ", ".join(f"{1e3 * t:.2f} ms at {T}" for T, t in zip(positions, t_tf)))
faster = [T for T, t in zip(positions, t_tf) if t > t_rwkv]
print("in this run the RWKV step was the faster one at " + (f"T >= {faster[0]}" if faster else "no measured T")
      + f" (of {positions})")

# %% [markdown]
# The RWKV curves are one measurement each, drawn flat: a step's inputs (one token, a state
# of fixed shape) are the same size at every position, so there is nothing in it that could
# grow; section 2 already ran it at every position of the long text there.
#
# Read the plots with the machine in mind; the timings are not asserted, and on a shared CPU
# single points can jump. The softmax step's cost climbs with the cache once the cache is long
# enough for reading it to matter, while the RWKV step's does not move; where the curves cross
# depends on the implementation as much as on the model: the printed line says where it was in
# this run. The shapes of the two curves, flat against rising, are the structural fact.
#
# ### What a step's time is made of
#
# At batch 1 a step reads each weight once and does about two flops with it (the counting cell
# below prints what that is for `big`; the sweep after it measures how fast this machine streams
# them).
# What else is in the time? Every operation costs a fixed overhead as well — Python calls it,
# the dispatcher picks a kernel, the result is allocated — and an RWKV-7 block in RNN mode,
# written in torch, is a few dozen small operations (the cells below count them, and show how
# the decoder turns about half of them into one kernel on a GPU). A step's time is therefore roughly
#
# $$
# t_{\text{step}} \approx n_{\text{ops}}\, t_{\text{op}} + \frac{\text{bytes of weights}}{\text{bandwidth}},
# $$
#
# and at small widths the first term dominates. Two cells, after the decoder's description below,
# measure both terms: one counts the calls a step makes into torch (a `TorchFunctionMode` sees
# each of them), the other times the decoder at growing widths and splits each step into its
# matrix products (the same products on the same weights, timed alone) and everything else.
#
# `reference_step` pays the first term several times over: the blocks' parallel-mode code
# validates every input (`wkv7.step` alone reads its inputs' minimum and maximum to check them,
# which on a GPU makes the host wait for the device at every token), and builds one-token
# sequences to feed code written for `[B, T, C]`. `x070.Decoder` keeps the equations and
# changes only what they cost: the six token-shift mixes become one broadcast `lerp`, the
# receptance, key and value maps one batched matrix product over stacked weights, the four LoRA
# maps two more (padded with zeros to one rank, which adds exact zeros), the state is updated in
# place, and nothing is checked inside the step — `model.step` checks shapes, dtypes and devices
# once per call, `generate` once per call of its own. On CPU a long run switches to the block
# compiled with TorchScript, which removes the Python interpreter between operations (after a
# couple of thousand steps, when its one-time compilation has paid for itself, or at once with
# `model.decoder().compile()`); on a GPU, where each
# operation is also a kernel launch, `generate` captures the whole step in a CUDA graph once
# and replays it per token (`rwkvlab.model.generation.GraphStepper`).
#
# On a GPU the decoder changes one thing more. Everything between the projections and the
# output map — the value residual, the removal key $\hat\kappa$ and the replacement key
# $\tilde k$, the state update, the read-out $S^\top r$, the heads' GroupNorm, the bonus and the
# gate — works on one token per sequence, and nothing in it looks further than one head's $N$
# channels. In torch that part is the function `x070.decode_wkv`, about half of a block's
# operations; on CUDA the decoder runs it instead as one Triton kernel,
# `rwkvlab.wkv7.kernels_decode.fused_wkv_decode`. Its grid has one program per (sequence, head)
# pair. A program loads its head's $N\times N$ state once, computes everything above in float32
# with the state held in registers, writes the state back in place, and stores the gated output
# $[B, C]$ in the activations' dtype. The GroupNorm is what fixes that layout: it needs all $N$
# outputs of a head, so a program cannot own only a block of value columns, as the recurrent
# kernel's programs do in chapter 11. Like the rest of the decoder the launch checks nothing and
# reads nothing back, so a CUDA graph captures it with the other launches. Three smaller kernels
# of the same module take the elementwise work around the matrix products, which stay with
# cuBLAS: each LayerNorm with its token-shift mixes and the new shift, the LoRA activations
# between the LoRA products, and relu² between the channel mix's two (`x070._fused_block`; the
# WKV kernel applies the three gates' sigmoids itself).
# `Decoder(fused=...)` chooses: `None`, the default, takes the kernel on CUDA (for any model
# but a float64 one, whose step stays in float64) and `decode_wkv` on CPU; `False` always takes
# `decode_wkv`; `True` always takes the kernel, which on a CPU means the Triton interpreter
# (slow, for tests; it also keeps the block out of TorchScript). The torch
# path is the specification and the kernel its one-launch form: the first cell prints both, the
# second runs both decoders (the kernel compiled on a GPU, interpreted on a CPU) against
# parallel mode.

# %%
from rwkvlab.wkv7 import kernels_decode

print(inspect.getsource(x070.decode_wkv))
print(inspect.getsource(getattr(kernels_decode.wkv7_fwd_decode_kernel, "fn", kernels_decode.wkv7_fwd_decode_kernel)))

# %%
# the fused kernel needs the model on the book's device: compiled on a GPU, interpreted on CPU
net_dev = copy.deepcopy(net).to(dev)
dec_fused = x070.Decoder(net_dev, fused=True)
dec_torch = x070.Decoder(net_dev, fused=False, script=False)
assert dec_fused.fused and not dec_torch.fused
T_chk = 4                                       # the interpreter runs each launch in Python: a few tokens
with torch.no_grad():
    par_chk, par_state = net(idx[:, :T_chk])
    outs = {}
    for name, d in (("fused", dec_fused), ("torch", dec_torch)):
        st_d = d.new_state(idx.shape[0])
        lg = torch.stack([d.step_(idx[:, t].to(dev), st_d) for t in range(T_chk)], 1)
        outs[name] = [lg.cpu()] + [x.cpu() for x in flat(st_d)]
tol_fused = rwkvlab.device.pick(1e-5, 1e-4)     # float32; a GPU's float32 sums in another order
rwkvlab.check(f"fused WKV decoder vs parallel mode, {T_chk} tokens, logits and state", outs["fused"],
              [par_chk] + flat(par_state), tol_fused)
rwkvlab.check("fused WKV decoder vs torch WKV decoder", outs["fused"], outs["torch"], tol_fused)

# %%
from torch.overrides import TorchFunctionMode


class CountCalls(TorchFunctionMode):
    """Counts the calls from Python into torch made while active (functions, methods, operators),
    by name and by the part of the step that made them (``where``, set by ``labelled``)."""

    def __init__(self):
        super().__init__()
        self.n = {}
        self.where = "outside the blocks"

    def __torch_function__(self, func, types, args=(), kwargs=None):
        key = (getattr(func, "__name__", str(func)), self.where)
        self.n[key] = self.n.get(key, 0) + 1
        return func(*args, **(kwargs or {}))

    def labelled(self, fn, part):
        """``fn``, with every call it makes into torch counted under ``part``."""
        def run(*args):
            outer, self.where = self.where, part
            try:
                return fn(*args)
            finally:
                self.where = outer
        return run


# calls that only look at a tensor or re-describe it (indexing, views, attributes) versus calls
# that run a kernel
METADATA = {"__getitem__", "__get__", "view", "reshape", "unsqueeze", "squeeze", "transpose", "t", "to", "tensor",
            "size", "dim", "contiguous", "detach", "__len__", "__iter__", "unbind", "__bool__", "is_floating_point"}


def count_ops(fn):
    with torch.no_grad(), CountCalls() as c:
        fn()
    compute = sum(v for (k, _), v in c.n.items() if k not in METADATA)
    return sum(c.n.values()), compute


def kernel_calls_by_part(dec, token, state):
    """Kernel calls of one step of the torch-path decoder ``dec``, by part: the WKV part
    (``decode_wkv``), the rest of the blocks, and what is outside them (embedding, norms, head).
    Casts inside the WKV part (``to``: float32 math for bfloat16 activations) are counted apart."""
    c = CountCalls()
    with torch.no_grad(), mock.patch.object(x070, "decode_block", c.labelled(x070.decode_block, "block")), \
            mock.patch.object(x070, "decode_wkv", c.labelled(x070.decode_wkv, "WKV part")), c:
        dec.step_(token, state)
    parts = {}
    for (k, where), v in c.n.items():
        if k not in METADATA:
            parts[where] = parts.get(where, 0) + v
    parts["casts"] = c.n.get(("to", "WKV part"), 0)
    return parts


def fused_kernel_calls(dec, token, state):
    """Kernel calls of one step of the fused decoder ``dec``: its calls into torch that run a kernel,
    plus one for each launch of a ``kernels_decode`` kernel (whose insides, on CPU the Triton
    interpreter's own calls into torch, are not counted). Returns (calls, launches)."""
    c, launches = CountCalls(), []

    def launch(fn):
        def run(*args, **kw):
            launches.append(fn.__name__)
            return c.labelled(lambda: fn(*args, **kw), "inside a launch")()
        return run
    with torch.no_grad(), c, mock.patch.multiple(kernels_decode, **{n: launch(getattr(kernels_decode, n))
                                                                    for n in kernels_decode.__all__}):
        dec.step_(token, state)
    calls = sum(v for (k, where), v in c.n.items() if k not in METADATA and where != "inside a launch")
    return calls + len(launches), len(launches)


lean_cpu = x070.Decoder(net, script=False)                 # the plain Python block (the scripted one is opaque)
s_lean = lean_cpu.new_state(1)
tok0 = torch.tensor([7])
n_big = sum(p.numel() for name, p in big.named_parameters() if name != "emb.weight")
print(f"`big`: {n_big / 1e6:.2f} M parameters outside the embedding = {4 * n_big / 1e6:.1f} MB of float32 read "
      f"and {2 * n_big / 1e6:.1f} MFLOP per token at batch 1")
ops_lean = count_ops(lambda: lean_cpu.step_(tok0, s_lean))
ops_ref = count_ops(lambda: net.reference_step(tok0, net._check_state(None, 1)))
print(f"one step of `net` (L = {L}): reference_step makes {ops_ref[0]} calls into torch ({ops_ref[1]} that run a "
      f"kernel), the lean decoder {ops_lean[0]} ({ops_lean[1]} that run a kernel)")
parts = kernel_calls_by_part(lean_cpu, tok0, lean_cpu.new_state(1))
lean16 = x070.Decoder(net, dtype=torch.bfloat16, script=False)
parts16 = kernel_calls_by_part(lean16, tok0, lean16.new_state(1))
assert sum(v for k, v in parts.items() if k != "casts") == ops_lean[1] and parts["casts"] == 0
wkv_per_block = parts["WKV part"] / L
wkv16_per_block = (parts16["WKV part"] + parts16["casts"]) / L
ops_fused, n_launch = fused_kernel_calls(dec_fused, tok0.to(dec_fused.device), dec_fused.new_state(1))
fused_per_block = (ops_fused - parts["outside the blocks"]) / L
assert n_launch == 5 * L and fused_per_block < parts["block"] / L        # five Triton launches a block
print(f"per block: {parts['block'] / L:.1f} kernel calls around the WKV part + {wkv_per_block:.1f} inside it "
      f"(decode_wkv; {wkv16_per_block:.1f} with a bfloat16 model's casts to float32 and back)")
print(f"the fused step (CUDA): {fused_per_block:.1f} a block ({n_launch // L} Triton launches, the rest matrix "
      f"products); {ops_fused} for a step of `net` instead of {ops_lean[1]}")

# %%
def decoder_times_ms(model, n=8, repeats=3):
    """ms per step of the lean decoder and of its matrix products alone (same shapes, same weights),
    and whether its WKV part was the fused kernel."""
    dec = model.decoder()
    state, t0 = dec.new_state(1), torch.tensor([7], device=dec.device)
    z = lambda *shape: torch.zeros(*shape, device=dec.device, dtype=dec.dtype)  # noqa: E731
    x, x3, x4 = z(1, dec.C), z(3, 1, dec.C), z(4, 1, dec.C)
    h, f = z(4, 1, dec.layers[0].down.shape[-1]), z(1, dec.layers[0].W_fkT.shape[-1])

    def products():
        for blk in dec.layers:
            torch.bmm(x3, blk.W_rkv), torch.bmm(x4, blk.down), torch.bmm(h, blk.up)
            torch.mm(x, blk.W_oT), torch.mm(x, blk.W_fkT), torch.mm(f, blk.W_fvT)
        torch.mm(x, dec.headT)

    def timed(fn):
        def many():
            for _ in range(n):
                fn()
            if dec.device.type == "cuda":
                torch.cuda.synchronize()
        many()
        return 1e3 * median_time(many, repeats) / n

    with torch.no_grad():
        return timed(lambda: dec.step_(t0, state)), timed(products), dec.fused


widths = rwkvlab.device.pick([64, 128, 256, 512], [256, 768, 1024, 2048, 4096])
sweep, paths = [], set()
for C_ in widths:
    mdl = M.RWKV7(M.Config7.make(vocab_size=256, n_embd=C_, n_layer=2, head_size=min(64, C_ // 2)))
    mdl = mdl.init_weights("random").to(dev)
    read = sum(p.numel() * p.element_size() for name, p in mdl.named_parameters() if name != "emb.weight")
    st, pr, fused = decoder_times_ms(mdl)
    sweep.append((C_, read, st, pr))
    paths.add(fused)
    del mdl
labels = [f"C={C_}\n{b / 1e6:.1f} MB" for C_, b, _, _ in sweep]
prod = [pr for *_, pr in sweep]
rest = [max(st - pr, 0.0) for _, _, st, pr in sweep]
fig, ax = plt.subplots(figsize=(7, 3.2))
ax.bar(labels, prod, label="matrix products (bytes of weights)")
ax.bar(labels, rest, bottom=prod, label="everything else (elementwise, norms, state, calls)")
ax.set_ylabel("ms per step (lean decoder, L = 2)")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
for C_, b, st, pr in sweep:
    print(f"C = {C_:4d}: {b / 1e6:6.2f} MB of weights, step {st:6.3f} ms = products {pr:6.3f} ms "
          f"({b / 1e6 / max(pr, 1e-9):5.1f} GB/s) + the rest {max(st - pr, 0):6.3f} ms")
(fused_sweep,) = paths                       # one WKV path for every width: the device's default
ops_step = ops_fused if fused_sweep else ops_lean[1]    # kernel calls of the path that was timed
print(f"the rest over the {len(sweep)} widths: {min(rest):.3f} to {max(rest):.3f} ms per step, for "
      f"{ops_step} kernel calls ({'fused kernels' if fused_sweep else 'torch WKV path'}; "
      f"{1e3 * min(rest) / ops_step:.1f} to {1e3 * max(rest) / ops_step:.1f} µs each)")
assert all(st > 0 and pr > 0 for _, _, st, pr in sweep)

# %% [markdown]
# Read the bars from the bottom: the matrix products are the part that grows with the bytes of
# weights; the rest — the elementwise operations, the norms and the state update of every block,
# each with its fixed cost — grows far more slowly than the products (the last line prints its
# range in this run, and how many calls it was spread over on the path this device took). At the
# book's small widths the rest was most of the step in the printed run: the time is the number
# of calls, not the arithmetic. A released 0.1B model (L = 12, C = 768; its bytes are printed
# below) has per block the same calls as these and far more bytes: at the bandwidth measured
# above, a CPU pays mostly the products for it. A GPU streams bytes about a thousand times
# faster (`benchmarks/NOTES.md` records a 4.1 TB/s device copy on the H200 this book is measured
# on) but pays for every call as well, each of them a kernel launch there, a few microseconds
# whether the launch does any work or not. There are two remedies, and the decoder uses both. It
# makes each launch cheaper: a captured CUDA graph replays all of a step's launches at once,
# with no Python, dispatcher or allocator between them. And it makes the launches fewer: the
# fused kernel does a block's whole WKV part in one launch, where the torch path made one for
# each of the WKV calls counted above, and three small kernels do the rest of the elementwise work. A CPU has neither: no graph to capture, and a Triton
# kernel runs there only in the slow interpreter; TorchScript is its way of cutting the cost
# between operations.
#
# The H200 records show both, on the 0.1B shape in bfloat16 with random weights.
# `benchmarks/gpu_generate_check.py` times the eager and the graph-replayed step by CUDA events
# and runs `generate_batch`; it was run once before the fused kernel
# (`benchmarks/results/h200_gpu_generate_check_2026-12-01.txt`) and once after it
# (`benchmarks/results/h200_gpu_generate_check_fused_2026-12-01.txt`, which also replays the
# torch WKV path in the same process), and a third time with the three smaller kernels and the
# one-token-ahead greedy loop described below
# (`benchmarks/results/h200_gpu_generate_check_prelude_2026-12-01.txt`). The cell reads all three.

# %%
import re

from rwkvlab import book

CHECKS = {"before the fused kernel": "h200_gpu_generate_check_2026-12-01.txt",
          "with the fused kernel": "h200_gpu_generate_check_fused_2026-12-01.txt",
          "every elementwise piece fused": "h200_gpu_generate_check_prelude_2026-12-01.txt"}


def read_check(path):
    """{batch: {"eager", "graph", "torch_graph" (ms per step), "tok_s"}} from a gpu_generate_check record."""
    out, batch = {}, None
    for line in path.read_text().splitlines():
        m = re.match(r"B=\s*(\d+).*step eager ([\d.]+) ms, graph ([\d.]+) ms.*decode ([\d,]+) tok/s", line)
        if m:
            batch = int(m[1])
            out[batch] = {"eager": float(m[2]), "graph": float(m[3]), "tok_s": float(m[4].replace(",", ""))}
        m = re.match(r"\s+torch WKV: graph ([\d.]+) ms", line)
        if m and batch is not None:
            out[batch]["torch_graph"] = float(m[1])
    return out


records = {}
for when, name in CHECKS.items():
    f = book.root() / "benchmarks" / "results" / name
    if f.exists():
        records[when] = read_check(f)
        print(f"{name}: {f.read_text().splitlines()[0][2:]}")
if len(records) == len(CHECKS):
    old, new, last = records.values()
    for b in sorted(new):
        print(f"B = {b:2d}: eager step {old[b]['eager']:6.3f} -> {new[b]['eager']:6.3f} -> {last[b]['eager']:6.3f} ms; "
              f"graph step {old[b]['graph']:.3f} -> {new[b]['graph']:.3f} -> {last[b]['graph']:.3f} ms "
              f"(torch WKV path in the second run: {new[b]['torch_graph']:.3f} ms, "
              f"{new[b]['torch_graph'] / new[b]['graph']:.2f}x); generate_batch {old[b]['tok_s']:,.0f} -> "
              f"{new[b]['tok_s']:,.0f} -> {last[b]['tok_s']:,.0f} tok/s")
        print(f"        torch WKV path's graph step, second and third run over first: "
              f"{new[b]['torch_graph'] / old[b]['graph']:.3f}, {last[b]['torch_graph'] / old[b]['graph']:.3f}; "
              f"time a token takes in the third run: {1e3 * b / last[b]['tok_s']:.3f} ms against a "
              f"{last[b]['graph']:.3f} ms graph step")
    assert last[1]["tok_s"] >= 1000 and last[64]["tok_s"] >= 20000   # the generation targets, as recorded
else:
    print("GPU: a gpu_generate_check record is missing from benchmarks/results/; no before/after figures")

# %% [markdown]
# Read the lines in pairs. Within the run with the fused kernel, the graph step on the torch
# WKV path costs about twice the fused one at both batch sizes: the kernel took away about half
# of a replayed step, close to the share of the launches it removes (counted above: about half
# of a block's calls in float32, and the bfloat16 torch path has its casts as well). The
# eager step fell too, but stays several times the graph step: the Python and the dispatcher
# around every remaining launch are still paid there. The torch path's graph step of the second
# run is within a few percent of the first run's (the ratio line), so the gain belongs to the
# kernel, not to a different machine or a different day. The generation rate follows the graph
# step, less what sampling and `generate_batch`'s bookkeeping add per token. That is not small:
# at B = 1 the fused record's 815 tok/s is 1.23 ms a token against a 0.76 ms graph step, so
# about 0.47 ms of every token was the host's, spent while the device waited (the argmax read
# back, the Python loop, the next token copied in, the replay launched). A third remedy removes
# the wait rather than the work: greedy decoding on the graph stepper runs one token ahead
# (`generation.Run._greedy`). The argmax stays on the device and feeds the next replay, and the
# host reads each token through a pinned buffer while the device already computes the next one.
# It gives the same tokens and states (tests/test_generation.py).
#
# The third run has both that loop and the three small kernels. The graph step fell again, to
# about 0.58 ms at B = 1: the 96 launches a step that the small kernels removed were worth about
# 0.18 ms, near the ~2 µs each that the replayed step had cost per launch. Generation passed
# 1,000 tokens a second at B = 1. But a token still takes longer than a step (the last figure of
# each line). With the host and the device overlapped, the rate is set by the slower of the two,
# and at B = 1 that is now the host: the Python that handles each token (the loop, the event,
# the copy into the static buffer, the launch of the replay) on that machine's slow CPU, where a
# torch call costs about 25 µs. The next remedy would give the host less to do per token, for
# instance a graph of several greedy steps replayed at once, with stop tokens checked per block.
#
# How the whole generation loop compares with BlinkDL's own runtime, the `rwkv` pip package, on
# the same checkpoint and in the same process: on CPU with its `cpu fp32` strategy and its
# TorchScript functions, on the H200 with its CUDA kernel (the CSV's `versions` line says which).
# `python -m rwkvlab bench generate` measures it and writes a CSV to `benchmarks/results/`.
# The chapter reads the recorded CSVs rather than timing them again (each CSV's header gives the
# run's wall time, far beyond this chapter's budget); a row is quoted with its file. Read the
# thread count in each header: with one thread for both runtimes the rows compare the steps;
# with torch's default threads on a busy two-core machine they mostly show how badly a second
# intra-op thread stalls small operations there (`generate` decodes small models on one thread
# for that reason; `rwkvlab.model.generation.decode_threads` says where the line is).

# %%
from rwkvlab import bench_generate, book

with torch.device("meta"):
    shape_01b = M.RWKV7(M.Config7.make(65536, 768, 12))
blocks_mb = 4 * sum(p.numel() for n, p in shape_01b.named_parameters() if n.startswith("blocks.")) / 1e6
head_mb = 4 * shape_01b.head.weight.numel() / 1e6
print(f"0.1B shape: {blocks_mb:.0f} MB of float32 block weights + {head_mb:.0f} MB of head, read every token at batch 1")
recorded = sorted(book.root().glob("benchmarks/results/generate_*.csv"))
gpu_csvs = [f for f in recorded if "_cpu_" not in f.name]
for f in recorded:
    rows_f = bench_generate.read_csv(f)
    meta = dict(line[2:].split(": ", 1) for line in f.read_text().splitlines() if line.startswith("# ") and ": " in line)
    print(f"{f.name} ({meta.get('device', '?')}; {meta.get('versions', '?')}; wall {meta.get('wall_s', '?')} s):")
    for r in rows_f:
        if r["phase"] in ("decode", "prefill") and r["impl"] in ("rwkvlab", "rwkvlab_eager", "rwkvlab_reference",
                                                                 "official"):
            vs = f", {r['vs_official']:.2f}x official" if r["vs_official"] == r["vs_official"] else ""
            print(f"  {r['size']:5s} {r['impl']:18s} {r['phase']:7s} B={r['batch']:<3d} "
                  f"{r['tok_per_s']:10,.0f} tok/s{vs}")
    steps = {(r["size"], r["impl"], r["context"]): r["ms_per_step"] for r in rows_f if r["phase"] == "step"}
    for size in dict.fromkeys(sz for sz, _, _ in steps):
        ctx = sorted(c for sz, impl, c in steps if sz == size and impl == "softmax_kv")
        print(f"  {size:5s} one eager step at B=1, ms, RWKV / softmax with T cached: "
              + ", ".join(f"{steps[size, 'rwkvlab_step', c]:.3g} / {steps[size, 'softmax_kv', c]:.3g} at {c}"
                          for c in ctx))
if not recorded:
    print("no generation benchmark recorded in benchmarks/results/ yet")
if not gpu_csvs:
    print("GPU: not yet measured. No GPU generation CSV is recorded, so this chapter quotes no GPU decode "
          "figures (graph vs eager, 0.1B and 1.5B shapes); `python -m rwkvlab bench generate` on a GPU writes one.")

# %% [markdown]
# The H200 CSV, `benchmarks/results/generate_h200_2026-12-01.csv` (its printed log is the `.txt`
# beside it), was recorded before the fused kernel existed, and it is still the only record in
# which the official runtime ran on the GPU in the same process as ours. Three things in it.
# The graph is what turned a step that was as slow as the official runtime's (`rwkvlab_eager`,
# about 1x) into several times faster; at B = 64 a batch of states shares every weight read,
# while the official runtime decodes the 64 sequences one after another. Prefill, one parallel
# call with the chunked Triton core, is about on par with the official runtime's. And the eager
# step rows against the softmax step: these are steps without a graph, whose launches dominate
# both, so on the 0.1B shape the softmax step hardly moves from 256 to 65,536 cached tokens, and
# the RWKV rows, whose inputs are the same at every context, scatter by more than the gap
# between the two at 1,024. Only the 1.5B shape at the longest context shows the cache's cost
# clearly above the launches.
#
# One trap for anyone who puts the official runtime in a process beside float32 code on a GPU:
# importing it switches torch to TF32 matrix products for the whole process (rwkv 0.8.32,
# `rwkv/model.py` lines 10-12 set `torch.backends.cuda.matmul.allow_tf32` and
# `torch.backends.cudnn.allow_tf32`). On the H200, with the switch left on, our float32 logits
# differed from the official ones by 2e-4 and unrelated float32 tests failed after it
# (`benchmarks/results/h200_book_run_2026-12-02.txt`). `bench_generate.import_official` puts the
# switches back, so both runtimes compute float32 in float32, and the two then agree within
# `tests/test_bench_generate.py`'s 1e-5 there too (same record). On CPU the switch does nothing.
#
# The generation work has targets on the H200 (`benchmarks/NOTES.md` lists them). The cell below
# says where the records leave them. The 0.1B rates at batch 1 and 64 are the latest record's,
# with the fused kernel. The ratio to the official runtime is the one measured in a single
# process with it, before the kernel: the fused decoder has not yet been run against the
# official runtime, and dividing its rate by the older official row would mix two runs, which is
# not a measurement (the two records from before the kernel already disagree at batch 1: 664
# tok/s in the CSV against 485 in the check, two runs on the same H200). The
# step-against-softmax line is met only on paper, by less than the RWKV rows' own scatter.

# %%
h200_csv = book.root() / "benchmarks" / "results" / "generate_h200_2026-12-01.csv"
if h200_csv.exists() and len(records) == len(CHECKS):
    by = {(r["size"], r["impl"], r["phase"], r["batch"], r["context"]): r for r in bench_generate.read_csv(h200_csv)}
    fused_rec, fused_file = records["with the fused kernel"], CHECKS["with the fused kernel"]
    long_ctx = [c for (sz, impl, ph, _, c) in by if sz == "0.1b" and impl == "softmax_kv" and c >= 1024]
    step_ratio = min(by["0.1b", "softmax_kv", "step", 1, c]["ms_per_step"]
                     / by["0.1b", "rwkvlab_step", "step", 1, c]["ms_per_step"] for c in long_ctx)
    rwkv_steps = [r["ms_per_step"] for k, r in by.items() if k[:2] == ("0.1b", "rwkvlab_step")]
    goals = [
        ("0.1B decode, B = 1: >= 1,000 tok/s", fused_rec[1]["tok_s"], 1000, f"{fused_rec[1]['tok_s']:,.0f} tok/s",
         fused_file),
        ("0.1B decode, B = 1: >= 5x official", by["0.1b", "rwkvlab", "decode", 1, None]["vs_official"], 5,
         f"{by['0.1b', 'rwkvlab', 'decode', 1, None]['vs_official']:.2f}x",
         f"{h200_csv.name}, before the fused kernel; not re-run with it"),
        ("0.1B decode, B = 64: >= 20,000 tok/s", fused_rec[64]["tok_s"], 20000, f"{fused_rec[64]['tok_s']:,.0f} tok/s",
         fused_file),
        ("RWKV step faster than softmax from T = 1,024", step_ratio, 1, f"softmax/RWKV >= {step_ratio:.2f}",
         f"{h200_csv.name}, eager steps; the RWKV rows alone span {min(rwkv_steps):.1f}-{max(rwkv_steps):.1f} ms"),
    ]
    for goal, value, bar, shown, source in goals:
        print(f"{goal:44s} {shown:22s} {'met' if value >= bar else 'NOT met':8s} ({source})")
else:
    print("GPU: the H200 records are missing from benchmarks/results/; the targets are not assessed here")

# %% [markdown]
# ## 5. Parallel mode: reading a whole sequence
#
# Training and prompt reading use parallel mode. Here the comparison is between reading $T$
# tokens at once with the chunked core and reading them one `step` at a time: same results
# (section 2), very different speed, because the parallel form turns $T$ matrix-vector
# products into matrix-matrix products.

# %%
T_read = rwkvlab.device.pick([16, 64, 256], [256, 1024, 4096])
rows = []
with torch.no_grad():
    for T in T_read:
        ids = torch.randint(0, 256, (1, T), generator=gen).to(dev)
        t_par = median_time(lambda: big(ids), repeats=3)
        if T <= 64 or rwkvlab.device.has_gpu():
            def steps():
                s = None
                for t in range(T):
                    _, s = big.step(ids[:, t], s)
            t_seq = median_time(steps, repeats=1)
        else:
            t_seq = t_rwkv * T                  # every step costs the same (section 4)
        rows.append((T, t_par, t_seq))
        print(f"T = {T:5d}: parallel {1e3 * t_par / T:7.3f} ms/token | one step at a time {1e3 * t_seq / T:7.3f} ms/token")
assert all(tp > 0 and ts > 0 for _, tp, ts in rows)

# %% [markdown]
# In the printed run the parallel form is faster per token already at the shortest length, and
# on a GPU, with the Triton kernels, the gap should be far larger (timings again, not
# asserted).
# This is why a model trains in parallel mode and reads prompts in parallel mode, and falls
# back to RNN mode only where it has no choice: one new token at a time.
#
# Against softmax attention, parallel mode has one more advantage that this CPU cannot show
# at the sizes it can afford: the chunked WKV core is linear in $T$ (about $T\cdot C\cdot$
# (chunk size $+ N$) multiply-adds per layer), while attention is quadratic ($\approx 2T^2 C$).
# On the CPU at a few thousand tokens both are still dominated by overheads; the $T^2$ term
# takes over at long contexts, and memory runs out first unless attention is computed in
# blocks (chapter 1's flash form).

# %%
if rwkvlab.device.has_gpu():
    for T in (1024, 4096, 16384):
        q = torch.randn(1, T, 12, 64, device=dev)
        kn = torch.nn.functional.normalize(torch.randn(1, T, 12, 64, device=dev), dim=-1)
        lw = -0.6 * torch.rand(1, T, 12, 64, device=dev)
        torch.cuda.synchronize()
        def run_wkv():
            wkv7.triton_chunked(q, lw, q, q, -kn, 0.5 * kn)
            torch.cuda.synchronize()
        def run_attn():
            attention.triton_chunked(q, q, q)
            torch.cuda.synchronize()
        print(f"T = {T:6d}: wkv7 triton_chunked {1e3 * median_time(run_wkv):7.2f} ms | "
              f"flash attention {1e3 * median_time(run_attn):7.2f} ms")
else:
    print("no GPU: the long-context parallel-mode comparison (Triton kernels at T up to 16k) runs only on a GPU")

# %% [markdown]
# ## 6. Which mode when
#
# | task | mode | why |
# |---|---|---|
# | training | parallel (chunked, Triton on a GPU) | all positions' losses at once; matrix-matrix products |
# | reading a prompt ("prefill") | parallel, then keep the state | same as training, no gradients |
# | generating | RNN (`model.generate`: prefill, then the lean `model.step`) | one token exists at a time; O(1) memory and time per token |
# | continuing a conversation | parallel from the saved state | the state summarises everything before |
# | many independent sequences | a batch of states (or, at the WKV-core level, packed sequences with `cu_seqlens`) | each sequence has its own state |
#
# The saved state is also a handle for tricks a transformer cannot do cheaply: store the
# state after a long system prompt once and start every conversation from a copy of it, or
# tune the initial state itself as a trainable parameter ("state tuning"), since it has the
# same few megabytes whatever the prompt length.
#
# ## Summary
#
# * An RWKV model's memory of the past is $L(2C + CN)$ numbers per sequence: two token-shift
#   vectors and one $N\times N$ matrix per head, per block. It does not grow.
# * Parallel mode and RNN mode compute the same function; the book's models agree to float32
#   rounding at every position, whether the text is read whole, token by token, or in
#   arbitrary pieces.
# * A same-shaped KV cache is larger than the whole RWKV state after $1 + N/2$ tokens (33 for
#   $N = 64$), and keeps growing by $2LC$ numbers a token; its time per generated token grows
#   with the position, while RNN mode's stays flat.
# * At small sizes a step's time is per-operation overhead, not arithmetic: count the operators,
#   fit $t \approx n_{\text{ops}} t_{\text{op}} + \text{bytes}/\text{bandwidth}$, and make the
#   operators fewer or cheaper (stacked weights, in-place state, no checks inside the step,
#   TorchScript on CPU; on a GPU fused kernels (the WKV part in one) and a CUDA graph around the whole
#   step) without changing the equations — and check the fast step against the slow one and
#   against parallel mode.
# * On the H200 the fused kernel halved the replayed 0.1B step against the torch path in the same
#   run, and the records in `benchmarks/results/` put batch 64 past its target and batch 1 short
#   of its target (section 4 reads them).
# * Train and prefill in parallel mode; generate in RNN mode.
#
# ## Exercises
#
# 1. Derive the crossover $T^\ast$ for a transformer with grouped-query attention that has
#    $H/g$ key/value heads. For which $g$ is the KV cache of 4k tokens as small as the RWKV state?
# 2. RWKV-6 has the same state layout. Verify with `M.state_nbytes` that its state has the
#    same size as RWKV-7's for the same $C$, $L$, $N$.
# 3. Run the pieces check of section 2 with 1,000 random cut patterns. Is the largest error
#    still below $10^{-5}$? Which cut pattern is worst, and why is it not the one with most cuts?
# 4. Time `net(idx)` for `impl="naive"` and `impl="chunked"` at T = 16, 64, 256. Where does
#    the chunked form start to pay off on this CPU?
# 5. Store the state after a 100-token "system prompt", then generate from two different
#    user prompts by starting both from copies of it. Check that each continuation equals
#    reading system prompt + user prompt from scratch.
# 6. The KV cache in `attention.kv_cache_step` grows by concatenation, copying the whole cache
#    each token. Write a version with a preallocated buffer and measure how much of the
#    per-token time at T = 4096 was the copy.

# %% [markdown]
# Short answers to exercises 1 and 2:
#
# ### BEGIN SOLUTION
# 1. With $H/g$ key/value heads the cache holds $2LCT/g$ numbers, so $T^\ast = g\,(1 + N/2)$ in
#    one precision. A 4k-token cache is as small as the state only when $2LC \cdot 4096 / g \le
#    L(2C + CN)$, i.e. $g \ge 8192/(N + 2) \approx 124$ for $N = 64$: more query heads per
#    key/value head than the released models have heads at all. Even multi-query attention
#    ($g = H$) crosses over at $H(1 + N/2)$ tokens: 396 for the 0.1B shape ($H = 12$), 2,112 for
#    $H = 64$.
# 2. Yes: both are $L(2C + CN)$ numbers, two shift vectors and $H$ matrices of $N\times N$ per
#    block; for the chapter's $C = 64$, $L = 2$, $N = 32$ that is 17,408 bytes per sequence for
#    `net` and for `net6` alike.
# ### END SOLUTION

# %% [markdown]
# ### Exercises that check themselves
#
# Each cell below prints its exercise's statement, holds a solution between the markers
# `### BEGIN SOLUTION` and `### END SOLUTION` (the student edition, `python -m rwkvlab exercises
# student`, replaces it with a stub), and ends with `exercises.check`, which runs the function on
# seeded cases against an independent reference (here: the parallel forward in float64, real
# state and cache tensors, greedy decoding that re-reads the whole text) and says what is wrong.
#
# 7. RNN mode by hand: one token through one RWKV-7 block, from its parts, with the three pieces
#    of state that section 1 counted going in and coming out.

# %%
import torch

from rwkvlab import exercises
from rwkvlab import rwkv7_ops as ops
from rwkvlab import wkv7
from rwkvlab.model import LayerState

print(exercises.spec("13.7"))


def block_step(block, x, layer, v_first):
    ### BEGIN SOLUTION
    att, ffn = block.att, block.ffn
    B, _, C = x.shape
    H = att.n_head
    N = C // H
    if layer is None:                                    # the start of a text: zero shifts, zero state
        layer = LayerState(x.new_zeros(B, C), torch.zeros(B, H, N, N), x.new_zeros(B, C))
    if block.layer_id == 0:
        x = block.ln0(x)
    xa = block.ln1(x)                                    # the time mix's input: the next token's shift
    p = att.projections(xa, layer.att_shift[:, None], v_first)
    heads = lambda t: t.reshape(B, H, N)  # noqa: E731
    r, w, k, v, a, g, kk = (p[n] for n in ("r", "w", "k", "v", "a", "g", "kk"))
    o, S = wkv7.step(heads(r), heads(w), heads(k), heads(v), -heads(kk), heads(kk * a), state=layer.wkv)
    o = att.ln_x(o.reshape(B, C))[:, None] + ops.output_correction(r, k, v, att.r_k, H)   # bonus after the norm
    x = x + att.output(o * g)
    xf = block.ln2(x)                                    # the channel mix's input: its shift
    x = x + ops.channel_mix(xf, layer.ffn_shift[:, None], ffn.x_k, ffn.key.weight, ffn.value.weight)
    return x, LayerState(xa[:, 0], S, xf[:, 0]), p["v_first"]
    ### END SOLUTION


exercises.check("13.7", block_step)

# %% [markdown]
# 8. Section 3's comparison as a function: the bytes of the state and of a KV cache (with
#    grouped-query attention and a bfloat16 model as options), and the token at which the cache
#    catches up.

# %%
from rwkvlab import exercises

print(exercises.spec("13.8"))


def memory_bytes(C, L, N, T, dtype_bytes, group):
    ### BEGIN SOLUTION
    state = L * (2 * C * dtype_bytes + C * N * 4)        # two shift vectors + H float32 matrices N x N
    per_token = 2 * L * (C // group) * dtype_bytes       # keys and values of H / group heads, every layer
    crossover = -(-state // per_token)                   # ceil: the first T with cache(T) >= state
    return state, per_token * T, crossover
    ### END SOLUTION


exercises.check("13.8", memory_bytes)

# %% [markdown]
# 9. What `model.generate` does, greedily and batched: read the prompt in parallel mode once,
#    then one `step` per new token, and hand back a state from which the text can go on.

# %%
import torch

from rwkvlab import exercises

print(exercises.spec("13.9"))


def greedy(model, prompt, n):
    ### BEGIN SOLUTION
    with torch.no_grad():
        logits, state = model(prompt)                    # parallel mode: the whole prompt at once
        logits = logits[:, -1]                           # the last row predicts the first new token
        tokens = []
        for _ in range(n):
            tok = logits.argmax(-1)
            tokens.append(tok)
            logits, state = model.step(tok, state)       # RNN mode: read it, predict the next
    return torch.stack(tokens, 1), state
    ### END SOLUTION


exercises.check("13.9", greedy)
