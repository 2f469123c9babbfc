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
# # AFT, the Attention Free Transformer
#
# The Attention Free Transformer (Zhai et al., 2021, arXiv 2105.14103) keeps the *shape* of
# softmax attention, a weighted average of past values, but throws away the query–key dot
# product that produced the weights. RWKV-4 is built directly on it, so this chapter is the first
# real step towards RWKV. By the end of it you will be able to
#
# - derive AFT from softmax attention and say precisely what the query still does;
# - compute causal AFT-full four ways (loop, $T\times T$ form, blocked running max, Triton) and
#   check that they agree;
# - relate AFT-simple and AFT-local to AFT-full, and show numerically that AFT-local, unlike
#   windowed attention, still connects every pair of positions;
# - see which choice of position bias turns the $T\times T$ sum into a recurrence with a
#   constant-size state: the door into Chapter 3.
#
# The whole idea is one equation (the paper's Eq. 2, with the causal sum of its footnote 2):
#
# $$
# Y_t \;=\; \sigma(Q_t) \odot
# \frac{\sum_{t' \le t} \exp(K_{t'} + w_{t,t'}) \odot V_{t'}}{\sum_{t' \le t} \exp(K_{t'} + w_{t,t'})} .
# $$
#
# Here $Q_t, K_{t'}, V_{t'} \in \mathbb{R}^D$, the exponentials and the division act elementwise,
# $\sigma$ is the sigmoid, and $w \in \mathbb{R}^{T\times T}$ is a learned position bias with one
# scalar per pair $(t, t')$, shared by all $D$ channels.

# %%
import rwkvlab

print(rwkvlab.device.describe())

# %%
import inspect

import matplotlib.pyplot as plt
import torch

from rwkvlab import aft, randn   # randn: seeded inputs, the same numbers in every dtype

# %% [markdown]
# ## 1. From attention to AFT
#
# Write one head of causal softmax attention (Chapter 1) without the normalisation hidden in a
# softmax:
#
# $$ o_t = \frac{\sum_{i\le t} e^{q_t\cdot k_i}\, v_i}{\sum_{i \le t} e^{q_t \cdot k_i}} . $$
#
# The weight of position $i$ in output $t$ is $e^{q_t\cdot k_i}$: one number per *pair* of
# positions, which depends on the query. Every pair must be scored. And every key must be kept,
# but not because of the query: chapter 1 (§8) showed that linear attention, with
# $\varphi(q_t)\cdot\varphi(k_i)$ in place of $e^{q_t\cdot k_i}$, keeps query-dependent weights
# with a fixed $K\times V$ state. What needs the cache is a weight matrix whose
# past-to-future blocks have full rank, and $e^{q\cdot k}$ is one. AFT is the test of the
# converse: its weights do not involve the query at all, and with a free position bias it still
# needs every key (§7 measures the rank).
#
# AFT changes the weight in two ways.
#
# 1. **Per channel, from the key alone.** Instead of one scalar $e^{q_t\cdot k_i}$ per pair, each
#    channel $d$ gets its own weight $e^{K_{t',d}}$, which depends only on the key. The paper
#    rearranges Eq. 2 per channel (its Eq. 3, by our count: the paper's text confirms the numbers
#    of Eqs. 2 and 6 only) and reads it as "implicit attention with as many heads as feature
#    dimensions": $D$ heads of size one.
# 2. **A position bias.** Without a query, the weights would be the same for every $t$. The
#    learned bias $w_{t,t'}$ restores a dependence on *where* the output is: the weight becomes
#    $e^{K_{t'} + w_{t,t'}}$.
#
# The query survives only as a gate: $\sigma(Q_t)$ multiplies the averaged value elementwise. In
# AFT the answer to "what do I look at?" no longer depends on the query at all; only "how much of
# it do I let through?" does. Let us see that numerically first: changing $Q$ rescales each
# output entry by the ratio of the gates and changes nothing else.

# %%
B, T, D = 2, 37, 20
Q, K, V = randn(B, T, D, seed=1), randn(B, T, D, seed=2), randn(B, T, D, seed=3)
w = randn(T, T, seed=4)
Q2 = randn(B, T, D, seed=5)

Y, Y2 = aft.naive(Q, K, V, w), aft.naive(Q2, K, V, w)
rwkvlab.check("aft: Y(Q2) = Y(Q) · σ(Q2)/σ(Q)", Y2, Y * torch.sigmoid(Q2) / torch.sigmoid(Q), 1e-6)

# %% [markdown]
# ## 2. The naive rung
#
# The loop evaluates the equation for one $t$ at a time. One numerical detail is already here:
# before exponentiating, it subtracts the per-channel maximum of the logits $K_{t'} + w_{t,t'}$
# over $t'$. That factor cancels between numerator and denominator, exactly as in the softmax of
# Chapter 1, and keeps every exponent $\le 0$. In fact, per channel, AFT's weights *are* a
# softmax over $t'$ of $K_{t'} + w_{t,t'}$.

# %%
print(inspect.getsource(aft.naive))

# %% [markdown]
# By hand: the first output sees only itself, so $Y_0 = \sigma(Q_0)\odot V_0$. And with a zero
# bias and equal keys every weight is equal, so $Y_t$ is $\sigma(Q_t)$ times the running mean of
# the values.

# %%
assert torch.allclose(Y[:, 0], torch.sigmoid(Q[:, 0]) * V[:, 0])
running_mean = V.cumsum(1) / torch.arange(1, T + 1).view(1, T, 1)
rwkvlab.check("aft naive, equal keys & zero bias vs gated running mean",
              aft.naive(Q, torch.zeros_like(K), V, torch.zeros(T, T)), torch.sigmoid(Q) * running_mean, 1e-6)

# %% [markdown]
# ## 3. The parallel rung: a $T \times T \times D$ tensor of logits
#
# All at once: form $Z_{t,t',d} = K_{t',d} + w_{t,t'}$, set $Z = -\infty$ for $t' > t$, take a
# softmax over $t'$ for every $(t, d)$, and contract with $V$ over $t'$:
#
# $$ Y_{t,d} = \sigma(Q_{t,d}) \sum_{t'} \mathrm{softmax}_{t'}(Z_{t,\cdot,d})_{t'}\; V_{t',d}. $$
#
# The softmax subtracts $\max_{t'} Z_{t,t',d}$, the per-channel max of $K + w$. That matters:
# keys and biases are learned numbers, and a logit of 100 is enough to overflow float32.

# %%
print(inspect.getsource(aft.parallel))

# %%
ref64 = aft.naive(Q.double(), K.double(), V.double(), w.double())   # the float64 reference
rwkvlab.check("aft naive (fp32) vs naive (fp64)", Y, ref64, 1e-5)
rwkvlab.check("aft parallel vs naive", aft.parallel(Q, K, V, w), ref64, 1e-5)

# the stabilisation is needed: with logits of a few hundred, the unshifted formula overflows
K_hot, w_hot = K * 60, w * 60
assert not torch.isfinite(torch.exp(K_hot[:, :, None, :] + w_hot[None, :, :, None])).all()
Y_hot = aft.parallel(Q, K_hot, V, w_hot)
assert torch.isfinite(Y_hot).all()
rwkvlab.check("aft parallel, logits ~1e2, vs naive fp64", Y_hot,
              aft.naive(Q.double(), K_hot.double(), V.double(), w_hot.double()), 1e-5)

# %% [markdown]
# The "implicit attention" of Eq. 3 can be drawn. For output $t$ and channel $d$ the weights
# $a_{t,t',d} = \mathrm{softmax}_{t'}(K_{t',d} + w_{t,t'})$ form a lower-triangular matrix per
# channel, just like $P$ in Chapter 1, but every channel has its own, because each channel has
# its own keys. Below, the same bias seen through two channels' keys.

# %%
Z = K[0].T[:, None, :] + w[None]                                     # [D, T, T']: channel, t, t'
Z = Z.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
A_implicit = torch.softmax(Z, dim=-1)
assert torch.allclose(A_implicit.sum(-1), torch.ones(D, T))
assert not torch.allclose(A_implicit[0], A_implicit[1])              # one "head" per channel
Y_from_A = torch.sigmoid(Q[0]) * torch.einsum("dts,sd->td", A_implicit, V[0])
rwkvlab.check("aft via implicit per-channel attention vs naive", Y_from_A, ref64[0], 1e-5)

fig, axs = plt.subplots(1, 3, figsize=(11, 3.3))
axs[0].imshow(w.tril().numpy(), cmap="coolwarm")
axs[0].set_title("position bias w (used part)")
for ax, d in zip(axs[1:], (0, 1)):
    ax.imshow(A_implicit[d].numpy(), cmap="viridis")
    ax.set_title(f"implicit attention, channel {d}")
for ax in axs:
    ax.set_xlabel("t'")
    ax.set_ylabel("t")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 4. The chunked rung: blocks and a running max
#
# The parallel rung stores $T^2 D$ logits, far more than the $T^2$ scores of softmax attention.
# But the sum over $t'$ is a reduction, and the online-softmax trick of Chapter 1 applies
# unchanged, per $(t, d)$ instead of per $t$: walk the key blocks in order, keeping a running
# max $m$, a denominator $\sum e^{Z-m}$ and a numerator $\sum e^{Z-m}V$; when the max rises to
# $m'$, rescale both sums by $e^{m-m'}$. Only one `block × block × D` tile of logits exists at a
# time, so the memory of the *computation* drops to $O(TD)$, the figure the paper's Table 1 gives
# for AFT-full. That figure leaves out the bias itself: $w$ is a learned parameter of $T^2$ numbers
# (at $T = 4096$ as many as a $4096\times4096$ weight matrix), which is why the
# paper factorises it as $w = U U'^\top$ with $U, U' \in \mathbb{R}^{T\times d'}$ and $d' \approx 128$
# ($2Td'$ numbers; exercise 3).
#
# This rung also shows what a general bias matrix *prevents*. Blocking works because a sum can
# be split into pieces and the pieces merged. A *recurrence* needs more: a fixed-size summary of
# the past from which output $t+1$ can be computed without revisiting the keys. With an arbitrary
# $w$ there is none: row $t+1$ of the bias may weigh the past completely differently from row
# $t$, so every output must go back to every key, and the work stays $O(T^2 D)$. Section 7
# returns to this.

# %%
print(inspect.getsource(aft.chunked))

# %%
rwkvlab.check("aft chunked vs naive", aft.chunked(Q, K, V, w, block_size=16), ref64, 1e-5)
for bs in (1, 7, 64):
    rwkvlab.check(f"aft chunked (block {bs}) vs naive", aft.chunked(Q, K, V, w, block_size=bs), ref64, 1e-5)
rwkvlab.check("aft chunked, logits ~1e2, vs naive fp64", aft.chunked(Q, K_hot, V, w_hot, block_size=8),
              aft.naive(Q.double(), K_hot.double(), V.double(), w_hot.double()), 1e-5)

# %% [markdown]
# Autograd differentiates the torch rungs with respect to all four inputs, the bias included.
# The gradients agree with those of the loop to float64 rounding, and the bias above the diagonal,
# which causal AFT never reads, gets a gradient of exactly zero.

# %%
def grads(fn, *inputs, **kw):
    xs = [x.double().clone().requires_grad_() for x in inputs]
    (fn(*xs, **kw) * randn(B, T, D, seed=6, dtype=torch.float64)).sum().backward()
    return [x.grad for x in xs]


g_naive = grads(aft.naive, Q, K, V, w)
rwkvlab.check("aft parallel grads (dQ, dK, dV, dw) vs naive", grads(aft.parallel, Q, K, V, w), g_naive, 1e-10)
g_chunk = grads(aft.chunked, Q, K, V, w, block_size=8)
rwkvlab.check("aft chunked grads (dQ, dK, dV, dw) vs naive", g_chunk, g_naive, 1e-10)
assert torch.equal(g_chunk[3].triu(1), torch.zeros(T, T, dtype=torch.float64))

# %% [markdown]
# ## 5. The Triton rung
#
# The kernel is the chunked rung with one program per (batch, block of `BD` channels, block of
# `BT` queries). Each program walks the key blocks up to the end of its query block. For every
# key block it loads a `BS × BD` tile of $K$ and $V$ and a `BT × BS` tile of the bias, broadcasts
# them into a `BT × BS × BD` tile of logits, masks the future, and updates its running max,
# numerator and denominator in registers. The gate $\sigma(Q)$ is applied once, at the end.
#
# There is no `tl.dot` in it: with no query–key product, AFT-full is all elementwise work and
# reductions. (AFT-full *can* be written with two matrix products, $e^{w}\,(e^{K}\odot V)$ and
# $e^{w}\,e^{K}$, after subtracting maxima from $K$ and $w$ separately. That suits matmul
# hardware, but it can underflow when the largest key and the largest bias sit at different
# positions; a running max over $K+w$ jointly has no such failure, so this kernel uses it.) Like the attention kernel, this one is **forward
# only**; the torch rungs are the ones to train through.

# %%
print(inspect.getsource(aft._aft_fwd_kernel.fn))
print(inspect.getsource(aft.triton_chunked))

# %%
dev = rwkvlab.device.device()
Tt, Dt = rwkvlab.device.pick(64, 1024), rwkvlab.device.pick(16, 256)
Qt, Kt, Vt = (randn(1, Tt, Dt, seed=s).to(dev) for s in (7, 8, 9))
wt = randn(Tt, Tt, seed=10).to(dev)
ref_t = aft.naive(*(x.double().cpu() for x in (Qt, Kt, Vt, wt))) if Tt <= 64 else \
    aft.chunked(*(x.double() for x in (Qt, Kt, Vt, wt)), block_size=128).cpu()
rwkvlab.check("aft triton_chunked vs naive", aft.triton_chunked(Qt, Kt, Vt, wt), ref_t, 1e-5)
on_dev = lambda *xs: [x.to(dev) for x in xs]                        # kernels need tensors where they run
rwkvlab.check("aft triton_chunked, T=37 D=20 (ragged) vs naive", aft.triton_chunked(*on_dev(Q, K, V, w)), ref64, 1e-5)
rwkvlab.check("aft triton_chunked, logits ~1e2, vs naive fp64", aft.triton_chunked(*on_dev(Q, K_hot, V, w_hot)),
              aft.naive(Q.double(), K_hot.double(), V.double(), w_hot.double()), 1e-5)
assert not aft.triton_chunked(*(x.requires_grad_() for x in (Qt, Kt, Vt, wt))).requires_grad  # forward only

# %% [markdown]
# ## 6. AFT-simple and AFT-local
#
# The paper's two cheaper variants differ only in the bias.
#
# **AFT-simple** drops the bias ($w = 0$). The weights are then a softmax of $K$ over time, per
# channel, and in the paper's non-causal form every output shares one context vector:
# $Y_t = \sigma(Q_t)\odot\sum_{t'}\mathrm{softmax}_{t'}(K)_{t'}\odot V_{t'}$, computed in
# $O(TD)$. The causal form stops the sum at $t$; it is a running (numerator, denominator) pair
# per channel, which the package computes as a scan (see §7).
#
# **AFT-local** uses the learned bias only inside a window, $|t - t'| < s$, and sets it to **0**
# outside. Zero, not $-\infty$: outside the window the weight falls back to the bias-free
# $e^{K_{t'}}$, so distant tokens still contribute. In the paper's words, AFT-local "maintains
# global connectivity regardless of the window size $s$". With $s = 0$ it is AFT-simple; with
# $s \ge T$ it is AFT-full.

# %%
print(inspect.getsource(aft.local))

# %%
zero = torch.zeros(T, T)
rwkvlab.check("aft simple (causal) vs full with w = 0", aft.simple(Q, K, V), aft.naive(Q.double(), K.double(), V.double(), zero.double()), 1e-5)
Y_nc = aft.simple(Q, K, V, causal=False)
assert torch.allclose(Y_nc / torch.sigmoid(Q), (Y_nc / torch.sigmoid(Q))[:, :1].expand(B, T, D), atol=1e-6)  # one shared context
rwkvlab.check("aft simple (non-causal) at t = T-1 vs causal", Y_nc[:, -1], aft.simple(Q, K, V)[:, -1], 1e-6)
rwkvlab.check("aft local, s = 0, vs simple", aft.local(Q, K, V, w, 0), aft.simple(Q, K, V), 1e-6)
rwkvlab.check("aft local, s = T, vs full", aft.local(Q, K, V, w, T), ref64, 1e-5)

# %% [markdown]
# Global connectivity, numerically. Nudge the first value $V_0$ and measure how much each later
# output moves. For AFT-local with a window of 4 the influence never reaches zero. For windowed
# attention, which we emulate by giving every out-of-window pair a bias of $-10^4$
# ($e^{-10^4}$ is exactly 0 in float32), outputs beyond the window do not move at all.

# %%
s_win = 4
idx = torch.arange(T)
outside = (idx[:, None] - idx[None, :]).abs() >= s_win
V_nudged = V.clone()
V_nudged[:, 0] += 1.0

moved_local = (aft.local(Q, K, V_nudged, w, s_win) - aft.local(Q, K, V, w, s_win)).abs().amax(dim=(0, 2))
w_hard = torch.where(outside, torch.full_like(w, -1e4), w)
moved_window = (aft.parallel(Q, K, V_nudged, w_hard) - aft.parallel(Q, K, V, w_hard)).abs().amax(dim=(0, 2))

assert (moved_local > 0).all()                    # every output still hears token 0
assert (moved_window[s_win:] == 0).all() and (moved_window[:s_win] > 0).all()
print(f"AFT-local: smallest influence of V_0 on any output {moved_local.min():.1e}; "
      f"hard window: {int((moved_window == 0).sum())} of {T} outputs do not move")

fig, ax = plt.subplots(figsize=(5.5, 3.2))
ax.semilogy(moved_local.numpy(), "o-", ms=3, label=f"AFT-local, s = {s_win} (bias 0 outside)")
ax.semilogy(torch.where(moved_window > 0, moved_window, torch.nan).numpy(), "s-", ms=3, label="windowed attention (bias -inf outside)")
ax.axvline(s_win - 0.5, color="gray", ls=":")
ax.set_xlabel("output position t")
ax.set_ylabel("max |change in Y_t|")
ax.set_title("influence of a change to V_0")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## 7. Complexity, and the bias that becomes a recurrence
#
# The paper's Table 1, with $d$ the width and $s$ the window:
#
# | variant | time | space |
# |---|---|---|
# | AFT-simple | $O(Td)$ | $O(Td)$ |
# | AFT-full | $O(T^2 d)$ | $O(Td)$ |
# | AFT-local / AFT-conv | $O(Tsd)$, $s < T$ | $O(Td)$ |
# | softmax attention, matrix form (Chapter 1, added for comparison) | $O(T^2 d)$ | $O(T^2 + Td)$ |
#
# The space column counts activations under the blocked evaluation (our `chunked` and the
# kernel; our `parallel` rung trades that for readability). It does not count the parameters:
# AFT-full's bias alone is $T^2$ numbers, or $2Td'$ factorised, and it fixes the longest sequence
# the model can read. AFT-full is no cheaper than attention in time, and at inference it still
# needs every past key and value, because row $t$ of $w$ may weigh them all anew. A free
# $T\times T$ bias admits no recurrence, although no query is involved. Chapter 1's rank test says
# so in numbers: per channel AFT's weights are $e^{w_{t,t'}}\,e^{K_{t',d}}$, the matrix $e^{w}$ with
# its columns rescaled, so the rank of a past-to-future block is that of $e^{w}$'s block.
#
# Now restrict the bias. Let it depend only on the distance, and linearly, with a rate
# $\lambda \ge 0$:
#
# $$ w_{t,t'} = -(t - t')\,\lambda . $$
#
# Older tokens now weigh less at a fixed rate, and something remarkable happens: moving from
# output $t$ to output $t+1$ multiplies every old weight by the same factor,
# $e^{w_{t+1,t'}} = e^{-\lambda}\, e^{w_{t,t'}}$. So the numerator and denominator obey
#
# $$ \mathrm{num}_t = e^{-\lambda}\,\mathrm{num}_{t-1} + e^{K_t}\odot V_t, \qquad
#    \mathrm{den}_t = e^{-\lambda}\,\mathrm{den}_{t-1} + e^{K_t}, \qquad
#    Y_t = \sigma(Q_t)\odot \mathrm{num}_t / \mathrm{den}_t . $$
#
# The $T \times T$ sum has become an RNN whose state, $(\mathrm{num}, \mathrm{den})$, has $2D$
# numbers whatever the length; each step costs $O(D)$. In the rank test, $e^{-(t-t')\lambda} =
# e^{-t\lambda}e^{t'\lambda}$ is an outer product: every past-to-future block has rank 1, one
# number per channel for the numerator and one for the denominator. To stay finite, the package stores both
# sums divided by $e^{p}$ for a running exponent $p$, the same max-tracking as before, carried
# from step to step. With $\lambda = 0$ this is causal AFT-simple.

# %%
print(inspect.getsource(aft.decay_bias))
print(inspect.getsource(aft.recurrent))

# %%
for lam in (0.0, 0.3, 2.0):
    w_lam = aft.decay_bias(T, lam, dtype=torch.float64)
    rwkvlab.check(f"aft recurrent (λ={lam}) vs AFT-full with w = -(t-t')λ",
                  aft.recurrent(Q, K, V, torch.full((D,), lam)),
                  aft.naive(Q.double(), K.double(), V.double(), w_lam), 1e-5)

# the rank test of chapter 1 (attention.split_rank): full for a free bias, 1 for the decay bias
from rwkvlab import attention

causal = torch.ones(T, T, dtype=torch.float64).tril()
rank_free = attention.split_rank(torch.exp(w.double()) * causal, 18)
rank_decay = attention.split_rank(torch.exp(aft.decay_bias(T, 0.3, dtype=torch.float64)) * causal, 18)
W_ch0 = torch.exp(w.double()) * torch.exp(K[0, :, 0].double())[None, :] * causal   # channel 0's weights
print(f"rank of the block t >= 18, t' < 18 (T = {T}): free bias {rank_free}, channel 0 of AFT-full "
      f"{attention.split_rank(W_ch0, 18)}, decay bias {rank_decay}")
assert rank_free == attention.split_rank(W_ch0, 18) == min(18, T - 18) and rank_decay == 1

# a free bias has no such structure: the step from row t to row t+1 is not one common factor
ratios = torch.exp(w[11, :11] - w[10, :11])
assert ratios.std() > 0.1
w_dec = aft.decay_bias(T, 0.3)
ratios_dec = torch.exp(w_dec[11, :11] - w_dec[10, :11])
assert torch.allclose(ratios_dec, torch.full((11,), torch.exp(torch.tensor(-0.3)).item()))
print(f"row 11 / row 10 of e^w: free bias, spread {ratios.std():.2f}; decay bias, all equal to e^-0.3 = {ratios_dec[0]:.4f}")

# %% [markdown]
# The recurrence never uses the fact that $\lambda$ is shared by all channels. Give every
# channel its own rate $\lambda_d$ and the scan runs unchanged, but the model leaves AFT's family,
# whose bias is one scalar per pair shared by all channels: channel $d$ now sees its own bias
# $-(t-t')\lambda_d$. The check below confirms that channel by channel.
#
# That per-channel decay is exactly RWKV-4's first move (its Eq. 10, $w_{t,i} = -(t-i)w$ with
# $w \in \mathbb{R}_{\ge 0}^d$ a vector). Chapter 3 adds its second: the newest token gets a
# separate bonus $u$ instead of the decayed weight, and the sums shift by one step. The figure
# shows what each channel's decay does to the weight of the past.

# %%
lam_vec = torch.tensor([0.0, 0.1, 0.5, 2.0] * (D // 4))
Y_rec = aft.recurrent(Q, K, V, lam_vec)
for d in range(4):
    w_d = aft.decay_bias(T, lam_vec[d].item(), dtype=torch.float64)
    ref_d = aft.naive(Q[..., d:d + 1].double(), K[..., d:d + 1].double(), V[..., d:d + 1].double(), w_d)
    rwkvlab.check(f"aft recurrent, channel {d} (λ={lam_vec[d].item():g}) vs AFT-full", Y_rec[..., d:d + 1], ref_d, 1e-5)

fig, ax = plt.subplots(figsize=(5.5, 3.2))
ages = torch.arange(0, 30)
for lam in lam_vec[:4].tolist():
    ax.plot(ages.numpy(), torch.exp(-ages * lam).numpy(), "o-", ms=3, label=f"λ = {lam}")
ax.set_xlabel("age of the token, t − t'")
ax.set_ylabel("multiplier e^{w} on e^{K}")
ax.set_title("a decay bias forgets at a fixed rate per channel")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## Questions a careful reader asks
#
# **If the query only gates, how can AFT attend "to" anything?** Through the keys: a token with
# a large $K_{t',d}$ dominates channel $d$'s average for every later output, whatever the query.
# What a token is looked up *by* is decided when it is written, not when it is read. This is the
# trade that makes a recurrence possible, and RWKV keeps it in RWKV-4.
#
# **Is AFT-local a sliding window?** No. Outside the window the bias is zero, so the weight is
# $e^{K_{t'}}$, not zero; §6 measured the influence of the first token on the last one.
#
# **Why do all the rungs subtract a maximum?** Because $e^{K+w}$ overflows float32 for logits
# above about 88 and the max cancels in the ratio. The recurrence carries the max along as a third
# piece of state, which Chapter 3 meets again as RWKV-4's "numerically stable" form.
#
# ## Summary
#
# - AFT replaces the pairwise weight $e^{q_t\cdot k_i}$ by a per-channel $e^{K_{t'} + w_{t,t'}}$:
#   the key and a learned position bias decide the weights; the query only gates through
#   $\sigma(Q_t)$.
# - Causal AFT-full was computed four ways (loop, $T\times T\times D$ softmax, blocked running
#   max, Triton kernel without `tl.dot`); all agree with a float64 loop to float32 rounding, and
#   the torch rungs' gradients agree to $10^{-10}$.
# - AFT-simple ($w=0$) is a softmax of the keys over time; AFT-local sets the bias to 0 outside
#   the window and keeps global connectivity.
# - A free $T\times T$ bias allows blocking but no recurrence, although the query plays no part
#   in the weights: its past-to-future blocks have full rank. The bias
#   $w_{t,t'} = -(t-t')\lambda$ (rank 1) turns AFT-full into an RNN with a $2D$-number state; a
#   per-channel $\lambda$ is RWKV-4's decay.
# - Table 1's $O(Td)$ space is for activations; the free bias is a parameter of $T^2$ numbers
#   ($2Td'$ when factorised).
#
# ## Exercises
#
# 1. Show that AFT-full with a bias that depends only on $t'$ ($w_{t,t'} = b_{t'}$) is AFT-simple
#    with shifted keys, and check it with `aft.naive` and `aft.simple`.
# 2. Implement AFT-local in $O(TsD)$ using $e^{K+w} = e^{K} + e^{K}(e^{w} - 1)$ (the identity
#    behind the paper's AFT-conv): a global running sum plus a correction inside the window.
#    Compare with `aft.local`.
# 3. The paper factorises the bias as $w = U U'^\top$ with $U, U' \in \mathbb{R}^{T\times d'}$
#    ($d' \approx 128$), i.e. $w_{t,t'} = U_t \cdot U'_{t'}$. Does a rank-one $w$ admit a recurrence?
#    (Hint: compare rows $t$ and $t+1$ of $e^w$.)
# 4. Modify `aft.recurrent` to run *without* the running exponent $p$ and find, with
#    `rwkvlab.check`, the smallest key scale at which it fails in float32.
# 5. In `_aft_fwd_kernel`, what does each program load more than once, across programs that
#    share a batch and query block? Propose a grid that avoids it and say what it costs.

# %% [markdown]
# Short answers to exercises 1 and 3 (the student edition hides them):
#
# ### BEGIN SOLUTION
# 1. With $w_{t,t'} = b_{t'}$ every logit is $K_{t'} + b_{t'}$, whatever $t$: AFT-full is
#    AFT-simple with the keys $K_{t'} + b_{t'}$, i.e.
#    `aft.naive(Q, K, V, b.expand(T, T))` equals `aft.simple(Q, K + b[:, None], V)`.
# 3. Not in general. Rows $t+1$ and $t$ of $e^{w}$ differ by the factor
#    $e^{(U_{t+1} - U_t)\,U'_{t'}}$, which changes with $t'$ unless $U_{t+1} = U_t$ or $U'$ is
#    constant, and in both of those cases the bias only shifts the keys or cancels (exercise 1).
#    So no single factor carries $\mathrm{num}_t, \mathrm{den}_t$ to step $t+1$.
# ### END SOLUTION

# %% [markdown]
# ### Exercises that check themselves
#
# Each cell below prints its exercise's statement, holds a solution between the markers
# `### BEGIN SOLUTION` and `### END SOLUTION` (the student edition, `python -m rwkvlab exercises
# student`, puts a stub in its place), and ends with `exercises.check`, which runs the function on
# seeded random cases against a float64 reference from the package and, when the answer is wrong,
# names the case and, where it can, the mistake.
#
# 6. Causal AFT-full in the $T\times T\times D$ form of §3: logits, the causal mask, a softmax
#    over $t'$ per channel, the gate.

# %%
import torch

from rwkvlab import exercises

print(exercises.spec("02.6"))


def aft_full(q, k, v, w):
    ### BEGIN SOLUTION
    T = q.shape[1]
    z = k[:, None, :, :] + w[None, :, :, None]                   # [B, t, t', D] logits
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    a = torch.softmax(z.masked_fill(future[None, :, :, None], float("-inf")), dim=2)  # over t'
    return torch.sigmoid(q) * torch.einsum("btsd,bsd->btd", a, v)
    ### END SOLUTION


exercises.check("02.6", aft_full)

# %% [markdown]
# 7. The recurrence of §7 with one decay rate per channel, kept finite by a running exponent.

# %%
import torch

from rwkvlab import exercises

print(exercises.spec("02.7"))


def aft_recurrent(q, k, v, lam):
    ### BEGIN SOLUTION
    B, T, D = q.shape
    num, den = torch.zeros(B, D), torch.zeros(B, D)      # stored divided by e^p
    p = torch.full((B, D), float("-inf"))
    ys = []
    for t in range(T):
        p_new = torch.maximum(p - lam, k[:, t])           # the larger of the decayed state and the token
        a, b = torch.exp(p - lam - p_new), torch.exp(k[:, t] - p_new)
        num, den, p = a * num + b * v[:, t], a * den + b, p_new
        ys.append(torch.sigmoid(q[:, t]) * num / den)
    return torch.stack(ys, dim=1)
    ### END SOLUTION


exercises.check("02.7", aft_recurrent)

# %% [markdown]
# 8. AFT-local of §6: the bias inside the window, zero outside it.

# %%
import torch

from rwkvlab import aft, exercises

print(exercises.spec("02.8"))


def aft_local(q, k, v, w, s):
    ### BEGIN SOLUTION
    idx = torch.arange(q.shape[1], device=w.device)
    inside = (idx[:, None] - idx[None, :]).abs() < s
    return aft.parallel(q, k, v, torch.where(inside, w, torch.zeros_like(w)))
    ### END SOLUTION


exercises.check("02.8", aft_local)
