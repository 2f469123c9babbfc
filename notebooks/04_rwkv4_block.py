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
# # Token shift, channel mixing and the RNN mode: the RWKV-4 block
#
# The previous chapter built RWKV-4's WKV operator. This one puts it into a block and a small
# language model. At the end you will be able to:
#
# * write RWKV-4's token shift and both of its mixing sub-blocks from the equations;
# * run a (randomly initialised) RWKV-4 model over a whole sequence at once, *and* token by token
#   as an RNN with a state of constant size, and show the two agree;
# * answer, each with an experiment, the four questions a careful reader of the RWKV paper asks:
#   what is $u$; why is the second sub-block called *channel* mixing; why time mixing and then
#   channel mixing; and how does the whole thing run recurrently at inference.
#
# The whole idea in one picture — a residual stream with two sub-blocks, each of which first
# blends every token with the one before it:
#
# ```
#  x ──► LN₁ ──► token shift ──► r, k, v ──► WKV (across time, per channel) ──► σ(r)⊙ ──► W_o ──►(+)──►
#  │                                                                                          ▲      │
#  └──────────────────────────────────────────────────────────────────────────────────────────┘      │
#  ┌─────────────────────────────────────────────────────────────────────────────────────────────────┘
#  x ──► LN₂ ──► token shift ──► r', k' ──► W'_v·max(k', 0)²  (across channels, per token) ──► σ(r')⊙ ──►(+)──►
#  │                                                                                                   ▲
#  └───────────────────────────────────────────────────────────────────────────────────────────────────┘
# ```
#
# Equation numbers are those of the final (EMNLP Findings 2023) version of the RWKV paper (Peng
# et al., arXiv 2305.13048), with arXiv v1's numbers in brackets where they differ; many
# secondary accounts quote v1.

# %%
import rwkvlab

print(rwkvlab.device.describe())

# %%
import copy
import inspect

import matplotlib.pyplot as plt
import torch

from rwkvlab import check, randn, rel_err, rwkv4, wkv4   # randn: seeded inputs
from rwkvlab.model import x040   # the RWKV-4 language model, beside x060 and x070

# %% [markdown]
# ## 1. Token shift
#
# Before either sub-block computes anything, every token's input is blended with the previous
# token's input, channel by channel, with learned weights. For the time-mixing sub-block
# (Eqs. 11–13):
#
# $$
# r_t = W_r\,(\mu_r \odot x_t + (1-\mu_r)\odot x_{t-1}),\quad
# k_t = W_k\,(\mu_k \odot x_t + (1-\mu_k)\odot x_{t-1}),\quad
# v_t = W_v\,(\mu_v \odot x_t + (1-\mu_v)\odot x_{t-1}),
# $$
#
# and for the channel-mixing sub-block the same with its own $\mu'_r, \mu'_k$ (Eqs. 14–15
# [v1: 16–17]). In RWKV-4, $\mu$ weights the **current** token. Later papers (RWKV-5/6/7) write
# the same operation as $\mathrm{lerp}(x_t, x_{t-1}, \mu) = x_t + (x_{t-1} - x_t)\odot\mu$, where
# $\mu$ weights the *previous* token; the two conventions are related by $\mu \mapsto 1-\mu$.
# Code ported between versions breaks silently if this is missed.
#
# The shift itself is the whole sequence moved down one place, with a zero (or, in RNN mode, the
# last input of the previous segment) in front. The package function returns that last input too,
# because the next segment will need it:

# %%
print(inspect.getsource(rwkv4.token_shift))
print(inspect.getsource(rwkv4.mix))

# %%
x = randn(1, 6, 4, seed=1)
x_prev, x_last = rwkv4.token_shift(x)
assert torch.equal(x_prev[:, 1:], x[:, :-1]) and torch.equal(x_prev[:, 0], torch.zeros(1, 4))
assert torch.equal(rwkv4.mix(x, x_prev, torch.ones(4)), x)  # μ = 1: only the current token
assert torch.equal(rwkv4.mix(x, x_prev, torch.zeros(4)), x_prev)  # μ = 0: only the previous one
print("token shift moves the sequence by one; mu = 1 keeps the current token, mu = 0 the previous")

# %% [markdown]
# Token shift is a causal convolution of width two, one per channel. It gives every projection
# a little local context — in particular it lets a head form a key from *two* consecutive tokens
# (think of the bigram "New York"), which a single-token key cannot express — and it costs
# almost nothing.
#
# ### Is there state?
#
# It is often said of token shift that it has no state. That is true in the parallel
# ("transformer") mode, where $x_{t-1}$ is simply the previous row of the input. It is not true
# once you run the model as an RNN: to process token $t$ alone you must have *remembered*
# $x_{t-1}$ — one vector of $C$ numbers per sub-block per layer. That vector is state, just a
# very small one. The experiment: split a sequence in two and process the second half on its own.
# Without the carried vector the first output of the second half is wrong; with it everything
# matches.

# %%
torch.manual_seed(0)
cm = rwkv4.ChannelMix(8)
x = randn(1, 10, 8, seed=2)
with torch.no_grad():
    whole, _ = cm(x)
    first, carried = cm(x[:, :5])
    forgot, _ = cm(x[:, 5:])  # no state handed over: position 5 sees zeros as its "previous"
    kept, _ = cm(x[:, 5:], last=carried)
assert rel_err(forgot[:, 0], whole[:, 5]) > 1e-2  # wrong without the remembered x_{t-1}
assert torch.allclose(forgot[:, 1:], whole[:, 6:])  # ...and only there
check("channel mix in two segments, carrying x_prev, vs one run", torch.cat([first, kept], 1), whole, 1e-6)

# %% [markdown]
# ## 2. The two sub-blocks
#
# **Time mixing** (Eqs. 11–13, 16–17 [v1: 11–15]): token-shifted projections $r, k, v$, the WKV
# operator of the previous chapter across time, then a sigmoid gate and an output projection,
#
# $$ o_t = W_o\,(\sigma(r_t) \odot wkv_t). $$
#
# $r$ is called the *receptance*: $\sigma(r_t) \in (0,1)$ decides, channel by channel, how much
# of the weighted average of the past this position lets through. It plays the query's role
# only loosely — it never meets a key. WKV takes the paper's decay $w = \exp(\texttt{time\_decay})$
# and the bonus $u = \texttt{time\_first}$, initialised as in the paper's App. E.

# %%
print(inspect.getsource(rwkv4.TimeMix.rkv))
print(inspect.getsource(rwkv4.TimeMix.forward))

# %% [markdown]
# **Channel mixing** (Eqs. 14–15, 18 [v1: 16–18]): token-shifted $r'$ and $k'$, a squared ReLU
# on a hidden layer four times wider than the model, and again a sigmoid gate:
#
# $$ o'_t = \sigma(r'_t) \odot \big(W'_v\, \max(k'_t, 0)^2\big). $$

# %%
print(inspect.getsource(rwkv4.ChannelMix.mixed))

# %% [markdown]
# **The block** adds each sub-block's output to a residual stream; each sub-block reads the
# stream through its own LayerNorm (pre-LN: $x \leftarrow x + f(\mathrm{LN}(x))$). The first block
# also normalises the embeddings (LN₀), as in the official code. The
# model is embedding → blocks → LayerNorm → head. The two sub-blocks are this chapter's pieces
# (`rwkvlab.rwkv4`); the block and the model that stack them sit with the RWKV-6 and RWKV-7
# models, as `rwkvlab.model.x040` (`Block`, `RWKV4`). We build a small one with random weights:
# nothing here depends on training.

# %%
print(inspect.getsource(x040.Block.forward))

# %%
model = x040.RWKV4(vocab=32, C=16, n_layer=2, seed=0)
idx = torch.randint(0, 32, (2, 12), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    logits, state = model(idx)
    dev = rwkvlab.device.device()  # the Triton kernel wants CUDA tensors when there is a GPU
    logits_tr, state_tr = copy.deepcopy(model).to(dev)(idx.to(dev), impl="triton_recurrent")
    logits_naive, _ = model(idx, impl="naive")
assert logits.shape == (2, 12, 32)
check("rwkv4 model, WKV by Triton vs chunked", (logits_tr, [list(s) for s in state_tr]), (logits, [list(s) for s in state]), 1e-5)
check("rwkv4 model, WKV by chunked vs the double sum", logits, logits_naive, 1e-5)
print(f"parameters: {sum(p.numel() for p in model.parameters())}")

# %% [markdown]
# ## 3. Question 1 — what is $u$?
#
# > what is $u$ in equation 14?  *(v1's Eq. 14 is the final version's Eq. 16)*
#
# $u$ is the **bonus for the current token**: a per-channel number added to the current token's
# key *in the exponent*. In WKV every past token $i$ enters with log weight
# $k_i - (t-1-i)w$, and the current token with $u + k_t$. So the current token's weight is
# multiplied by $e^{u}$ relative to what an undecayed past token with the same key would get. It
# exists because the decay alone would force a channel's treatment of "now" to follow from its
# memory length (the previous chapter showed that AFT with the decay bias is WKV with $u$ tied to
# $w$). In the official code it is the parameter `time_first`, initialised to
# $\log 0.3 + \{-0.5, 0, 0.5\}$ in a zigzag over channels: at the start of training the present
# counts for about 0.18, 0.3 or 0.49 times a fresh past token with the same key.
#
# Two limits make it concrete. Take the keys and values a real (random) time-mixing sub-block
# produces, and read off the weight the current token gets in the average — WKV is linear in
# $v$, so that weight is the change of $wkv_t$ when $v_t$ alone grows by one:
#
# * $u \to -\infty$ (here $-30$): the current token's weight vanishes; the channel sees only the past.
# * $u \to +\infty$ (here $+30$): the current token's weight goes to one; the past is ignored.

# %%
tm = model.blocks[0].att
with torch.no_grad():
    xin = model.blocks[0].ln1(model.blocks[0].ln0(model.emb(idx)))
    r, k, v = tm.rkv(xin, rwkv4.token_shift(xin)[0])


def diag_weight(u):
    """α_{t,t} for every (b, t, c), exactly: perturb v at position t only and look at wkv_t."""
    T = v.shape[1]
    out = torch.empty_like(v)
    for t in range(T):
        dv = torch.zeros_like(v)
        dv[:, t] = 1.0
        y0, _ = wkv4.chunked(k, v, tm.decay().detach(), u)
        y1, _ = wkv4.chunked(k, v + dv, tm.decay().detach(), u)
        out[:, t] = (y1 - y0)[:, t]  # linear in v: the change is exactly α_{t,t}
    return out


u_paper = tm.time_first.detach()
bonus = torch.exp(u_paper).unique()  # the factor e^u on the current token's weight, at init
assert torch.allclose(bonus, 0.3 * torch.exp(torch.tensor([-0.5, 0.0, 0.5])))
print("e^u at initialisation:", [round(b, 2) for b in bonus.tolist()])
alpha_paper = diag_weight(u_paper)
alpha_neg = diag_weight(torch.full_like(u_paper, -30.0))
alpha_pos = diag_weight(torch.full_like(u_paper, 30.0))
assert torch.allclose(alpha_paper[:, 0], torch.ones_like(alpha_paper[:, 0]), atol=1e-5)  # t = 0: no past yet
assert alpha_neg[:, 1:].max() < 1e-6  # u → -∞: the current token is invisible
assert alpha_pos[:, 1:].min() > 1 - 1e-5  # u → +∞: only the current token counts
print(f"current-token weight (t >= 1): u = -30: max {alpha_neg[:, 1:].max():.1e};  "
      f"paper init: mean {alpha_paper[:, 1:].mean():.2f};  u = +30: min {alpha_pos[:, 1:].min():.6f}")

# %% [markdown]
# (At $t = 0$ there is no past, so the current token gets all the weight whatever $u$ is.)
#
# And the effect on the model's output: with $u = -30$ in every channel of every layer, the
# logits at position $t$ no longer depend on the *value* computed from token $t$ inside WKV — yet
# they still depend on token $t$ through $\sigma(r_t)$, the token shift into later positions and
# the channel mix. The WKV contribution of the present is gone; the rest of the block is not.

# %%
model_past = x040.RWKV4(vocab=32, C=16, n_layer=2, seed=0)
with torch.no_grad():
    for blk in model_past.blocks:
        blk.att.time_first.fill_(-30.0)
    y_past, _ = model_past(idx)
    idx2 = idx.clone()
    idx2[:, 5] = (idx2[:, 5] + 1) % 32  # change one token
    y_past2, _ = model_past(idx2)
assert rel_err(y_past2[:, 5], y_past[:, 5]) > 1e-3  # position 5 still reacts to its own token
assert torch.allclose(y_past2[:, :5], y_past[:, :5])  # and, causally, nothing before it does
print("with u = -30 the present still reaches the output through the gate and the channel mix")

# %% [markdown]
# ## 4. Question 2 — why is it called *channel* mixing?
#
# > Why are equation 16–18 called channel-mixing?  *(v1 numbering; final version Eqs. 14–15, 18)*
#
# Because it mixes information **across channels, within a position**, and (apart from the
# one-step token shift) not across positions. Every operation in Eqs. 14–15 and 18 other than
# the token shift is either a matrix acting on one token's channel vector ($W'_r, W'_k, W'_v$) or
# an elementwise function of it. Time
# mixing is the opposite: its core, WKV, moves information **across time, within a channel** —
# it is a separate weighted average for every channel, and channel $c$'s output never sees
# channel $c'$'s keys or values.
#
# Two perturbation experiments make the distinction exact.
#
# *Across time.* Perturb the channel-mix input at token $j = 4$. Only outputs $4$ and $5$
# change: $5$ because its token shift reads $x_4$. Do the same to WKV's inputs and every output
# from $4$ on changes.

# %%
ffn = model.blocks[0].ffn
x = randn(1, 10, 16, seed=3)
dx = torch.zeros_like(x)
dx[:, 4] = randn(16, seed=4)
with torch.no_grad():
    moved = (ffn(x + dx)[0] - ffn(x)[0]).abs().amax(-1)[0]
    y0, _ = wkv4.chunked(x, x, tm.decay(), tm.time_first)
    y1, _ = wkv4.chunked(x + dx, x + dx, tm.decay(), tm.time_first)
    moved_wkv = (y1 - y0).abs().amax(-1)[0]
assert (moved > 0).nonzero().flatten().tolist() == [4, 5]
assert (moved_wkv > 0).nonzero().flatten().tolist() == list(range(4, 10))
print("channel mix: a change at token 4 moves outputs", (moved > 0).nonzero().flatten().tolist())
print("WKV:         a change at token 4 moves outputs", (moved_wkv > 0).nonzero().flatten().tolist())

# %% [markdown]
# *Across channels.* Perturb one channel ($c = 3$) at token 4. The channel mix's output at
# token 4 changes in every channel; WKV's output changes in channel 3 only (at every later
# step).

# %%
dx = torch.zeros_like(x)
dx[:, 4, 3] = 1.0
with torch.no_grad():
    ch_moved = (ffn(x + dx)[0] - ffn(x)[0])[0, 4].abs()
    y1, _ = wkv4.chunked(x + dx, x + dx, tm.decay(), tm.time_first)
    wkv_moved = (y1 - y0)[0].abs()
assert (ch_moved > 0).all()  # all 16 channels of token 4
assert (wkv_moved[:, [c for c in range(16) if c != 3]] == 0).all() and (wkv_moved[4:, 3] > 0).all()
print(f"channel mix: one channel changed at token 4 moves {(ch_moved > 0).sum().item()} of 16 output channels")
print(f"WKV:         one channel changed at token 4 moves {(wkv_moved.amax(0) > 0).sum().item()} of 16 output channels")

# %% [markdown]
# So the names describe *what crosses*: time mixing is the only place information crosses
# positions (by more than one step); channel mixing is where channels are combined, position
# by position. (Time mixing does combine channels too, through $W_r, W_k, W_v$ and $W_o$ — but
# only before and after the per-channel WKV, never inside it.)
#
# ## 5. Question 3 — why time mixing, then channel mixing?
#
# > What are the intuition behind the time-mixing and followed by channel-mixing?
#
# It is the transformer's division of labour: **attention, then MLP**. The first sub-block
# gathers information from other positions into each position ("what came before that matters
# for me?"); the second transforms each position's now-enriched vector on its own ("what do I
# compute from what I have?"). The MLP can only work with what is already at its position, so
# it comes after the gathering; stacking blocks alternates the two, so each layer's gathering
# can use what the previous layer computed. RWKV-4 keeps this structure and replaces softmax
# attention with WKV, and the MLP with a gated squared-ReLU MLP plus a token shift.
#
# The Jacobian shows it as a picture. For a short sequence, compute $\partial o_t/\partial x_j$
# for each sub-block and plot its size for every pair $(t, j)$:
#
# * time mixing: a full lower triangle — every output depends on every earlier input;
# * channel mixing: two diagonals — each output depends on its own token and the one before.
#
# And for one position, the channel-to-channel block of $\partial o/\partial v$ of WKV alone is
# diagonal, while the channel mix's $\partial o'_t/\partial x_t$ is a dense $C\times C$ matrix —
# with one empty column: the initialisation's ramp sets $\mu'_k = \mu'_r = 0$ in channel 0, so
# that channel of $x_t$ reaches the channel mix only through the *next* position's token shift.

# %%
Tj = 10
xj = randn(1, Tj, 16, seed=5)
blk = model.blocks[1]  # a block without LN₀, so its sub-blocks are exactly the two mixes


def time_mix_fn(z):
    return blk.att(z, impl="chunked")[0]


def chan_mix_fn(z):
    return blk.ffn(z)[0]


J_tm = torch.autograd.functional.jacobian(time_mix_fn, xj)[0, :, :, 0]  # [T, C, T, C]
J_cm = torch.autograd.functional.jacobian(chan_mix_fn, xj)[0, :, :, 0]
vj = randn(1, Tj, 16, seed=6)
J_wkv = torch.autograd.functional.jacobian(lambda vv: wkv4.chunked(xj, vv, tm.decay(), tm.time_first)[0], vj)[0, :, :, 0]

time_tm = J_tm.abs().sum(dim=(1, 3))  # [T(out), T(in)]
time_cm = J_cm.abs().sum(dim=(1, 3))
chan_wkv = J_wkv[6, :, 6, :].abs()  # [C(out), C(in)] at one position
chan_cm = J_cm[6, :, 6, :].abs()

t_idx, j_idx = torch.meshgrid(torch.arange(Tj), torch.arange(Tj), indexing="ij")
assert (time_tm[j_idx > t_idx] == 0).all() and (time_tm[j_idx <= t_idx] > 0).all()  # full causal triangle
band = (t_idx == j_idx) | (t_idx == j_idx + 1)
assert (time_cm[~band] == 0).all() and (time_cm[band] > 0).all()  # two diagonals only
assert (chan_wkv - torch.diag(chan_wkv.diagonal())).abs().max() == 0  # WKV: no channel crosses
# channel mix: every channel reaches every channel — except input channel 0, whose initial μ' is
# exactly 0 (the official code's initial ramp starts there): x_t's channel 0 is used only at t+1
assert (chan_cm[:, 1:] > 0).all() and (chan_cm[:, 0] == 0).all()
assert (blk.ffn.time_mix_k[0] == 0) and (blk.ffn.time_mix_r[0] == 0)
print("time mix: causal triangle over tokens; channel mix: two diagonals over tokens, dense over channels")

fig, axes = plt.subplots(1, 4, figsize=(14, 3.4))
for ax, m, title, xl, yl in (
        (axes[0], time_tm, "time mix: |∂o_t/∂x_j|", "input token j", "output token t"),
        (axes[1], time_cm, "channel mix: |∂o'_t/∂x_j|", "input token j", "output token t"),
        (axes[2], chan_wkv, "WKV at t=6: |∂wkv/∂v| (channels)", "input channel", "output channel"),
        (axes[3], chan_cm, "channel mix at t=6 (channels)", "input channel", "output channel")):
    ax.imshow(((m > 0).float() * (0.2 + m / m.max())).numpy(), cmap="magma")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
plt.tight_layout()
plt.show()

# %% [markdown]
# With the token shift switched off ($\mu'_r = \mu'_k = 1$), channel mixing is literally a
# per-position function: applying it to the whole sequence equals applying it to each token
# alone — the definition of an MLP in a transformer.

# %%
ffn_local = rwkv4.ChannelMix(16)
with torch.no_grad():
    ffn_local.time_mix_k.fill_(1.0)
    ffn_local.time_mix_r.fill_(1.0)
    seq, _ = ffn_local(xj)
    one_by_one = torch.stack([ffn_local.mixed(xj[:, t], torch.zeros_like(xj[:, t])) for t in range(Tj)], 1)
check("channel mix with mu' = 1: whole sequence vs one token at a time", seq, one_by_one, 1e-6)

# %% [markdown]
# Two more parts of the answer. **The alternation runs through depth.** A time mix can only
# form, per channel, a weighted average of that channel's past values (the Jacobian above is
# diagonal over channels), gated by $\sigma(r)$; anything that needs a *nonlinear* function of
# several channels of one token before it is gathered (a conjunction of two features of the
# previous token, say) must be computed by a channel mix in the block below. So in a stack the
# two take turns: block $\ell$'s channel mix computes features of what block $\ell$'s time mix
# gathered, and block $\ell + 1$'s time mix gathers those features across time. That is also
# the transformer's pattern, and the reason neither sub-block is repeated twice in a row.
#
# **The channel mix is a gated MLP.** Written out,
#
# $$ o'_t = \sigma\big(x^{r}_t W'_r\big) \odot \big(\max(x^{k}_t W'_k, 0)^2\, W'_v\big), $$
#
# a two-layer MLP with a squared-ReLU activation (the activation Primer found, So et al. 2021,
# arXiv 2109.08668) whose *output* is gated by a sigmoid of a third projection, the
# receptance. It resembles the gated MLPs of GLU variants such as GeGLU and SwiGLU (Shazeer
# 2020, arXiv 2002.05202), which gate the *hidden* layer, $(\mathrm{act}(xW)\odot xV)\,W_2$; RWKV's
# gate sits on the $C$ outputs instead, so it costs $C^2$ extra weights rather than $C\cdot F$.
# The cell recomputes one channel mix from its three weight matrices and counts them.

# %%
ffn = model.blocks[1].ffn
x_now, x_before = randn(3, 16, seed=7), randn(3, 16, seed=8)
xk = ffn.time_mix_k * x_now + (1 - ffn.time_mix_k) * x_before           # RWKV-4's mix: μ weights x_t
xr = ffn.time_mix_r * x_now + (1 - ffn.time_mix_r) * x_before
by_hand = torch.sigmoid(xr @ ffn.receptance.weight.T) * (torch.relu(xk @ ffn.key.weight.T) ** 2 @ ffn.value.weight.T)
check("channel mix = sigmoid(x_r W'_r) * relu(x_k W'_k)^2 W'_v", ffn.mixed(x_now, x_before), by_hand, 1e-6)
C_ffn, F_ffn = 16, ffn.key.out_features
n_ffn = sum(p.numel() for n, p in ffn.named_parameters() if n.endswith("weight"))
assert n_ffn == 2 * C_ffn * F_ffn + C_ffn**2
print(f"channel-mix weights: {n_ffn} = 2·C·F + C² (C = {C_ffn}, F = {F_ffn}); a GeGLU of the same F: "
      f"3·C·F = {3 * C_ffn * F_ffn}")

# %% [markdown]
# ## 6. Question 4 — how do they run recurrently at inference?
#
# > How to make them recursively running during inference?
#
# Each piece of the block needs something from the past, and in each case it is a fixed-size
# summary:
#
# | piece | needs from the past | RNN state per layer |
# | --- | --- | --- |
# | time-mix token shift | $x_{t-1}$ after LN₁ | $C$ numbers |
# | WKV | all past $k_i, v_i$, decayed | $(a', b', p)$: $3C$ numbers (App. D) |
# | channel-mix token shift | $x'_{t-1}$ after LN₂ | $C$ numbers |
# | LayerNorms, projections, gates, MLP | nothing | — |
#
# That is the paper's "5DL" state: five vectors of width $D = C$ per layer, whatever the
# sequence length (4 in exact arithmetic; $p$ is there for floating point). One RNN step takes a
# token and the state and returns the logits and the next state, touching each weight once:
# $O(C^2)$ per token per layer. A transformer pays the same for its projections, *plus* an
# $O(tC)$ read of its KV cache that grows with the position $t$. The step of one block:

# %%
print(inspect.getsource(x040.Block.step))
print(inspect.getsource(rwkv4.TimeMix.step))

# %%
T_rnn = rwkvlab.device.pick(24, 256)
idx = torch.randint(0, 32, (2, T_rnn), generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    logits_par, state_par = model(idx)  # parallel mode: the whole sequence at once
    state_rnn, outs, sizes = None, [], set()
    for t in range(T_rnn):  # RNN mode: one token at a time, carrying the state
        o, state_rnn = model.step(idx[:, t], state_rnn)
        outs.append(o)
        sizes.add(sum(x.numel() for layer in state_rnn for x in layer))
logits_rnn = torch.stack(outs, 1)
check(f"rwkv4 RNN mode vs parallel mode, logits over T={T_rnn}", logits_rnn, logits_par, 1e-5)
check("rwkv4 RNN mode vs parallel mode, final state", [list(s) for s in state_rnn], [list(s) for s in state_par], 1e-5)
assert sizes == {2 * 5 * 2 * 16}  # batch 2 × 5 vectors × 2 layers × C = 16, at every step
print(f"state size at every one of the {T_rnn} steps: {sizes.pop()} numbers (2 sequences x 5 x 2 layers x 16)")

# %% [markdown]
# The state's size does not depend on how many tokens have been read (the cell below compares 3
# with all of them), and the two modes can be mixed freely: read a prompt in parallel mode (fast
# on a GPU), hand its final state to the RNN, and
# generate token by token. The same state also lets a long text be processed in pieces.

# %%
with torch.no_grad():
    _, s_prompt = model(idx[:, :16])  # prompt in parallel mode
    o, s_next = model.step(idx[:, 16], s_prompt)  # continue as an RNN
    _, s_short = model(idx[:, :3])
    _, s_long = model(idx)
check("parallel prompt, then one RNN step vs parallel over 17 tokens", o, logits_par[:, 16], 1e-5)
n_short = sum(x.numel() for layer in s_short for x in layer)
n_long = sum(x.numel() for layer in s_long for x in layer)
assert n_short == n_long
print(f"state after 3 tokens: {n_short} numbers; after {idx.shape[1]} tokens: {n_long} numbers")

# %% [markdown]
# Finally, the token-shift vectors really are part of that state. Zero them halfway through an
# RNN run — keep only the WKV state — and the next output is wrong:

# %%
with torch.no_grad():
    broken = [s._replace(tm_x=torch.zeros_like(s.tm_x), cm_x=torch.zeros_like(s.cm_x)) for s in s_prompt]
    o_broken, _ = model.step(idx[:, 16], broken)
assert rel_err(o_broken, logits_par[:, 16]) > 1e-3
print(f"dropping the token-shift state: rel err {rel_err(o_broken, logits_par[:, 16]):.0e} on the next logits")

# %% [markdown]
# On a GPU the cell below repeats the parallel-vs-RNN check on a wider model with the Triton
# kernel in the parallel pass; on a laptop the interpreter checks above already covered it.

# %%
if rwkvlab.device.has_gpu():
    dev = rwkvlab.device.device()
    big = x040.RWKV4(vocab=256, C=256, n_layer=4, seed=1).to(dev)
    ids = torch.randint(0, 256, (4, 128), generator=torch.Generator().manual_seed(2)).to(dev)
    with torch.no_grad():
        lp, _ = big(ids, impl="triton_recurrent")
        s, outs = None, []
        for t in range(ids.shape[1]):
            o, s = big.step(ids[:, t], s)
            outs.append(o)
    check("rwkv4 on GPU: RNN mode vs parallel mode with the Triton WKV", torch.stack(outs, 1), lp, 1e-5)
else:
    print("no GPU here: the wider GPU check is skipped (the interpreter checks above ran)")

# %% [markdown]
# ## Summary
#
# * **Token shift** blends each token's input with the previous token's, per channel:
#   $\mu\odot x_t + (1-\mu)\odot x_{t-1}$ in RWKV-4 ($\mu$ weights the current token; later
#   versions flip the convention). In RNN mode the previous input is state — small, but state.
# * **Time mixing** is attention's replacement: token-shifted $r, k, v$, the per-channel WKV
#   average across time, a $\sigma(r)$ gate and $W_o$.
# * **Channel mixing** is the MLP's replacement: a gated squared-ReLU MLP, four times wider,
#   applied at each position (plus the token shift). It mixes channels, not time; its gate
#   $\sigma(x^rW'_r)$ acts on the outputs, unlike GLU variants, which gate the hidden layer.
#   Stacked, the two alternate: each channel mix computes features that the next block's time
#   mix gathers across time.
# * **$u$** is the log-space bonus of the current token; $u\to-\infty$ makes a channel look only
#   at the past, $u\to+\infty$ only at the present.
# * **Inference** runs every piece as an RNN with five $C$-vectors per layer — the two shifted
#   inputs and WKV's $(a', b', p)$ — and matches the parallel mode to float32 rounding; the
#   state size does not depend on the sequence length.
#
# ## Exercises
#
# 1. Port the block to the RWKV-5/6 convention $\mathrm{lerp}(x_t, x_{t-1}, \mu)$: what must you
#    do to the stored `time_mix_*` parameters so that the outputs stay identical? Check it.
# 2. The table in §6 says RNN-mode cost per token does not grow with $t$. Measure it: time 1000
#    `model.step` calls at the start of a text and after a 5000-token prompt.
# 3. Set $u = w$ in every channel (`time_first = exp(time_decay)`). Which earlier model does the
#    time-mix's WKV become? (Chapter 03, §1.) What does the model lose?
# 4. Replace the squared ReLU in the channel mix by a GELU and re-run the experiments of §4.
#    Which assertions still hold, and why?
# 5. Give the channel mix a token shift of width three ($x_t, x_{t-1}, x_{t-2}$). What does the
#    RNN state become, and what does the $|\partial o'_t/\partial x_j|$ picture look like?
# 6. The Jacobian of the time mix is a full lower triangle, but its entries shrink with
#    $t - j$. Plot a row of `time_tm` on a log scale for the fastest- and slowest-decaying
#    channels separately. Which channel carries information furthest?

# %% [markdown]
# **Answer to exercise 1.**
#
# ### BEGIN SOLUTION
# Store $1 - \mu$: $\mathrm{lerp}(x_t, x_{t-1}, 1-\mu) = x_t + (x_{t-1} - x_t)(1-\mu) = \mu x_t + (1-\mu)x_{t-1}$,
# so every `time_mix_*` $\mu$ becomes $1 - \mu$ and the outputs are identical (to float32 rounding).
# ### END SOLUTION

# %% [markdown]
# **Answer to exercise 2.**
#
# ### BEGIN SOLUTION
# The same time per call, within timing noise: the state has five $C$-vectors per layer whatever the
# position, so a step after a 5000-token prompt does exactly the work of the first one.
# ### END SOLUTION

# %% [markdown]
# **Answer to exercise 3.**
#
# ### BEGIN SOLUTION
# Causal AFT with the linear decay bias $w_{t,i} = -(t-i)w$, one decay per channel (chapter 03, §1),
# with $\sigma(r)$ as AFT's $\sigma(Q)$ gate. It loses the free bonus: the present now always counts $e^{w}$
# times a fresh past token, so fast-forgetting channels must stress the present and long-memory
# channels cannot make it stand out.
# ### END SOLUTION

# %% [markdown]
# **Answer to exercise 4.**
#
# ### BEGIN SOLUTION
# All of them: a change at token 4 still moves outputs 4 and 5 only, and one input channel still moves
# all 16 output channels. The experiments test which positions and channels are connected, which the
# token shift and the per-position MLP decide, not the shape of the activation.
# ### END SOLUTION

# %% [markdown]
# **Answer to exercise 5.**
#
# ### BEGIN SOLUTION
# The channel mix's RNN state becomes two vectors, $x'_{t-1}$ and $x'_{t-2}$ ($2C$ numbers instead of
# $C$); the $|\partial o'_t/\partial x_j|$ picture has three diagonals, $j = t, t-1, t-2$.
# ### END SOLUTION

# %% [markdown]
# **Answer to exercise 6.**
#
# ### BEGIN SOLUTION
# The channel with the smallest $w = \exp(\texttt{time\_decay})$: at initialisation channel 0, with
# $\texttt{time\_decay} = -5$, $w \approx 0.0067$ and a half-life of about 100 tokens; its row falls
# slowest, while the fastest channel's row drops by orders of magnitude within a few tokens.
# ### END SOLUTION

# %% [markdown]
# ### Exercises that check themselves
#
# Each cell below prints its exercise's statement, holds a solution between the markers
# `### BEGIN SOLUTION` and `### END SOLUTION` (the student edition, `python -m rwkvlab exercises
# student`, replaces it with a stub), and ends with `exercises.check`, which runs the function on
# seeded random cases against the package's modules in float64 and says what is wrong if it is.
#
# 7. Token shift and RWKV-4's mix (§1) in one function, with the vector a segment hands to the next.

# %%
import torch

from rwkvlab import exercises

print(exercises.spec("04.7"))


def shift_mix(x, mu, last=None):
    ### BEGIN SOLUTION
    first = torch.zeros_like(x[:, :1]) if last is None else last[:, None]
    x_prev = torch.cat([first, x[:, :-1]], dim=1)                # x_{t-1}; last (or zeros) at t = 0
    return mu * x + (1 - mu) * x_prev, x[:, -1]
    ### END SOLUTION


exercises.check("04.7", shift_mix)

# %% [markdown]
# 8. Channel mixing (§2) from its raw weights: token shift, a squared ReLU on the wide hidden layer,
#    and the $\sigma(r')$ gate.

# %%
import torch

from rwkvlab import exercises

print(exercises.spec("04.8"))


def channel_mix(x, last, mu_k, mu_r, Wk, Wv, Wr):
    ### BEGIN SOLUTION
    first = torch.zeros_like(x[:, :1]) if last is None else last[:, None]
    x_prev = torch.cat([first, x[:, :-1]], dim=1)
    xk = mu_k * x + (1 - mu_k) * x_prev
    xr = mu_r * x + (1 - mu_r) * x_prev
    hidden = torch.relu(xk @ Wk.T).square()                      # [B, T, H]
    return torch.sigmoid(xr @ Wr.T) * (hidden @ Wv.T), x[:, -1]
    ### END SOLUTION


exercises.check("04.8", channel_mix)

# %% [markdown]
# 9. The time-mixing sub-block as an RNN step (§6): the receptance gate around WKV, and the state a
#    token hands to the next; run over a sequence it must reproduce the parallel mode.

# %%
import torch

from rwkvlab import exercises, wkv4

print(exercises.spec("04.9"))


def time_mix_step(x, last, a, b, p, P):
    ### BEGIN SOLUTION
    def mixed(mu):
        return mu * x + (1 - mu) * last

    r = mixed(P["mu_r"]) @ P["Wr"].T
    k = mixed(P["mu_k"]) @ P["Wk"].T
    v = mixed(P["mu_v"]) @ P["Wv"].T
    y, s = wkv4.step(k, v, torch.exp(P["time_decay"]), P["time_first"], wkv4.State(a, b, p))
    return (torch.sigmoid(r) * y) @ P["Wo"].T, x, s.a, s.b, s.p
    ### END SOLUTION


exercises.check("04.9", time_mix_step)
