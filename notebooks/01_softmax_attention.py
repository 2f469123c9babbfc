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
# # Softmax attention and its quadratic cost
#
# Everything in this book is a reaction to one formula. Before we can say what RWKV changes, we
# need that formula in our hands: derived, coded four ways, checked, and measured. By the end of
# this chapter you will be able to
#
# - write causal softmax attention as a loop, as a masked matrix product, and as a blocked
#   "online softmax" that never stores the full score matrix;
# - read and run a small Triton flash-attention kernel (on CPU through the interpreter, or on a GPU);
# - show, with measurements rather than assertions in prose, where the cost that grows with the
#   sequence length lives: in the $T \times T$ score matrix while training, and in the KV cache
#   while generating.
# - say what forces the KV cache (not the query, but the exponential kernel), with linear
#   attention as the counter-example, and place RWKV and its relatives on one map.
#
# The whole idea fits in one line. For every position $t$, with query $q_t$, keys $k_i$ and
# values $v_i$ (all per head),
#
# $$
# o_t \;=\; \sum_{i \le t} \frac{\exp(\mathrm{scale}\cdot q_t \cdot k_i)}{\sum_{j \le t} \exp(\mathrm{scale}\cdot q_t \cdot k_j)}\; v_i ,
# \qquad \mathrm{scale} = 1/\sqrt{K}.
# $$
#
# Each output is a weighted average of the values seen so far; the weights are a softmax of
# query–key dot products. Every position talks to every earlier position, and that is both the
# strength and the cost.

# %%
import rwkvlab

print(rwkvlab.device.describe())

# %%
import inspect
import math
import time

import matplotlib.pyplot as plt
import torch
from torch.profiler import ProfilerActivity, profile

from rwkvlab import attention, randn   # randn: seeded inputs, the same numbers in every dtype

torch.manual_seed(0)


# %% [markdown]
# ## 1. From a lookup table to a soft lookup
#
# Think of the past tokens as a table of (key, value) pairs. A hard lookup would compare the
# query with every key and return the value whose key matches best. Softmax attention makes this
# differentiable: it scores every key by the dot product $s_{ti} = \mathrm{scale}\cdot q_t\cdot k_i$,
# turns the scores into positive weights that sum to one with a softmax, and returns the weighted
# average of the values. A key that matches much better than the others gets almost all the
# weight (the soft lookup becomes nearly hard); keys that match equally share it.
#
# Three details matter for what follows.
#
# **The scale.** With $K$-dimensional queries and keys whose entries have unit variance, the dot
# product has variance $K$. Dividing by $\sqrt{K}$ keeps the scores of order one, so the softmax
# neither saturates into a one-hot vector nor flattens into a uniform average as $K$ grows. The
# package's default is `scale = K ** -0.5`; RWKV will use `scale = 1` (its "query" $r$ is not
# used the same way), which is why every function in the book takes `scale` as an argument.
#
# **Causality.** A language model predicts token $t+1$ from tokens $1..t$, so output $t$ may only
# read positions $i \le t$. In the loop that is the upper limit of the sum; in matrix form it is a
# mask that sets the scores of future positions to $-\infty$, whose exponential is exactly 0.
#
# **Heads.** Everything happens independently per head. Tensors are `[B, T, H, K]` (batch, time,
# head, key channel), values `[B, T, H, V]`, as in the rest of the book and in
# flash-linear-attention.
#
# ## 2. The naive rung: one position at a time
#
# The loop computes the equation above literally: for each $t$, the scores of $q_t$ against
# $k_0..k_t$, their softmax, and the weighted sum of $v_0..v_t$.

# %%
print(inspect.getsource(attention.naive))

# %% [markdown]
# Two facts can be checked by hand. The first output has only itself to look at, so $o_0 = v_0$
# exactly. And if all keys are equal, every score is equal, the weights are uniform, and $o_t$ is
# the plain running mean of $v_0..v_t$.

# %%
B, T, H, K, V = 2, 37, 2, 16, 16
q, k, v = randn(B, T, H, K, seed=1), randn(B, T, H, K, seed=2), randn(B, T, H, V, seed=3)
o_naive = attention.naive(q, k, v)
assert o_naive.shape == (B, T, H, V)
assert torch.allclose(o_naive[:, 0], v[:, 0])

k_same = torch.ones_like(k)
running_mean = v.cumsum(1) / torch.arange(1, T + 1).view(1, T, 1, 1)
rwkvlab.check("attention naive, equal keys vs running mean", attention.naive(q, k_same, v), running_mean, 1e-6)

# %% [markdown]
# ## 3. The parallel rung: one masked $T\times T$ matrix
#
# Stack the queries into $Q \in \mathbb{R}^{T\times K}$ and the keys into $K$, and all the scores
# at once are $S = \mathrm{scale}\cdot QK^\top$, a $T \times T$ matrix per head. Causality sets
# $S_{ti} = -\infty$ for $i > t$ (the strict upper triangle); a row-wise softmax gives the weight
# matrix $P$, and the outputs are $O = PV$.
#
# $$ O = \mathrm{softmax}_{\text{rows}}\big(\mathrm{scale}\cdot QK^\top + M\big)\,V, \qquad
#    M_{ti} = \begin{cases} 0 & i \le t \\ -\infty & i > t \end{cases} $$
#
# This is the form a GPU likes: two large matrix multiplications. It is also the form whose
# memory grows with $T^2$.

# %%
print(inspect.getsource(attention.parallel))

# %%
ref64 = attention.naive(q.double(), k.double(), v.double())   # the float64 reference
o_parallel = attention.parallel(q, k, v)
rwkvlab.check("attention naive (fp32) vs naive (fp64)", o_naive, ref64, 1e-5)
rwkvlab.check("attention parallel vs naive", o_parallel, ref64, 1e-5)

# %% [markdown]
# Here is what $P$ looks like for one head: a lower-triangular matrix whose rows each sum to
# one. Row $t$ is how output $t$ spreads its attention over the past.

# %%
s = torch.einsum("tk,ik->ti", q[0, :, 0], k[0, :, 0]) / math.sqrt(K)
P = torch.softmax(s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")), dim=-1)
assert torch.allclose(P.sum(-1), torch.ones(T)) and (P.triu(1) == 0).all()

fig, ax = plt.subplots(figsize=(4.2, 3.6))
im = ax.imshow(P.numpy(), cmap="viridis")
ax.set_xlabel("key position i")
ax.set_ylabel("query position t")
ax.set_title("causal attention weights P (one head)")
fig.colorbar(im, ax=ax, shrink=0.8)
plt.show()

# %% [markdown]
# ## 4. The chunked rung: online softmax
#
# The matrix form materialises all $T^2$ scores. Flash attention (Dao et al., 2022) avoids this
# by visiting the keys block by block and keeping, for each query row, just three running
# quantities:
#
# - $m$, the largest score seen so far;
# - $\ell = \sum_i e^{s_i - m}$, the normaliser relative to that max;
# - $a = \sum_i e^{s_i - m}\, v_i$, the unnormalised output relative to that max.
#
# When a new block of scores $s'$ arrives, the max may rise to $m' = \max(m, \max s')$. The old
# sums were computed relative to $m$, so they are rescaled by $\alpha = e^{m - m'}$ before the new
# block is added:
#
# $$ \ell \leftarrow \alpha\,\ell + \sum_{i \in \text{block}} e^{s'_i - m'}, \qquad
#    a \leftarrow \alpha\, a + \sum_{i \in \text{block}} e^{s'_i - m'}\, v_i, \qquad m \leftarrow m'. $$
#
# At the end $o = a/\ell$. The $e^{m}$ factors cancel between numerator and denominator, so the
# result equals the full softmax exactly, not approximately; and every exponent is $\le 0$, so
# nothing overflows. That second point is not cosmetic. Scores of a few hundred are unusual but
# possible, and $e^{89}$ already overflows float32:

# %%
big = torch.tensor([80.0, 90.0, 100.0])
assert not torch.isfinite(torch.exp(big)).all()                     # the plain softmax would overflow
stable = torch.exp(big - big.max()) / torch.exp(big - big.max()).sum()
assert torch.isfinite(stable).all() and torch.allclose(stable, torch.softmax(big.double(), 0).float())
print("exp(scores):", torch.exp(big).tolist(), "  stable weights:", [round(x, 6) for x in stable.tolist()])

# %% [markdown]
# The merge is associative, so the key blocks can be processed in any grouping. The torch
# version below loops over query blocks and, inside, over key blocks up to the diagonal; only one
# `block × block` tile of scores exists at a time.

# %%
print(inspect.getsource(attention.chunked))

# %%
o_chunked = attention.chunked(q, k, v, block_size=16)
errs = [rwkvlab.check("attention chunked vs naive", o_chunked, ref64, 1e-5)]
for bs in (1, 5, 64):
    errs.append(rwkvlab.check(f"attention chunked (block {bs}) vs naive",
                              attention.chunked(q, k, v, block_size=bs), ref64, 1e-5))
assert max(errs) < 1e-6          # float32 rounding, not an approximation: see the questions at the end

# huge scores: the running max keeps the chunked form finite and exact
q_hot = q * 40
o_hot = attention.chunked(q_hot, k, v, block_size=8)
assert torch.isfinite(o_hot).all()
rwkvlab.check("attention chunked, scores ~1e2, vs naive fp64", o_hot,
              attention.naive(q_hot.double(), k.double(), v.double()), 1e-5)

# %% [markdown]
# Which tiles are visited? With causality, a query block never needs a key block that lies
# entirely in its future, so only the tiles on and below the diagonal are computed: for $n$
# blocks that is $n(n+1)/2$ of the $n^2$ tiles, and only the diagonal tiles need the mask.

# %%
T_pic, bs_pic = 64, 16
n = T_pic // bs_pic
grid = torch.zeros(n, n)
for i in range(n):
    for j in range(i + 1):
        grid[i, j] = 2 if i == j else 1
assert int((grid > 0).sum()) == n * (n + 1) // 2

fig, ax = plt.subplots(figsize=(3.6, 3.4))
ax.imshow(grid.numpy(), cmap="Blues", vmin=0, vmax=2.4)
for i in range(n):
    for j in range(n):
        ax.text(j, i, {0: "skip", 1: "full", 2: "mask"}[int(grid[i, j])], ha="center", va="center", fontsize=8)
ax.set_xticks(range(n), [f"k{j * bs_pic}" for j in range(n)])
ax.set_yticks(range(n), [f"q{i * bs_pic}" for i in range(n)])
ax.set_title(f"tiles of a T={T_pic} causal pass, block {bs_pic}")
plt.show()

# %% [markdown]
# Because the chunked form is ordinary torch, autograd differentiates it. Its gradients must
# equal those of the naive loop; in float64 they agree to rounding.

# %%
xs_naive = [x.double().clone().requires_grad_() for x in (q, k, v)]
xs_chunk = [x.double().clone().requires_grad_() for x in (q, k, v)]
weights = randn(B, T, H, V, seed=4, dtype=torch.float64)     # a random linear loss
(attention.naive(*xs_naive) * weights).sum().backward()
(attention.chunked(*xs_chunk, block_size=8) * weights).sum().backward()
rwkvlab.check("attention chunked grads (dq, dk, dv) vs naive",
              [x.grad for x in xs_chunk], [x.grad for x in xs_naive], 1e-10)

# %% [markdown]
# ## 5. The Triton rung: a flash-attention forward kernel
#
# The kernel runs the same algorithm with one *program* (one instance of the kernel) per pair
# (batch·head, block of `BT` queries). The program loads its query tile once, then walks the key
# blocks from the start of the sequence up to the end of its own query block. For each key block
# it computes a `BT × BS` score tile with `tl.dot`, masks the future and the padding beyond $T$,
# and performs the online-softmax update of §4 in registers. Only the final output tile is
# written back to memory.
#
# A few Triton constraints shape the code. `tl.arange` needs power-of-two lengths, so $K$ and $V$
# are padded to powers of two (`BK`, `BV`) and masked. `tl.dot` wants tiles of at least 16. And
# in the interpreter, `tl.dot` on half-precision operands is unreliable, so there the wrapper sets
# `UPCAST` and everything runs in float32. The kernel is **forward only**: its result carries no
# autograd graph, so training goes through `parallel` or `chunked`; a backward kernel is left for
# the RWKV chapters, where the book builds one.

# %%
print(inspect.getsource(attention._flash_fwd_kernel.fn))
print(inspect.getsource(attention.triton_chunked))

# %%
Tt, Ht = rwkvlab.device.pick(64, 1024), 2
dev = rwkvlab.device.device()
qt, kt, vt = (randn(1, Tt, Ht, 16, seed=s).to(dev) for s in (5, 6, 7))
ref_t = attention.naive(qt.double().cpu(), kt.double().cpu(), vt.double().cpu())
o_triton = attention.triton_chunked(qt, kt, vt)
rwkvlab.check("attention triton_chunked vs naive", o_triton, ref_t, 1e-5)   # ieee dots: float32 rounding, ~1e-7
rwkvlab.check("attention triton_chunked, T=37 (ragged) vs naive",
              attention.triton_chunked(q.to(dev), k.to(dev), v.to(dev)), ref64, 1e-5)
assert not attention.triton_chunked(*(x.requires_grad_() for x in (qt, kt, vt))).requires_grad  # forward only

# %% [markdown]
# With a GPU the same cell runs compiled kernels on $T=1024$; the guard below adds a bf16 run.
# In bf16 the inputs are rounded to 8 bits of mantissa, so agreement with float64 is of order
# $10^{-2}$ rather than the $10^{-7}$ of float32 above (accumulation stays in float32 inside the
# kernel), and the check's tolerance is loosened to match.

# %%
if rwkvlab.device.has_gpu():
    ob = attention.triton_chunked(qt.bfloat16(), kt.bfloat16(), vt.bfloat16())
    assert ob.dtype == torch.bfloat16
    rwkvlab.check("attention triton_chunked bf16 vs naive fp64", ob, ref_t, 2e-2)
else:
    print("no GPU: the bf16 run of the kernel is skipped here (the interpreter computes bf16 tl.dot wrongly)")

# %% [markdown]
# ## 6. The quadratic cost, measured
#
# Count what the parallel form does. For each head, the score matrix holds $T^2$ numbers, so
# its memory is $B\cdot H\cdot T^2 \cdot 4$ bytes in float32; computing it takes
# $B \cdot H \cdot T^2 \cdot K$ multiply–adds, and applying it another $B\cdot H \cdot T^2\cdot V$.
# Doubling $T$ should quadruple all three. Rather than trusting this, we measure it:
#
# - **memory**: PyTorch's profiler records every buffer each operator allocates; we keep the
#   largest one per call;
# - **work**: PyTorch's `FlopCounterMode` counts the floating-point operations of the matrix
#   products that actually ran (two per multiply–add);
# - **time**: a wall clock, the best of a few runs on one thread. Times depend on the machine,
#   its caches and whatever else runs on it, so they are printed and plotted, never asserted.
#   What is asserted is what cannot depend on the machine: the counted work, and that the largest
#   buffer is at least the score matrix the code builds.

# %%
from torch.utils.flop_counter import FlopCounterMode


def largest_buffer_bytes(fn, *args):
    """Run fn under the profiler and return the largest single buffer it allocated, in bytes."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(*args)
    return max(e.cpu_memory_usage for e in prof.events())


def counted_flops(fn, *args):
    """Floating-point operations of the matrix products fn runs (2 per multiply–add)."""
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops()


def best_time(fn, *args, repeats=5):
    fn(*args)                                                  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return min(times)


def loglog_slope(xs, ys):
    """Least-squares slope of log y against log x."""
    lx = torch.log(torch.tensor(xs, dtype=torch.float64))
    ly = torch.log(torch.tensor(ys, dtype=torch.float64))
    A = torch.stack([lx, torch.ones_like(lx)], 1)
    return torch.linalg.lstsq(A, ly[:, None]).solution[0].item()


Hm, Km = 2, 32
Ts = [64, 128, 256, 512, 1024, 2048]
mem, flops, secs = [], [], []
threads = torch.get_num_threads()
torch.set_num_threads(1)                 # one thread: time tracks work, not thread scheduling
for Tm in Ts:
    qm, km, vm = (randn(1, Tm, Hm, Km, seed=s) for s in (8, 9, 10))
    mem.append(largest_buffer_bytes(attention.parallel, qm, km, vm))
    flops.append(counted_flops(attention.parallel, qm, km, vm))
    secs.append(best_time(attention.parallel, qm, km, vm))
torch.set_num_threads(threads)

# the work is 2·H·T²·(K+V) flops (counted, so the same on every machine); the code builds the
# H × T × T score matrix, so no buffer can be smaller than that; how the allocator and profiler
# report it beyond that depends on the torch build, so the ratio is printed, not asserted
scores = [Hm * Tm * Tm * 4 for Tm in Ts]
assert flops == [2 * Hm * Tm * Tm * (Km + Km) for Tm in Ts]
assert all(m >= sc for m, sc in zip(mem, scores))
slope_mem, slope_flops, slope_time = loglog_slope(Ts, mem), loglog_slope(Ts, flops), loglog_slope(Ts[-4:], secs[-4:])
assert abs(slope_flops - 2) < 1e-9
print("largest buffer / score matrix:", [round(m / sc, 2) for m, sc in zip(mem, scores)])
print(f"log-log slopes: counted flops {slope_flops:.2f}, largest buffer {slope_mem:.2f}; "
      f"time on this machine {slope_time:.2f} (T = 256..2048), {secs[-1] / secs[-4]:.1f}x for 8x T")

fig, axs = plt.subplots(1, 3, figsize=(12, 3.4))
axs[0].loglog(Ts, [m / 2**20 for m in mem], "o-", label="measured largest buffer")
axs[0].set_ylabel("MiB")
axs[0].set_title("memory of the score matrix")
axs[1].loglog(Ts, [f / 1e9 for f in flops], "o-", label="counted")
axs[1].set_ylabel("GFLOP")
axs[1].set_title("work (matmul flops)")
axs[2].loglog(Ts, [t * 1e3 for t in secs], "o-", label="measured (best of 5)")
axs[2].set_ylabel("ms")
axs[2].set_title("wall time on this CPU")
for ax, ys in zip(axs, ([m / 2**20 for m in mem], [f / 1e9 for f in flops], [t * 1e3 for t in secs])):
    ax.loglog(Ts, [ys[-1] * (t / Ts[-1]) ** 2 for t in Ts], "k:", label="∝ T² (through the last point)")
    ax.set_xlabel("T")
    ax.legend(fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# The counted work has slope exactly 2, and the largest buffer follows it (on the machines we
# ran, it *is* the score matrix: the printed ratios are 1). The time curve is bumpier. At small
# $T$ fixed overheads dominate (a call costs some microseconds whatever its size); in the middle
# the curve is often *steeper* than $T^2$, because once the score matrix no longer fits in the
# CPU's caches every pass over it goes to main memory; and a shared CPU adds noise throughout.
# The printed slope is this machine's, on this run. The chunked form and
# the Triton kernel remove the $T^2$ *memory* (they hold one tile at a time), but not the $T^2$
# *work*: every query still meets every earlier key. On a GPU,
# flash attention is fast because it avoids moving the score matrix through slow memory, not
# because it computes fewer scores.

# %% [markdown]
# ## 7. Generation and the KV cache
#
# At inference a model produces one token at a time. Output $t$ needs $q_t$ and *all* keys and
# values $k_{\le t}, v_{\le t}$. Recomputing the old keys and values at every step would be
# wasteful, so implementations keep them in a **KV cache**: each step appends one key and one
# value per head and attends from the new query to everything in the cache. The new output is
# the last row of the parallel form, computed with $O(t)$ work instead of $O(t^2)$.

# %%
print(inspect.getsource(attention.kv_cache_step))

# %%
Td = 48
qd, kd, vd = (randn(1, Td, 2, 16, seed=s) for s in (11, 12, 13))
full = attention.parallel(qd, kd, vd)
cache, outs, cache_bytes = None, [], []
for t in range(Td):
    o_t, cache = attention.kv_cache_step(qd[:, t], kd[:, t], vd[:, t], cache)
    outs.append(o_t)
    cache_bytes.append(cache.nbytes)
rwkvlab.check("attention kv_cache_step (token by token) vs parallel", torch.stack(outs, 1), full, 1e-6)
per_token = 1 * 2 * (16 + 16) * 4                  # B · H · (K + V) · 4 bytes
assert cache_bytes == [per_token * (t + 1) for t in range(Td)]
print(f"cache after {Td} tokens: {cache.length} keys and values, {cache.nbytes} bytes = {Td} × {per_token}")

# %% [markdown]
# The cache grows by the same amount with every token: linear in $T$, without bound. For one
# layer with $H$ heads it holds $T\cdot H\cdot(K+V)$ numbers. For a whole model multiply by the
# number of layers: a model with 24 layers, width 2048 ($H\cdot K = H \cdot V = 2048$) in 16-bit
# numbers stores $2\cdot 24\cdot 2048 \cdot 2 = 196\,608$ bytes per token, so a 32k-token context
# costs 6 GiB per sequence. The plot contrasts this with a recurrent model whose state has a
# fixed size. The second line previews Parts I and II: an RWKV-6 layer of the same width with
# head size 64 keeps a WKV state of $H \cdot 64\cdot 64$ numbers, plus the two token-shift
# vectors of chapter 4 (the previous token's input to the time mix and to the channel mix,
# $2 \cdot 2048$ numbers), whatever the length. The package's RWKV-6 model counts its own state
# (`state_nbytes`), and we check the formula on a small one before applying it at width 2048.

# %%
from rwkvlab import model as M


def rwkv6_state_bytes(n_layer, d_model, head_size=64):
    """Per sequence, float32: per layer H·N·N WKV numbers plus two token-shift vectors of d_model."""
    return n_layer * ((d_model // head_size) * head_size * head_size + 2 * d_model) * 4


small = M.RWKV6(M.Config6.make(50, 64, 3, head_size=16)).init_weights("random", seed=0)
assert M.state_nbytes(small.empty_state(1)) == rwkv6_state_bytes(3, 64, head_size=16)

n_layer, d_model, bytes_per = 24, 2048, 2
kv_per_token = 2 * n_layer * d_model * bytes_per
assert kv_per_token == 196_608 and kv_per_token * 32768 == 6 * 2**30
rnn_state = rwkv6_state_bytes(n_layer, d_model)

ctx = [2**i for i in range(4, 16)]
assert kv_per_token * ctx[-1] > rnn_state > kv_per_token * ctx[0]
crossover = rnn_state / kv_per_token
print(f"RWKV-6 state: {rnn_state / 2**20:.2f} MiB per sequence, of which token shift "
      f"{n_layer * 2 * d_model * 4 / 2**10:.0f} KiB; it costs as much as {crossover:.1f} tokens of KV cache; "
      f"at 32k tokens the cache is {kv_per_token * 32768 / rnn_state:.0f}× larger")

fig, ax = plt.subplots(figsize=(5.2, 3.4))
ax.loglog(ctx, [kv_per_token * c / 2**20 for c in ctx], "o-", label="KV cache (softmax attention)")
ax.loglog(ctx, [rnn_state / 2**20] * len(ctx), "s--", label="fixed-size recurrent state")
ax.set_xlabel("tokens in context")
ax.set_ylabel("MiB per sequence")
ax.set_title("inference memory, 24 layers × 2048 wide")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## 8. What forces the cache: the kernel, not the query
#
# A tempting explanation of the cache goes: the weight that output $t$ gives position $i$ depends
# on $q_t$, which arrives only at step $t$, so every key must be kept until then. The premise is
# true and the conclusion does not follow from it. **Linear attention** (Katharopoulos et al.
# 2020, "Transformers are RNNs", arXiv 2006.16236) keeps weights that depend on the query and
# needs no cache. It replaces the kernel $e^{q\cdot k}$ by a dot product of features,
# $\varphi(q)\cdot\varphi(k)$, with $\varphi:\mathbb{R}^K\to\mathbb{R}^m$ (theirs is
# $\varphi(x) = \mathrm{elu}(x) + 1 > 0$, $m = K$). Then, because
# $(\varphi(q_t)^\top\varphi(k_i))\,v_i^\top = \varphi(q_t)^\top(\varphi(k_i)\,v_i^\top)$,
#
# $$
# o_t = \frac{\sum_{i\le t}\varphi(q_t)^\top\varphi(k_i)\; v_i}{\sum_{i\le t}\varphi(q_t)^\top\varphi(k_i)}
#     = \frac{S_t^\top\varphi(q_t)}{z_t^\top\varphi(q_t)},\qquad
# S_t = S_{t-1} + \varphi(k_t)\,v_t^\top,\quad z_t = z_{t-1} + \varphi(k_t).
# $$
#
# The query is applied *after* the sum over the past, so the past can be summed before the query
# is known: an $m\times V$ matrix and an $m$-vector per head replace the cache, whatever $T$.
# The package has both forms, the sum over $i \le t$ by definition and the recurrence:

# %%
print(inspect.getsource(attention.linear_recurrent))

# %%
ql, kl, vl = (randn(2, 41, 3, 8, seed=s) for s in (14, 15, 16))
ref_lin = attention.linear_naive(ql.double(), kl.double(), vl.double())
o_lin, (S_lin, z_lin) = attention.linear_recurrent(ql, kl, vl, output_final_state=True)
rwkvlab.check("linear attention: recurrent (K×V state) vs the sum over i <= t", o_lin, ref_lin, 1e-6)
rwkvlab.check("linear attention without the denominator: recurrent vs sum",
              attention.linear_recurrent(ql, kl, vl, normalize=False),
              attention.linear_naive(ql.double(), kl.double(), vl.double(), normalize=False), 1e-6)
q_moved = ql.clone()
q_moved[:, 20] += 1.0                                   # the weights do depend on the query
o_moved = attention.linear_recurrent(q_moved, kl, vl)
assert torch.equal(o_moved[:, :20], o_lin[:, :20]) and (o_moved[:, 20] - o_lin[:, 20]).abs().max() > 1e-3
print(f"state after {ql.shape[1]} tokens: S {tuple(S_lin.shape)} and z {tuple(z_lin.shape)}, "
      f"{(S_lin.numel() + z_lin.numel()) * 4} bytes whatever T")

# %% [markdown]
# So what does force the cache? A way to ask it that does not depend on any implementation:
# cut the sequence at $t_0$. Every output $t \ge t_0$ sees the past $i < t_0$ only through the
# state at $t_0$. If the outputs are $o_t = \sum_i W_{ti} v_i$ and the state is linear in the
# values with $n$ numbers per value channel, the block $W[t \ge t_0,\ i < t_0]$ of the weight
# matrix factors through those $n$ numbers, so its rank is at most $n$. (A softmax's
# denominator only rescales rows, which changes no rank.) The rank of that block is therefore a
# lower bound on the state. For linear attention it is at most $m$. For $e^{q\cdot k}$ there is
# no finite $m$: $e^{q\cdot k} = \sum_n (q\cdot k)^n/n!$ needs the features of every degree, and
# the block has full rank, i.e. a state of one number per past key, which is the cache.

# %%
print(inspect.getsource(attention.split_rank))

# %%
Tr, Kr, t0 = 64, 4, 32
qr, kr = randn(Tr, Kr, seed=17, dtype=torch.float64), randn(Tr, Kr, seed=18, dtype=torch.float64)
causal = torch.ones(Tr, Tr, dtype=torch.float64).tril()
W_soft = torch.exp(qr @ kr.T / math.sqrt(Kr)) * causal
W_lin = (attention.elu_feature_map(qr) @ attention.elu_feature_map(kr).T) * causal
rank_soft, rank_lin = attention.split_rank(W_soft, t0), attention.split_rank(W_lin, t0)
print(f"rank of W[t >= {t0}, i < {t0}] with K = {Kr}: exp(q·k) {rank_soft}, φ(q)·φ(k) {rank_lin}")
assert rank_lin <= Kr and rank_soft == min(t0, Tr - t0)

# %% [markdown]
# With four-dimensional keys the softmax block needs all 32 past positions; linear attention
# needs four numbers per value channel. Chapter 2 runs the same test on AFT, whose weights do
# not involve the query at all, and finds the cache again.
#
# ### The family, on one map
#
# Most of the recurrent "attention" models of recent years, RWKV-5 to 7 included, are linear
# attention with $\varphi$ the identity, no denominator, and a **decay** of the state between
# tokens; they differ in what the decay is, whether the token reads the state before or after
# its own write, and whether the token's own pair gets a separate weight (a *bonus*). The book
# builds every RWKV row; the others are for orientation (their papers define them fully).
#
# | model | state update (per head, $K\times V$) | decay | output reads | bonus |
# |---|---|---|---|---|
# | softmax attention | none: a KV cache | — | — | — |
# | linear attention (Katharopoulos et al. 2020) | $S_t = S_{t-1} + \varphi(k_t) v_t^\top$ (+ normaliser $z_t$) | none | $S_t$, after the write | no |
# | RetNet (Sun et al. 2023, arXiv 2307.08621) | $S_t = \gamma S_{t-1} + k_t v_t^\top$ | constant, one $\gamma$ per head | $S_t$ | no |
# | GLA (Yang et al. 2024, arXiv 2312.06635) | $S_t = \operatorname{diag}(\alpha_t) S_{t-1} + k_t v_t^\top$ | data-dependent, per key channel | $S_t$ | no |
# | Mamba-2 (Dao & Gu 2024, arXiv 2405.21060) | $S_t = a_t S_{t-1} + k_t v_t^\top$ (their $B_t$, $x_t$) | data-dependent, one scalar per head | $S_t$ | no (a separate skip $D x_t$) |
# | RWKV-4 (ch. 3) | per channel, numerator and denominator | constant, per channel | before the write | $e^{u + k_t}$ |
# | RWKV-5 (ch. 5) | $S_t = \operatorname{diag}(w) S_{t-1} + k_t v_t^\top$ | constant, per key channel | $S_{t-1}$, before the write | $r_t^\top \operatorname{diag}(u) k_t v_t^\top$ |
# | RWKV-6 (ch. 5) | $S_t = \operatorname{diag}(e^{w_t}) S_{t-1} + k_t v_t^\top$ | data-dependent, per key channel | $S_{t-1}$ | as RWKV-5 |
# | RWKV-7 (ch. 8) | $S_t = (\operatorname{diag}(e^{w_t}) + b_t a_t^\top) S_{t-1} + k_t v_t^\top$ | data-dependent, plus a rank-one removal | $S_t$, after the write | yes, added after the norm (ch. 12) |
#
# Read-out "after the write" means $o_t = S_t^\top r_t$ (the current token's pair included with
# weight $r_t\cdot k_t$); "before" means $o_t = S_{t-1}^\top r_t$ plus the bonus, which gives the
# current token its own learned weight. Chapter 5 shows that the two are not interchangeable once
# the decay depends on the token.

# %% [markdown]
# ## Questions a careful reader asks
#
# **Is flash attention an approximation?** No. The online softmax reorganises the same sums; the
# chunked checks above agree with the float64 loop to below $10^{-6}$ (asserted; the printed errors
# are of order $10^{-7}$), the rounding level of float32.
#
# **Where exactly is the quadratic cost?** In training: the $T\times T$ scores (memory, unless
# tiled) and the $T^2(K+V)$ multiply–adds (always). In generation: the KV cache (memory linear in
# $T$ per sequence) and the $O(t)$ work per new token, so $O(T^2)$ over a whole generated text.
#
# **Is it the query that forces the cache?** No: §8 answers this with linear attention, whose
# weights depend on the query as much as softmax's do and which keeps a fixed $K\times V$
# state. What forces the cache is the exponential kernel $e^{q\cdot k}$, which no finite
# feature map factorises; §8 measures it as a rank.
#
# ## Summary
#
# - Causal softmax attention is a per-position weighted average of past values, with weights
#   from a softmax of scaled query–key dot products; the mask is the sum's upper limit.
# - The naive loop, the masked matrix form, the blocked online softmax and the Triton kernel
#   agree to float32 rounding (checked above against a float64 loop; gradients to $10^{-10}$).
# - The online softmax keeps a running max, normaliser and output per row; rescaling by
#   $e^{m-m'}$ makes blocking exact and overflow-free.
# - Memory of the score matrix and the matmul work both grow as $T^2$ (counted slope 2.00);
#   blocking removes the memory, but the $T^2$ work remains. At inference the KV cache grows
#   linearly with the context, per sequence.
# - The cache is forced by the kernel, not by the query: with $\varphi(q)\cdot\varphi(k)$ in place
#   of $e^{q\cdot k}$ (linear attention) the weights still depend on the query and a $K\times V$
#   state suffices. The rank of the past-to-future block of weights bounds any such state from
#   below: $K$ for linear attention, full for softmax.
#
# ## Exercises
#
# 1. Change `attention.chunked` so that it visits the key blocks in *reverse* order (last block
#    first). Predict whether the result changes, then check it against `attention.naive` with
#    `rwkvlab.check`.
# 2. Derive the merge rule for two partial results $(m_1, \ell_1, a_1)$ and $(m_2, \ell_2, a_2)$
#    computed on disjoint key sets, and use it to split one query's keys into two halves.
# 3. In the Triton kernel, the loop bound `hi` stops at the end of the query block. What would go
#    wrong, and what would merely be wasted, if it ran to `T` instead?
# 4. Using `largest_buffer_bytes`, measure `attention.chunked` for the same sizes as §6. What
#    slope do you expect on the log–log plot, and what do you get?
# 5. A sliding-window model keeps only the last $W$ keys in its cache. Modify the decoding loop of
#    §7 to do this, and find the first position where its output differs from `attention.parallel`.

# %% [markdown]
# Short answers to exercises 1–5 (the student edition hides them):
#
# ### BEGIN SOLUTION
# 1. The result does not change beyond float32 rounding: the merge is associative and
#    commutative, and the first block visited in reverse order (the diagonal one) gives every row
#    a finite max, so no $e^{-\infty - (-\infty)}$ ever appears.
# 2. With $m = \max(m_1, m_2)$: $\ell = e^{m_1 - m}\ell_1 + e^{m_2 - m}\ell_2$,
#    $a = e^{m_1 - m}a_1 + e^{m_2 - m}a_2$, and $o = a/\ell$.
# 3. Nothing goes wrong: a key block wholly after the query block is all $-\infty$, so
#    $m' = m$, $\alpha = 1$ and $p = 0$, and the sums are unchanged. Only work is wasted: for
#    $n$ query blocks, $n(n-1)/2$ extra tiles loaded and exponentiated, almost doubling the loop.
# 4. Slope 1: the largest buffer of `attention.chunked` is the output, $B\cdot T\cdot H\cdot V$
#    float32 numbers (measured: exactly $T \cdot 2 \cdot 32 \cdot 4$ bytes at every $T$ of §6);
#    the score tiles are only `block × block`.
# 5. Position $t = W$ (0-based), the first step at which the cache must drop key 0; before it the
#    window holds every key.
# ### END SOLUTION

# %% [markdown]
# ### Exercises that check themselves
#
# Each cell below prints its exercise's statement, holds a solution between the markers
# `### BEGIN SOLUTION` and `### END SOLUTION` (the student edition, `python -m rwkvlab exercises
# student`, puts a stub in its place), and ends with `exercises.check`, which runs the function on
# seeded random cases against the float64 loop `attention.naive` and, when the answer is wrong,
# names the case and, where it can, the mistake.
#
# 6. The masked matrix form of §3, written by you: scores, the causal mask, a softmax over the
#    keys.

# %%
import torch

from rwkvlab import exercises

print(exercises.spec("01.6"))


def causal_attention(q, k, v, scale):
    ### BEGIN SOLUTION
    T = q.shape[1]
    s = torch.einsum("bthk,bihk->bhti", q, k) * scale                # [B, H, T, T] scores
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    p = torch.softmax(s.masked_fill(future, float("-inf")), dim=-1)   # each row: weights over i <= t
    return torch.einsum("bhti,bihv->bthv", p, v)
    ### END SOLUTION


exercises.check("01.6", causal_attention)

# %% [markdown]
# 7. The heart of §4: fold one block of keys into the running max, normaliser and unnormalised
#    output of a set of query rows.

# %%
import torch

from rwkvlab import exercises

print(exercises.spec("01.7"))


def online_update(m, ell, a, s, v):
    ### BEGIN SOLUTION
    m_new = torch.maximum(m, s.amax(dim=-1))      # the max may rise with this block
    alpha = torch.exp(m - m_new)                  # rescales the old sums; exp(-inf) = 0 at the start
    p = torch.exp(s - m_new[:, None])             # masked keys give exp(-inf) = 0
    return m_new, alpha * ell + p.sum(dim=-1), alpha[:, None] * a + p @ v
    ### END SOLUTION


exercises.check("01.7", online_update)

# %% [markdown]
# 8. The same update inside the Triton kernel of §5: the loop body that loads a key block,
#    scores and masks it, and updates the running quantities in registers. The launch and the
#    store are given.

# %%
import torch
import triton
import triton.language as tl

from rwkvlab import exercises   # importing rwkvlab picks the interpreter when there is no GPU

print(exercises.spec("01.8"))


@triton.jit
def flash_fwd(q_ptr, k_ptr, v_ptr, o_ptr, T, H, K, V, scale,
              BT: tl.constexpr, BS: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    i_bh, i_t = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = i_t * BT + tl.arange(0, BT)                 # the queries this program owns
    o_k, o_v = tl.arange(0, BK), tl.arange(0, BV)
    m_t, m_k, m_v = o_t < T, o_k < K, o_v < V
    q_off = ((i_b * T + o_t[:, None]) * H + i_h) * K + o_k[None, :]
    b_q = tl.load(q_ptr + q_off, mask=m_t[:, None] & m_k[None, :], other=0.0)
    b_m = tl.full([BT], float("-inf"), dtype=tl.float32)
    b_l = tl.zeros([BT], dtype=tl.float32)
    b_acc = tl.zeros([BT, BV], dtype=tl.float32)
    hi = tl.minimum((i_t + 1) * BT, T)                # causal: no key after the block's last query
    for s0 in range(0, hi, BS):
        ### BEGIN SOLUTION
        o_s = s0 + tl.arange(0, BS)                   # the keys of this block
        m_s = o_s < T
        k_off = ((i_b * T + o_s[:, None]) * H + i_h) * K + o_k[None, :]
        v_off = ((i_b * T + o_s[:, None]) * H + i_h) * V + o_v[None, :]
        b_k = tl.load(k_ptr + k_off, mask=m_s[:, None] & m_k[None, :], other=0.0)
        b_v = tl.load(v_ptr + v_off, mask=m_s[:, None] & m_v[None, :], other=0.0)
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision="ieee") * scale
        b_s = tl.where(o_s[None, :] <= o_t[:, None], b_s, float("-inf"))   # the future of each query
        m_new = tl.maximum(b_m, tl.max(b_s, axis=1))
        alpha = tl.exp(b_m - m_new)
        b_p = tl.exp(b_s - m_new[:, None])
        b_l = b_l * alpha + tl.sum(b_p, axis=1)
        b_acc = b_acc * alpha[:, None] + tl.dot(b_p, b_v, input_precision="ieee")
        b_m = m_new
        ### END SOLUTION
    o_off = ((i_b * T + o_t[:, None]) * H + i_h) * V + o_v[None, :]
    tl.store(o_ptr + o_off, b_acc / b_l[:, None], mask=m_t[:, None] & m_v[None, :])


def flash_forward(q, k, v, scale):
    """q, k: [B, T, H, K], v: [B, T, H, V] float32 -> o [B, T, H, V]; blocks of 16 queries and keys."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    o = torch.empty(B, T, H, V, dtype=torch.float32, device=q.device)
    BK, BV = max(16, triton.next_power_of_2(K)), max(16, triton.next_power_of_2(V))
    flash_fwd[(B * H, triton.cdiv(T, 16))](q.contiguous(), k.contiguous(), v.contiguous(), o,
                                          T, H, K, V, scale, BT=16, BS=16, BK=BK, BV=BV)
    return o


exercises.check("01.8", flash_forward)
