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
# # RWKV-4's WKV: decayed biases, the bonus u, and a stable recurrence
#
# By the end of this chapter you will be able to compute RWKV-4's attention replacement, the
# **WKV** operator, four ways — as a double sum, as an RNN, chunk by chunk, and as a Triton
# kernel with its own backward pass — and you will know why the obvious RNN breaks in float32
# and what one extra number per channel does to fix it.
#
# The whole idea fits in one line. For every channel separately, the output at step $t$ is a
# weighted average of the values seen so far:
#
# $$
# wkv_t \;=\; \frac{\sum_{i=1}^{t-1} e^{-(t-1-i)\,w + k_i}\, v_i \;+\; e^{u + k_t}\, v_t}
#                  {\sum_{i=1}^{t-1} e^{-(t-1-i)\,w + k_i} \;+\; e^{u + k_t}}
# $$
#
# A past token's weight is its key $k_i$ minus a penalty that grows linearly with its age; the
# current token gets a separate **bonus** $u$ instead. Because the penalty is linear in age,
# the sums can be updated one token at a time with a state of fixed size — and that is what
# makes RWKV an RNN that trains like a transformer.
#
# Equation numbers in this chapter are those of the final (EMNLP Findings 2023) version of the
# RWKV paper (Peng et al., arXiv 2305.13048): the WKV above is **Eq. 16** (it is Eq. 14 in arXiv
# v1, the version many secondary accounts quote), and the RNN forms are in **Appendix D, Eqs. 19–28**
# (Appendix B, Eqs. 19–32 in v1).

# %%
import rwkvlab

print(rwkvlab.device.describe())

# %%
import inspect
import math

import matplotlib.pyplot as plt
import torch

from rwkvlab import aft, check, randn, rel_err, rwkv4, wkv4   # randn: seeded inputs

F64 = torch.float64


def decay_rates(C, seed=0):
    """Decay rates w >= 0 spread over [0, 2): some channels forget fast, some barely at all."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(C, generator=g, dtype=F64) * 2

# %% [markdown]
# ## 1. From AFT's pairwise bias to a decay
#
# The previous chapter ended with causal AFT-full. Written the way the RWKV paper writes it
# (its Eq. 9), each channel computes
#
# $$
# \mathrm{Attn}^+(W, K, V)_t = \frac{\sum_{i=1}^{t} e^{w_{t,i} + k_i}\, v_i}{\sum_{i=1}^{t} e^{w_{t,i} + k_i}},
# $$
#
# a softmax over past positions whose logits are the key $k_i$ plus a learned bias $w_{t,i}$
# for the pair $(t, i)$. No query meets a key: the "attention" weights depend on the key alone
# and on where it sits. The bias is a full $T\times T$ table, so computing row $t$ needs every
# past key again; no small summary of the past suffices.
#
# RWKV-4 restricts the table to one number per channel (Eq. 10):
#
# $$ w_{t,i} = -(t - i)\, w, \qquad w \ge 0 . $$
#
# Now every past weight shrinks by the *same* factor $e^{-w}$ each time $t$ advances by one,
# whatever $i$ is. So the numerator $a_t = \sum_{i\le t} e^{-(t-i)w + k_i} v_i$ obeys
# $a_t = e^{-w} a_{t-1} + e^{k_t} v_t$, and likewise the denominator. Two numbers per channel
# carry the entire past. That is the step from a transformer-like layer to an RNN.
#
# Two things change between Eq. 10 and the WKV of Eq. 16, and it is easy to miss them:
#
# * In Eq. 16 the past is decayed by $t-1-i$, not $t-i$: the newest *past* token, $i = t-1$,
#   enters undecayed as $e^{k_{t-1}}$.
# * The current token is taken out of the sum and given its own log weight $u + k_t$.
#
# Multiply numerator and denominator of Eq. 9-with-Eq. 10 by $e^{w}$: the past terms become
# $e^{-(t-1-i)w + k_i}$ and the current term becomes $e^{w + k_t}$. So **AFT with the decay
# bias is exactly WKV with $u = w$** (apart from AFT's output gate $\sigma(Q_t)$, which RWKV
# keeps as $\sigma(r_t)$ outside WKV). RWKV-4's novelty at this step is to cut $u$ loose from
# $w$, and to give each channel its own $w$ — AFT shares one bias table across all channels.
#
# Let us check the identity with the AFT module from the previous chapter. Its bias table must
# be shared by all channels, so here every channel gets the same decay $\lambda$; with
# $Q = 0$ the AFT gate is $\sigma(0) = 1/2$, which we undo.

# %%
B, T, C = 2, 12, 5
k, v = randn(B, T, C, seed=1, dtype=F64), randn(B, T, C, seed=2, dtype=F64)
lam = 0.3
y_aft = 2 * aft.naive(torch.zeros_like(k), k, v, aft.decay_bias(T, lam, dtype=F64))
w_same = torch.full((C,), lam, dtype=F64)
y_wkv, _ = wkv4.naive(k, v, w_same, u=w_same)  # u = w: the bonus AFT implicitly gives
check("AFT with bias -(t-i)w  vs  WKV with u = w", y_wkv, y_aft, 1e-12)
y_other, _ = wkv4.naive(k, v, w_same, u=w_same + 1.0)
assert rel_err(y_other, y_aft) > 1e-3  # any other u is a genuinely different operator

# %% [markdown]
# ### The paper's w and the code's time_decay
#
# The paper writes $w \ge 0$ and a per-step factor $e^{-w}$. The official RWKV-4 code stores a
# parameter `time_decay` of any sign and passes its CUDA kernel the number
# `-exp(time_decay)`, which the kernel *adds* to the log state each step. The two agree when
# $w = \exp(\texttt{time\_decay})$: the exponential keeps the paper's $w$ positive whatever the
# optimiser does. `rwkvlab.wkv4` takes the paper's $w$ and refuses a negative one (a negative
# $w$ would make old tokens weigh *more* each step); the block in the next chapter stores
# `time_decay` and calls `exp` itself. The bonus $u$ is `time_first` in the code, used as is:
# it is added to $k_t$ in the exponent, so it multiplies the current token's weight by $e^{u}$
# — it is not itself a multiplier.
#
# The paper's initialisation (its App. E) spreads `time_decay` from $-5$ to $3$ across the
# channels of a layer, with a curve that depends on depth. Converted to half-lives (the number
# of steps after which a token's weight has halved, $\ln 2 / w$), that is a remarkable range:

# %%
C_demo = 64
tm0 = rwkv4.TimeMix(C_demo, layer_id=0, n_layer=6)
half = math.log(2) / tm0.decay().detach()
assert half.max() > 100 and half.min() < 0.05  # from "about a hundred tokens" to "gone next step"
print(f"layer 0 half-lives range from {half.min():.3f} to {half.max():.0f} tokens")

fig, ax = plt.subplots(figsize=(6, 3))
for layer in (0, 3, 5):
    tm = rwkv4.TimeMix(C_demo, layer_id=layer, n_layer=6)
    w_init = tm.decay().detach()
    ax.semilogy(math.log(2) / w_init, label=f"layer {layer} of 6")
ax.set_xlabel("channel")
ax.set_ylabel("half-life (tokens)")
ax.set_title("RWKV-4 initial decay: half-life ln2 / exp(time_decay)")
ax.legend()
plt.show()

# %% [markdown]
# ## 2. The bonus u, and what the weights look like
#
# WKV is linear in $v$: $wkv_t = \sum_i \alpha_{t,i} v_i$ with weights $\alpha_{t,i} \ge 0$
# that sum to one. So we can *read the weights off* the operator: feed a value sequence that
# is one at position $i$ and zero elsewhere, and $wkv_t = \alpha_{t,i}$. With $T$ such
# sequences in a batch we get the whole $T \times T$ weight matrix of each channel, computed
# by the same code we are about to study, not by a second formula.

# %%
def weights(w, u, k=None, T=24):
    """α[c, t, i]: channel c's weight on token i at step t, read off WKV by one-hot values."""
    C = w.shape[0]
    k = torch.zeros(1, T, C, dtype=F64) if k is None else k
    onehot = torch.eye(T, dtype=F64)[:, :, None].expand(T, T, C)  # batch i holds v = e_i
    y, _ = wkv4.naive(k.expand(T, T, C), onehot, w, u)  # y[i, t, c] = α_{t,i} of channel c
    return y.permute(2, 1, 0)


ws = torch.tensor([0.0, 0.1, 0.5, 2.0], dtype=F64)
alpha = weights(ws, torch.zeros(4, dtype=F64))
assert torch.allclose(alpha.sum(-1), torch.ones(4, 24, dtype=F64))  # each row is an average
assert torch.all(alpha.triu(1) == 0)  # causal: nothing from the future
# with equal keys and u = 0, the last step's weights are a geometric series in the age
t = 23
ages = torch.arange(t - 1, -1, -1, dtype=F64)  # age t-1-i of past token i
for c, wc in enumerate(ws):
    past = torch.exp(-ages * wc)
    expected = torch.cat([past, torch.ones(1, dtype=F64)]) / (past.sum() + 1)
    assert torch.allclose(alpha[c, t, : t + 1], expected)
print("weights are causal averages; with equal keys they fall geometrically with age")

# %% [markdown]
# The picture below is row $t = 23$ of each channel's weight matrix: how much each earlier
# token contributes to the output at the last step, with all keys equal. On the left $u = 0$,
# so the current token counts like the newest past one (both have log weight $k$). The decay
# $w$ sets how quickly the curve falls to the left; $w = 0$ is a plain running mean. On the
# right the same channels get a bonus $u = 2$: the current token's weight jumps by $e^2 \approx
# 7.4$ relative to the rest, and everything else shrinks to make room.

# %%
a0, a2 = weights(ws, torch.zeros(4, dtype=F64)), weights(ws, torch.full((4,), 2.0, dtype=F64))
ratio = (a2[:, 23, 23] / a2[:, 23, 22]) / (a0[:, 23, 23] / a0[:, 23, 22])
assert torch.allclose(ratio, torch.full((4,), math.exp(2.0), dtype=F64))  # the bump is exactly e^u

fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), sharey=True)
for ax, uval in zip(axes, (0.0, 2.0)):
    a = a0 if uval == 0 else a2
    for c, wc in enumerate(ws):
        ax.plot(range(24), a[c, 23].numpy(), marker=".", label=f"w = {wc.item():g}")
    ax.set_title(f"weights at t = 23, u = {uval:g}")
    ax.set_xlabel("past token i")
axes[0].set_ylabel(r"$\alpha_{23,i}$")
axes[0].legend()
plt.show()

# %% [markdown]
# Why a separate bonus at all? Tie $u$ to $w$, as AFT does (§1), and the current token's
# advantage over the newest past token (equal keys) is fixed at $e^{w}$ (the $e^{u}$ bump
# measured above, with $u = w$): a channel that forgets fast must also single out the present
# strongly, and a channel that remembers long ($w \approx 0$) cannot make the present stand out
# at all; it is diluted among many old tokens of nearly equal weight. With $u$ free, each channel
# chooses separately *how long it remembers* ($w$) and *how much the present token stands out*
# ($u$). A strongly negative $u$ makes a channel look only at the past; a large $u$ makes it
# nearly ignore the past. The next chapter demonstrates both limits inside a block.
#
# The full matrix shows the same thing as a picture: lower-triangular (causal), a diagonal that
# is brighter or darker than its neighbours by the factor $e^{u}$, and a band whose width is set
# by $w$.

# %%
two = weights(torch.tensor([0.15, 0.6], dtype=F64), torch.tensor([-1.5, 1.5], dtype=F64), T=16)
diag, sub = two.diagonal(dim1=1, dim2=2)[:, 1:], two.diagonal(offset=-1, dim1=1, dim2=2)
assert (diag[0] < sub[0]).all() and (diag[1] > sub[1]).all()  # negative u dims, positive u lights the diagonal
fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
for ax, c, title in zip(axes, (0, 1), ("w = 0.15, u = -1.5", "w = 0.6, u = 1.5")):
    ax.imshow(two[c].numpy(), cmap="viridis")
    ax.set_title(title)
    ax.set_xlabel("token i")
    ax.set_ylabel("step t")
plt.show()

# %% [markdown]
# ## 3. The first rung: the double sum as written
#
# The reference implementation is Eq. 16 transcribed: for each step, loop over the past. It is
# quadratic in $T$ and makes no attempt to protect the exponentials; in float64 it is exact
# enough to be the yardstick for everything else. (It also accepts a state from before the
# sequence, used as one extra "token"; we come back to states below.)

# %%
print(inspect.getsource(wkv4.naive))

# %% [markdown]
# ## 4. The second rung: the RNN form
#
# Set $a_t = \sum_{i \le t} e^{-(t-i)w + k_i} v_i$ and $b_t = \sum_{i \le t} e^{-(t-i)w + k_i}$,
# the numerator and denominator *after* token $t$ has been added. Then Eq. 16 reads
# $wkv_t = (a_{t-1} + e^{u+k_t} v_t)/(b_{t-1} + e^{u+k_t})$ — the sums up to $t-1$ are exactly
# "the past, with the newest past token undecayed" — and the sums update by one decay and one
# addition. This is App. D, Eqs. 19–22:
#
# $$
# a_0 = b_0 = 0,\quad
# wkv_t = \frac{a_{t-1} + e^{u+k_t} v_t}{b_{t-1} + e^{u+k_t}},\quad
# a_t = e^{-w} a_{t-1} + e^{k_t} v_t,\quad
# b_t = e^{-w} b_{t-1} + e^{k_t}.
# $$
#
# Each step costs $O(C)$ and the state is $2C$ numbers per sequence, however long the sequence.

# %%
print(inspect.getsource(wkv4.recurrent_unstable))

# %%
B, T, C = 2, 33, 8
k, v = randn(B, T, C, seed=3), randn(B, T, C, seed=4)
w, u = decay_rates(C, seed=5).float(), randn(C, seed=6)
y_ref, _ = wkv4.naive(k.double(), v.double(), w.double(), u.double())
check("wkv4 recurrent_unstable vs naive (float32, |k| ~ 1)", wkv4.recurrent_unstable(k, v, w, u), y_ref, 1e-5)

# %% [markdown]
# ## 5. Why the exponentials overflow
#
# The RNN is exact in exact arithmetic, and it works above — with keys of size one. But it keeps
# $e^{k}$ in its state. The largest float32 is about $3.4\times10^{38} = e^{88.7}$; float16
# stops at $65504 = e^{11.1}$, and bfloat16 has float32's range but only 8 bits of mantissa.
# A trained model has no reason to keep its keys below 88 (and certainly not below 11), and
# once one $e^{k}$ is `inf`, the ratio $\infty/\infty$ is `nan` and the layer's output is gone.

# %%
assert torch.isfinite(torch.exp(torch.tensor(88.0)))
assert torch.isinf(torch.exp(torch.tensor(89.0)))
assert torch.isfinite(torch.exp(torch.tensor(11.0, dtype=torch.float16)))
assert torch.isinf(torch.exp(torch.tensor(12.0, dtype=torch.float16)))
print("exp overflows float32 above k = 88.7 and float16 above k = 11.1")

k_big = k + 100.0  # shift every key by 100: the *weights* are unchanged (a softmax ignores shifts)
y_raw = wkv4.recurrent_unstable(k_big, v, w, u)
y_naive32, _ = wkv4.naive(k_big, v, w, u)
assert not torch.isfinite(y_raw).all() and torch.isnan(y_raw).any()
assert not torch.isfinite(y_naive32).all()
y_shift, _ = wkv4.naive(k.double() + 100, v.double(), w.double(), u.double())  # e^100 ~ 2.7e43 fits float64
assert torch.isfinite(y_shift).all()
check("float64 double sum is shift-invariant: k + 100 vs k", y_shift, y_ref, 1e-12)
# the reference for the float32 runs below: the very same (rounded) float32 inputs, summed in float64
y_big_ref, _ = wkv4.naive(k_big.double(), v.double(), w.double(), u.double())
print(f"float32 raw RNN with k + 100: {torch.isnan(y_raw).float().mean():.0%} of outputs are nan")

# %% [markdown]
# The last check is the key observation: adding a constant to all keys changes *nothing* about
# the answer, because WKV is a ratio of two sums that both scale by $e^{100}$. The overflow is
# purely an artefact of storing $a$ and $b$ themselves. (Float64 only postpones the problem, to
# $k \approx 710$.)
#
# ## 6. The running-max fix (App. D, Eqs. 23–28)
#
# The cure is the one used for a numerically safe softmax, applied online: store the state
# relative to the largest exponent it contains. Keep three numbers per channel,
# $(a', b', p)$, with
#
# $$ a_t = e^{p_t} a'_t, \qquad b_t = e^{p_t} b'_t, $$
#
# where $p_t$ is the largest log weight among the tokens in the state,
# $p_t = \max_{i \le t} (k_i - (t-i)w)$. Then $b'_t \ge 1$ (the largest term contributes
# exactly one) and $|a'_t| \le b'_t \max|v|$: nothing in the state can overflow.
#
# **Output.** At step $t$ the two candidates for the largest exponent are the state's $p_{t-1}$
# and the current token's $u + k_t$. Divide numerator and denominator by $e^{q}$ with
# $q = \max(p_{t-1}, u + k_t)$:
#
# $$ wkv_t = \frac{e^{p_{t-1} - q}\, a'_{t-1} + e^{u + k_t - q}\, v_t}{e^{p_{t-1} - q}\, b'_{t-1} + e^{u + k_t - q}} . $$
#
# Both exponents are $\le 0$ and one of them is exactly $0$, so the denominator is at least one.
#
# **Update.** After one step of decay the state's exponent is $p_{t-1} - w$, and the new token
# brings $k_t$. With $q' = \max(p_{t-1} - w,\, k_t)$:
#
# $$ a'_t = e^{p_{t-1} - w - q'}\, a'_{t-1} + e^{k_t - q'}\, v_t, \quad
#    b'_t = e^{p_{t-1} - w - q'}\, b'_{t-1} + e^{k_t - q'}, \quad p_t = q' . $$
#
# The paper starts from $a'_1 = v_1, b'_1 = 1, p_1 = k_1$. We start one step earlier, from the
# empty state $a' = b' = 0$ and $p = -10^{38}$ (the value the official kernel uses): any real
# exponent minus $10^{38}$ gives $e^{\ldots} = 0$ exactly, so the first step lands on the paper's
# initial state. Here is the step, as the package runs it:

# %%
print(inspect.getsource(wkv4.step))

# %%
_, s1 = wkv4.recurrent(k[:, :1], v[:, :1], w, u, output_final_state=True)
assert torch.equal(s1.a, v[:, 0]) and torch.equal(s1.b, torch.ones(B, C)) and torch.equal(s1.p, k[:, 0])
print("one step from the empty state gives the paper's a'_1 = v_1, b'_1 = 1, p_1 = k_1")

y_stable, s_big = wkv4.recurrent(k_big, v, w, u, output_final_state=True)
assert torch.isfinite(y_stable).all() and all(torch.isfinite(x).all() for x in s_big)
check("wkv4 recurrent (stable) with k + 100 vs float64 naive", y_stable, y_big_ref, 1e-5)
check("wkv4 recurrent (stable) vs naive", wkv4.recurrent(k, v, w, u)[0], y_ref, 1e-5)

# %% [markdown]
# What the three numbers do over time, for the slowest channel of the $k + 100$ input (where the raw
# sums overflow float32): $p_t$ follows the largest log weight in the state, dropping by $w$ per
# token until a key larger than the decayed maximum arrives and resets it, while $b'_t$, the
# denominator measured relative to $e^{p_t}$, never goes below 1 and stays small. Their
# combination $p_t + \log b'_t$ is the log of the raw denominator $b_t$, checked against float64.

# %%
c0 = int(w.argmin())                                   # the slowest channel: its p_t decays between keys
st, ps, bs = wkv4.empty_state(B, C), [], []
for t in range(T):
    _, st = wkv4.step(k_big[:, t], v[:, t], w, u, st)
    ps.append(st.p[0, c0].item())
    bs.append(st.b[0, c0].item())
ps, bs = torch.tensor(ps, dtype=torch.float64), torch.tensor(bs, dtype=torch.float64)
kb, wd = k_big[0, :, c0].double(), w[c0].double()
ages = torch.arange(T)[:, None] - torch.arange(T)[None, :]                    # t - i
logw = torch.where(ages >= 0, kb[None, :] - ages * wd, torch.tensor(float("-inf"), dtype=torch.float64))
p_ref = logw.max(dim=1).values                                                 # max_{i<=t} k_i - (t-i) w
log_b_ref = torch.logsumexp(logw, dim=1)                                       # log of the raw b_t, in float64
check("p_t = max_{i<=t} (k_i - (t-i) w)", ps, p_ref, 1e-8)
check("p_t + log b'_t = log b_t (float64)", ps + bs.log(), log_b_ref, 1e-8)
assert (bs >= 1).all() and not torch.isfinite(torch.exp(log_b_ref.float())).all()
print(f"channel {c0}: p_t in [{ps.min():.1f}, {ps.max():.1f}], b'_t in [{bs.min():.2f}, {bs.max():.2f}]; "
      f"the raw b_t = e^(p_t) b'_t reaches e^{log_b_ref.max():.0f}, beyond float32")

fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.2))
a1.plot(ps.numpy(), "o-", ms=3, label="$p_t$ (stored)")
a1.plot(kb.numpy(), "x", ms=4, c="gray", label="$k_t$ (this channel's keys)")
a1.set_xlabel("token t")
a1.set_title("running exponent $p_t$")
a1.legend(fontsize=8)
a2.plot(bs.numpy(), "o-", ms=3, c="C1")
a2.axhline(1, ls=":", c="gray")
a2.set_xlabel("token t")
a2.set_title("$b'_t$ = denominator / $e^{p_t}$ (stays ≥ 1)")
plt.tight_layout()
plt.show()

# %% [markdown]
# The state is now $3C$ numbers instead of $2C$; the paper notes the extra $p$ is needed only
# because of finite precision. It also makes the state *comparable* across implementations:
# $p_t$ is a definite function of the inputs (the max of the log weights), so two correct
# implementations produce the same $(a', b', p)$, not merely the same ratio. Every rung below
# returns that final state, and every check compares it too.
#
# ### Parallel and recurrent modes compute the same thing
#
# The double sum (each output computed from scratch, in any order — the "transformer" mode) and
# the RNN (one state, carried forward) are two schedules of the same arithmetic. A state carried
# across a cut must also reproduce the uncut run: process 20 tokens, stop, hand the state over,
# process the rest.

# %%
s0 = wkv4.State(randn(B, C, seed=7), randn(B, C, seed=8).abs() + 0.5, randn(B, C, seed=9))
par = wkv4.naive(k.double(), v.double(), w.double(), u.double(), [x.double() for x in s0], True)
rec = wkv4.recurrent(k, v, w, u, s0, output_final_state=True)
check("wkv4 recurrent vs naive, from a given state (outputs and final state)", rec, par, 1e-5)
y1, mid = wkv4.recurrent(k[:, :20], v[:, :20], w, u, output_final_state=True)
y2, end = wkv4.recurrent(k[:, 20:], v[:, 20:], w, u, initial_state=mid, output_final_state=True)
full = wkv4.recurrent(k, v, w, u, output_final_state=True)
check("wkv4 in two segments vs one run", (torch.cat([y1, y2], 1), end), full, 1e-6)

# %% [markdown]
# ## 7. The third rung: chunks
#
# The RNN takes $T$ sequential steps; the double sum takes $O(T^2)$ work but no sequential
# dependence. Training wants something in between: split the sequence into chunks of $L$
# tokens, do the quadratic thing inside each chunk (in parallel, as matrix operations), and
# carry the stable state from one chunk to the next (only $T/L$ sequential steps).
#
# Inside a chunk, number the positions $i, j = 0,\dots,L-1$ and call the state carried in
# $(a', b', p)$. Position $i$ sees three kinds of terms, each with a log weight:
#
# $$
# \Lambda_{ij} = \begin{cases} k_j - (i - 1 - j)\,w & j < i \\ u + k_i & j = i \\ -\infty & j > i \end{cases}
# \qquad\text{and the state, with log weight } p - i\,w .
# $$
#
# The state enters as one more column: numerator $a'$, denominator $b'$. Subtract each row's
# maximum $m_i$ before exponentiating — that is the running-max trick again, done for a whole
# row at once — and
#
# $$ wkv_i = \frac{\sum_j e^{\Lambda_{ij} - m_i} v_j + e^{p - iw - m_i} a'}{\sum_j e^{\Lambda_{ij} - m_i} + e^{p - iw - m_i} b'} . $$
#
# At the chunk's end, every token in it has aged to $L - 1 - j$ and the old state by $L$ steps:
# the new exponent is $p_{new} = \max(p - Lw,\ \max_j\, k_j - (L-1-j)w)$, and $a', b'$ are
# re-expressed relative to it. This is the same $p$ the RNN would have reached (a max is a max,
# whichever order it is taken in), so the chunked state equals the recurrent one.

# %%
print(inspect.getsource(wkv4.chunked))

# %%
for T_try, L in ((1, 16), (33, 16), (33, 5), (40, 64)):
    kk, vv = randn(B, T_try, C, seed=10 + T_try), randn(B, T_try, C, seed=11 + T_try)
    ref = wkv4.naive(kk.double(), vv.double(), w.double(), u.double(), [x.double() for x in s0], True)
    got = wkv4.chunked(kk, vv, w, u, s0, output_final_state=True, chunk_size=L)
    check(f"wkv4 chunked (T={T_try}, L={L}) vs naive", got, ref, 1e-5)
y_chunk_big, _ = wkv4.chunked(k_big, v, w, u)
assert torch.isfinite(y_chunk_big).all()
check("wkv4 chunked with k + 100 vs float64 naive", y_chunk_big, y_big_ref, 1e-5)

# %% [markdown]
# The memory cost is $B \cdot L^2 \cdot C$ per chunk: RWKV-4 has a separate $L \times L$ weight
# matrix for every channel (its "heads" are single channels, as in AFT), so unlike the
# matrix-state models of Part II there is no matrix multiply to hand to tensor cores here — the
# chunk form buys parallelism over time, not FLOP efficiency. That is one reason the official
# RWKV-4 training code simply runs the recurrence in a CUDA kernel, one thread per (sequence, channel). We
# do the same in Triton next.
#
# ## 8. The fourth rung: a Triton kernel
#
# Channels never interact inside WKV, so the natural parallel decomposition is: one program
# per (sequence, block of `BC` channels), each walking $t = 0, \dots, T-1$ with its block's
# $(a', b', p)$ in registers. Each step loads `BC` keys and values, does the two max-shifted
# updates of §6 elementwise, and stores `BC` outputs. The picture of what one program owns:
#
# ```
#              channels →   [ block 0 ][ block 1 ] ... [ block ⌈C/BC⌉-1 ]
#   sequence 0  t = 0..T-1    prog(0,0)  prog(0,1)        ...
#   sequence 1  t = 0..T-1    prog(1,0)  prog(1,1)        ...
# ```
#
# When gradients are needed the forward kernel also stores the state *before* each step
# (three $[B, T, C]$ buffers), which the backward kernel re-reads.

# %%
print(inspect.getsource(wkv4._wkv4_fwd_kernel.fn))

# %%
T_tr = rwkvlab.device.pick(64, 1024)
C_tr = rwkvlab.device.pick(16, 256)
kt_, vt_ = randn(2, T_tr, C_tr, seed=20, scale=3.0), randn(2, T_tr, C_tr, seed=21)
wt_, ut_ = decay_rates(C_tr, seed=22).float(), randn(C_tr, seed=23)
dev = rwkvlab.device.device()
ref = wkv4.naive(kt_.double(), vt_.double(), wt_.double(), ut_.double(), output_final_state=True) \
    if T_tr <= 64 else wkv4.chunked(kt_.double(), vt_.double(), wt_.double(), ut_.double(), output_final_state=True)
got = wkv4.triton_recurrent(kt_.to(dev), vt_.to(dev), wt_.to(dev), ut_.to(dev), output_final_state=True)
# With a GPU, T = 1024: the final state's a' and b' are stored relative to p, which carries the
# rounding of 1024 float32 steps p - w, so they drift to ~2e-5 (the outputs stay near 1e-6, and the
# torch `recurrent` in float32 drifts the same). Hence a looser tolerance there.
check(f"wkv4 triton_recurrent (B=2, T={T_tr}, C={C_tr}) vs float64 reference", got, ref,
      rwkvlab.device.pick(1e-5, 1e-4))
got_big, _ = wkv4.triton_recurrent((kt_ + 100).to(dev), vt_.to(dev), wt_.to(dev), ut_.to(dev))
assert torch.isfinite(got_big).all()
# float32 keys near 100 are spaced 8e-6 apart, so rounding k + 100 alone costs a few 1e-6
check("wkv4 triton_recurrent with k + 100 vs float64 reference", got_big, ref[0], 2e-5)

# %% [markdown]
# ### The backward pass
#
# Training needs $\partial L/\partial k, v, w, u$ (and, for a state handed between segments,
# with respect to the initial state too). Walk the recurrence backwards. In the raw variables,
# with $D_t = b_{t-1} + e^{u+k_t}$ the denominator at step $t$ and $\bar g_t = \partial L /
# \partial wkv_t$:
#
# * the current-token term gives $\partial/\partial u$ and $\partial/\partial k_t$ the amount
#   $\bar g_t\, e^{u+k_t} (v_t - wkv_t)/D_t$, and $\partial/\partial v_t$ the amount $\bar g_t e^{u+k_t}/D_t$;
# * the gradients of the state satisfy their own recurrence, run backwards:
#   $\partial a_{t-1} = e^{-w} \partial a_t + \bar g_t / D_t$ and
#   $\partial b_{t-1} = e^{-w} \partial b_t - \bar g_t\, wkv_t / D_t$;
# * $a_t = e^{-w} a_{t-1} + e^{k_t} v_t$ passes $e^{k_t}\partial a_t$ to $v_t$,
#   $e^{k_t}(v_t \partial a_t + \partial b_t)$ to $k_t$, and $-e^{-w}(a_{t-1}\partial a_t + b_{t-1}\partial b_t)$ to $w$.
#
# These overflow just like the forward pass, but the same rescaling saves them: $\partial a_t$
# scales like $e^{-p_t}$, so the kernel carries $\partial a' = e^{p_t}\partial a_t$ (which is
# exactly $\partial L/\partial a'_t$), and every factor above becomes one of the bounded
# exponentials $e^{p_{t-1} - q}$, $e^{u + k_t - q}$, $e^{p_{t-1} - w - q'}$, $e^{k_t - q'}$ of
# the forward step. One more path exists: the final state's $p$ is a max, so its gradient
# travels back along whichever branch won each $\max(p_{t-1} - w, k_t)$ — to a key, or on to
# the previous step and to $w$. The kernel is one loop from $t = T-1$ down to $0$:

# %%
print(inspect.getsource(wkv4._wkv4_bwd_kernel.fn))

# %%
def grads(fn, inputs, dtype, dev="cpu"):
    """Gradients of a fixed random linear function of (y, final state) w.r.t. every input."""
    xs = [x.detach().to(dtype).to(dev).requires_grad_() for x in inputs]
    y, s = fn(*xs[:4], wkv4.State(*xs[4:]), True)
    g = torch.Generator().manual_seed(99)
    loss = (y * torch.randn(y.shape, generator=g, dtype=F64).to(dtype).to(dev)).sum()
    loss = loss + sum((x * torch.randn(x.shape, generator=g, dtype=F64).to(dtype).to(dev)).sum() for x in s)
    loss.backward()
    return [x.grad for x in xs]


Tg = 21  # odd on purpose
inputs = (randn(2, Tg, C, seed=30, scale=3.0), randn(2, Tg, C, seed=31), w, u, *s0)
g_ref = grads(wkv4.naive, [x.double() for x in inputs], F64)  # autograd through the double sum
g_chunk = grads(wkv4.chunked, inputs, torch.float32)
g_tri = grads(wkv4.triton_recurrent, inputs, torch.float32, dev)
check("wkv4 chunked grads (k, v, w, u, a0, b0, p0) vs autograd through naive", g_chunk, g_ref, 1e-5)
check("wkv4 triton_recurrent grads (k, v, w, u, a0, b0, p0) vs autograd through naive", g_tri, g_ref, 1e-5)

# %% [markdown]
# On a GPU the same kernel compiles to native code; the interpreter used on a laptop runs each
# program's loop in Python, which is why the shapes above are tiny there. The cell below runs
# a larger forward-and-backward check only where a GPU is present.

# %%
if rwkvlab.device.has_gpu():
    Bg, Tg2, Cg = 4, 2048, 512
    xs = [randn(Bg, Tg2, Cg, seed=40, scale=3.0), randn(Bg, Tg2, Cg, seed=41)]
    xs = [x.cuda().requires_grad_() for x in xs]
    wg, ug = decay_rates(Cg, seed=42).float().cuda(), randn(Cg, seed=43).cuda()
    y_c, _ = wkv4.chunked(xs[0], xs[1], wg, ug, chunk_size=32)
    (gk_c,) = torch.autograd.grad(y_c.square().sum(), xs[0])
    y_t, _ = wkv4.triton_recurrent(xs[0], xs[1], wg, ug)
    (gk_t,) = torch.autograd.grad(y_t.square().sum(), xs[0])
    # outputs: ~1e-6 apart. d/dk: the backward walks 2048 float32 steps of the recurrence, whose
    # gradients drift to ~2e-5 (autograd through the torch `recurrent` in float32 does the same),
    # while the chunked form stays near 5e-7; hence the looser tolerance on the gradient.
    check(f"wkv4 triton vs chunked on GPU (B={Bg}, T={Tg2}, C={Cg})", y_t, y_c, 1e-5)
    check("wkv4 triton vs chunked on GPU, d/dk", gk_t, gk_c, 1e-4)
else:
    print("no GPU here: the large-shape GPU check is skipped (the interpreter checks above ran)")

# %% [markdown]
# ## Summary
#
# * RWKV-4's WKV is AFT's causal weighted average with the pairwise bias replaced by a
#   per-channel linear decay, $w_{t,i} = -(t-i)w$. Because the decay is linear in age, the sums
#   update recurrently with a constant-size state; AFT with this bias is exactly WKV with $u = w$.
# * The bonus $u$ is a separate log weight for the current token: it multiplies that token's
#   weight by $e^{u}$, so each channel chooses independently how long it remembers and how much
#   the present stands out.
# * The paper's $w \ge 0$ is $\exp(\texttt{time\_decay})$ in the code; the CUDA kernel receives
#   $-\exp(\texttt{time\_decay})$.
# * The raw RNN stores $e^{k}$ and overflows in float32 for keys above about 88.7 (float16:
#   11.1). Storing the state relative to its largest exponent, $(a', b', p)$, keeps every
#   exponential at most one and gives the same answer — to float32 precision — for keys of any size.
# * Four rungs agree: the double sum (float64 reference), the stable RNN, the chunked form
#   ($L \times L$ log-weight matrices per channel, stable state between chunks), and a Triton
#   kernel whose backward pass runs the same rescaled recurrence in reverse.
#
# ## Exercises
#
# 1. Show on paper that $b'_t \ge 1$ for every $t \ge 1$ in the stable recurrence, and find an
#    input for which $b'_t$ is as large as possible. What bounds it? Check your answer with
#    `wkv4.recurrent(..., output_final_state=True)`.
# 2. With $w = 0$, WKV is a causal softmax-weighted mean whose logits are the keys. Verify
#    numerically that `wkv4.naive` with $w = 0$ matches `torch.softmax` over $k_{1..t}$ (with
#    $u$ added to the last logit).
# 3. Take $w \to \infty$. Which tokens does $wkv_t$ still see? Predict the formula, then test it
#    with $w = 10^4$.
# 4. The chunked form subtracts a row maximum taken over the *whole* row, including the state's
#    column. What goes wrong if you subtract only the maximum of the in-chunk columns? Construct
#    a state and a chunk for which it overflows.
# 5. Write a variant of the Triton forward kernel that does not store the per-step states, and a
#    backward kernel that instead *recomputes* them by running the recurrence forward first.
#    What does it cost in time and what does it save in memory? (The official RWKV-4 CUDA
#    kernel makes its own choice here; read it and compare.)
# 6. `wkv4.naive` in float64 overflows too, around $k \approx 710$. Make it overflow, then
#    confirm that `wkv4.recurrent` in float32 is still correct on the same input by comparing
#    it with the float64 reference computed on $k - 700$ (why is that allowed?).

# %% [markdown]
# **Answer to exercise 1.**
#
# ### BEGIN SOLUTION
# The largest term of $b'_t = \sum_{i \le t} e^{k_i - (t-i)w - p_t}$ has exponent $0$, so $b'_t \ge 1$;
# every term is at most one, so $b'_t \le t$, with equality exactly when all $t$ log weights
# $k_i - (t-i)w$ are equal: keys that fall by $w$ per step, $k_i = c + (t-i)w$ (with $w = 0$: equal
# keys). What bounds it is the number of tokens read; with equal keys it stays below $1/(1 - e^{-w})$.
# ### END SOLUTION

# %% [markdown]
# **Answer to exercise 2.**
#
# ### BEGIN SOLUTION
# They agree to float64 rounding (relative error about $10^{-16}$); exercise 8 below checks it for every
# $t$ at once.
# ### END SOLUTION

# %% [markdown]
# **Answer to exercise 3.**
#
# ### BEGIN SOLUTION
# Only the current token and the newest past one, which Eq. 16 does not decay: $wkv_1 = v_1$ and, for
# $t \ge 2$, $wkv_t = (e^{k_{t-1}} v_{t-1} + e^{u+k_t} v_t) / (e^{k_{t-1}} + e^{u+k_t})$; with $w = 10^4$
# this matches `wkv4.naive` to float64 rounding.
# ### END SOLUTION

# %% [markdown]
# **Answer to exercise 4.**
#
# ### BEGIN SOLUTION
# The state's term becomes $e^{p - iw - m_i}$ with $m_i$ the in-chunk maximum, and its exponent is positive
# whenever the carried state outweighs the chunk. Once $p - iw - m_i > 88.7$ it is `inf` in float32 and
# the ratio is `inf/inf = nan`: for example $p = 200$, $a' = b' = 1$ and a chunk of keys of size one
# (the heavy-state cases of exercise 9).
# ### END SOLUTION

# %% [markdown]
# **Answer to exercise 6.**
#
# ### BEGIN SOLUTION
# Keys near $720$ make $e^{k}$ overflow float64 (`inf/inf = nan`). Shifting every key by the same
# constant multiplies numerator and denominator by the same $e^{-700}$, so $wkv$ is unchanged and the
# float64 reference on $k - 700$ is exact. The float32 recurrence agrees with it to a few $10^{-5}$: near
# $720$ a float32 key is resolved only to $6 \cdot 10^{-5}$, and rounding $u + k_t$ costs about that much.
# ### END SOLUTION

# %% [markdown]
# ### Exercises that check themselves
#
# Each cell below prints its exercise's statement, holds a solution between the markers
# `### BEGIN SOLUTION` and `### END SOLUTION` (the student edition, `python -m rwkvlab exercises
# student`, replaces it with a stub), and ends with `exercises.check`, which runs the function on
# seeded random cases against an independent reference and says what is wrong if it is.
#
# 7. The stable step, by hand: one token of the stable recurrence derived above, with every exponent
#    $\le 0$.

# %%
import torch

from rwkvlab import exercises

print(exercises.spec("03.7"))


def stable_step(kt, vt, w, u, a, b, p):
    ### BEGIN SOLUTION
    q = torch.maximum(p, u + kt)                       # output: shift by the larger log weight
    e1, e2 = torch.exp(p - q), torch.exp(u + kt - q)
    y = (e1 * a + e2 * vt) / (e1 * b + e2)
    q2 = torch.maximum(p - w, kt)                      # update: decay the old state, add the token
    f1, f2 = torch.exp(p - w - q2), torch.exp(kt - q2)
    return y, f1 * a + f2 * vt, f1 * b + f2, q2
    ### END SOLUTION


exercises.check("03.7", stable_step)

# %% [markdown]
# 8. The softmax identity as code (exercise 2, done for every $t$ at once): with $w = 0$, build
#    the causal logit matrix with the bonus on its diagonal and let `torch.softmax` do the rest.

# %%
import torch

from rwkvlab import exercises

print(exercises.spec("03.8"))


def softmax_wkv(k, v, u):
    ### BEGIN SOLUTION
    T = k.shape[1]
    logits = k[:, None, :, :].expand(-1, T, -1, -1)              # [B, T(t), T(i), C]: logit k_i
    eye = torch.eye(T, dtype=torch.bool)[None, :, :, None]
    logits = torch.where(eye, logits + u, logits)                # the current token gets u + k_t
    future = torch.ones(T, T, dtype=torch.bool).triu(1)[None, :, :, None]
    alpha = torch.softmax(logits.masked_fill(future, float("-inf")), dim=2)
    return (alpha * v[:, None, :, :]).sum(2)
    ### END SOLUTION


exercises.check("03.8", softmax_wkv)

# %% [markdown]
# 9. One chunk of the chunked form (§7), state in and state out; the checker hands your state
#    from chunk to chunk, including states that outweigh every key of a chunk by $e^{200}$ (the
#    situation of exercise 4).

# %%
import torch

from rwkvlab import exercises

print(exercises.spec("03.9"))


def wkv_chunk(k, v, w, u, a, b, p):
    ### BEGIN SOLUTION
    L = k.shape[1]
    pos = torch.arange(L, dtype=k.dtype)
    age = pos[:, None] - 1 - pos[None, :]                        # i-1-j
    logw = k[:, None, :, :] - age[None, :, :, None] * w          # [B, L(i), L(j), C]
    eye = torch.eye(L, dtype=torch.bool)[None, :, :, None]
    logw = torch.where(eye, (u + k)[:, :, None, :], logw)
    logw = logw.masked_fill((age < -1)[None, :, :, None], float("-inf"))
    log_state = p[:, None, :] - pos[None, :, None] * w           # the state's column, [B, L, C]
    m = torch.maximum(logw.amax(2), log_state)                   # row max over the whole row
    e, es = torch.exp(logw - m[:, :, None, :]), torch.exp(log_state - m)
    y = ((e * v[:, None]).sum(2) + es * a[:, None]) / (e.sum(2) + es * b[:, None])
    end = k - (L - 1 - pos)[None, :, None] * w                   # log weights after the last token
    p_new = torch.maximum(end.amax(1), p - L * w)
    f, g = torch.exp(end - p_new[:, None]), torch.exp(p - L * w - p_new)
    return y, g * a + (f * v).sum(1), g * b + f.sum(1), p_new
    ### END SOLUTION


exercises.check("03.9", wkv_chunk)

# %% [markdown]
# 10. The backward pass without autograd, from the $T \times T$ weight matrix: one softmax fact,
#     $\partial wkv_t / \partial \lambda_{t,i} = \alpha_{t,i}(v_i - wkv_t)$, gives all four
#     gradients once you know where $k_i$, $u$ and $w$ appear among the log weights.

# %%
import torch

from rwkvlab import exercises

print(exercises.spec("03.10"))


def wkv_backward(k, v, w, u, gy):
    ### BEGIN SOLUTION
    T = k.shape[1]
    pos = torch.arange(T, dtype=k.dtype)
    age = (pos[:, None] - 1 - pos[None, :])[None, :, :, None]    # t-1-i, [1, T(t), T(i), 1]
    lam = k[:, None, :, :] - age * w
    eye = torch.eye(T, dtype=torch.bool)[None, :, :, None]
    lam = torch.where(eye, (u + k)[:, :, None, :], lam).masked_fill(age < -1, float("-inf"))
    alpha = torch.softmax(lam, dim=2)
    y = (alpha * v[:, None]).sum(2)
    G = gy[:, :, None] * alpha * (v[:, None] - y[:, :, None])    # dL/dlambda_{t,i}
    gk = G.sum(1)                                                # k_i is in every row t >= i
    gv = (gy[:, :, None] * alpha).sum(1)
    gw = -torch.where(age >= 0, G * age, 0.0).sum((0, 1, 2))     # past entries only
    gu = torch.where(eye, G, 0.0).sum((0, 1, 2))                 # the diagonal
    return gk, gv, gw, gu
    ### END SOLUTION


exercises.check("03.10", wkv_backward)
