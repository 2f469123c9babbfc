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
# # What the delta rule buys: associative recall and state tracking
#
# Chapter 8 showed that RWKV-7's update is a step of gradient descent on a key→value
# regression, and that its transition $G_t = \operatorname{diag}(e^{w_t}) + b_t a_t^\top$ is no
# longer diagonal. This chapter asks what those two facts buy, with hand-set arguments and no
# training at all. By the end of it you will be able to
#
# * use a state as an associative memory by hand, and measure where the additive (RWKV-6-style)
#   write and the delta (RWKV-7-style) write differ: orthonormal keys, a key written twice, and
#   more pairs than the state has dimensions;
# * explain why a diagonal transition can only ever compute a *commutative* summary of its
#   input, and show two words it cannot tell apart;
# * build, by hand, a one-layer RWKV-7 whose state is the permutation matrix of a running
#   product in $S_5$, run words of 100 letters through `rwkvlab.wkv7`, and read the exact
#   permutation back after every token;
# * say precisely which expressivity results are proven, for which parameterisation of RWKV-7,
#   and under which assumptions, and which common summaries overstate them.
#
# The one picture is a product of reflections. A transposition $(i\,j)$ is the reflection that
# swaps coordinates $i$ and $j$,
#
# $$
# I - 2\hat k\hat k^\top,\qquad \hat k = \tfrac{1}{\sqrt 2}(e_i - e_j)
# \quad\Longleftrightarrow\quad a = -\hat k,\ b = 2\hat k,\ w = 0 ,
# $$
#
# and from $S_0 = I$ the state after $t$ tokens is $S_t = G_t\cdots G_1$: the permutation
# matrix of the word read so far. (A model starts from $S_0 = 0$; §3 shows the $n$ tokens that
# write $I$ into the state first, and checks the whole run from zero.)

# %%
import rwkvlab

print(rwkvlab.device.describe())

# %%
import inspect
import math

import matplotlib.pyplot as plt
import torch

from rwkvlab import delta, wkv7

torch.set_printoptions(precision=3, sci_mode=False)
g = torch.Generator().manual_seed(0)

# %% [markdown]
# ## 1. Associative recall without training
#
# A state $S \in \mathbb{R}^{K\times V}$ is a linear map; we *write* pairs $(k_i, v_i)$ into it
# and *read* with $S^\top \hat q$. Two write rules, both evolved by `rwkvlab.wkv7` (chapter 8
# derived the arguments):
#
# | rule | update | `wkv7` arguments |
# |---|---|---|
# | additive (RWKV-6 without decay) | $S \leftarrow S + \hat k v^\top$ | $w = 0,\ a = b = 0,\ k = \hat k$ |
# | delta (RWKV-7, $\eta = 1$) | $S \leftarrow (I - \hat k\hat k^\top) S + \hat k v^\top$ | $w = 0,\ a = -\hat k,\ b = \hat k,\ k = \hat k$ |
#
# Keys are L2-normalised by both rules, so that the comparison is about the update and not
# about the scale of the keys. `write` builds the arguments and calls `wkv7.naive`; `read` is
# one matrix product:

# %%
print(inspect.getsource(delta.write))
print(inspect.getsource(delta.read))

# %% [markdown]
# ### Orthonormal keys: both rules are exact
#
# Reading the additive state with key $\hat k_j$ gives
# $\sum_i (\hat k_i^\top\hat k_j)\,v_i$: the wanted $v_j$ plus a *crosstalk* term
# $\sum_{i\ne j}(\hat k_i^\top\hat k_j)\,v_i$. With orthonormal keys every crosstalk
# coefficient is zero. The delta rule removes $\hat k\hat k^\top S$ before each write, and
# with orthonormal keys there is nothing along $\hat k$ to remove, so its state is the same
# sum. With $K = 16$ we can store 16 pairs exactly either way:

# %%
K = V = 16
Q, _ = torch.linalg.qr(torch.randn(K, K, generator=g))
keys_orth, values_orth = Q, torch.randn(K, V, generator=g)
for rule in delta.RULES:
    e = delta.retrieval_error(keys_orth, values_orth, rule)
    print(f"{rule:>8}: 16 orthonormal keys, largest retrieval error {e.max().item():.0e}")
    assert e.max().item() < 1e-5
rwkvlab.check("orthonormal keys: delta state vs additive state",
              delta.write(keys_orth, values_orth, "delta"), delta.write(keys_orth, values_orth, "additive"), tol=1e-5)

# %% [markdown]
# ### A key written twice: delta replaces, additive sums
#
# Now write four pairs with orthonormal keys and then write key 1 again with a new value.
# The additive state returns the sum of the old and the new value for key 1; the delta rule
# first reads what the state returns for $\hat k_1$ (the old value), removes it, and writes
# the new one. The other three keys are untouched under both rules.

# %%
keys_rep = torch.cat([Q[:4], Q[1:2]])
v_rep = torch.randn(5, V, generator=g)
got = {rule: delta.recall(keys_rep, v_rep, Q[:4], rule) for rule in delta.RULES}
rwkvlab.check("key 1 twice: delta returns the new value", got["delta"][1], v_rep[4], tol=1e-5)
rwkvlab.check("key 1 twice: additive returns old + new", got["additive"][1], v_rep[1] + v_rep[4], tol=1e-5)
for rule in delta.RULES:
    rwkvlab.check(f"key 1 twice: {rule} keeps keys 0, 2, 3", got[rule][[0, 2, 3]], v_rep[[0, 2, 3]], tol=1e-5, quiet=True)
assert rwkvlab.rel_err(got["additive"][1], v_rep[4]) > 0.5

# %% [markdown]
# This is the behaviour a language model needs for a variable that is reassigned (`x = 3`
# … `x = 5`) or an entity whose attribute changes: the memory should return the *latest*
# binding. An additive memory can only approximate it with decay, which forgets everything
# else at the same rate.
#
# ### More pairs than dimensions
#
# With $n > K$ pairs the keys cannot all be orthogonal, and something has to give. We draw
# random unit keys and Gaussian values, write $n$ pairs, and read every written key back,
# measuring the relative error $\|S^\top\hat k_i - v_i\|/\|v_i\|$ of each pair. For the
# additive rule each read-out carries $n - 1$ crosstalk terms with coefficients of size about
# $1/\sqrt K$, so its error grows like $\sqrt{(n-1)/K}$ for *every* pair, old or new. The delta
# rule returns the newest pair exactly (chapter 8), and every later write only disturbs an
# earlier pair through the overlap of their keys, so errors grow with the *age* of a pair and
# saturate instead of growing without bound: old pairs are gradually overwritten, and recent
# ones stay accurate.

# %%
trials = rwkvlab.device.pick(32, 256)
ns = list(range(2, 3 * K + 1, 2))
mean_err = {rule: [] for rule in delta.RULES}
recent_err = {rule: [] for rule in delta.RULES}
for n in ns:
    keys = torch.randn(trials, n, K, generator=g)
    values = torch.randn(trials, n, V, generator=g)
    for rule in delta.RULES:
        e = delta.retrieval_error(keys, values, rule)          # [trials, n], oldest pair first
        mean_err[rule].append(e.mean().item())
        recent_err[rule].append(e[:, -4:].mean().item())       # the four most recent pairs

n_big = 3 * K
keys = torch.randn(trials, n_big, K, generator=g)
values = torch.randn(trials, n_big, V, generator=g)
by_age = {rule: delta.retrieval_error(keys, values, rule).mean(0) for rule in delta.RULES}

print(f"n = {n_big} pairs in K = {K}: mean error additive {mean_err['additive'][-1]:.2f}, "
      f"delta {mean_err['delta'][-1]:.2f}; 4 most recent: additive {recent_err['additive'][-1]:.2f}, "
      f"delta {recent_err['delta'][-1]:.2f}")
assert all(d < a for d, a, n in zip(recent_err["delta"], recent_err["additive"], ns) if n > K)
assert recent_err["delta"][-1] < 0.5 * recent_err["additive"][-1]
assert by_age["delta"][-1].item() < 1e-5                    # the newest pair is exact
assert abs(mean_err["additive"][-1] / math.sqrt((n_big - 1) / K) - 1) < 0.15   # additive: ~ sqrt((n-1)/K)
assert abs(by_age["delta"][:8].mean().item() - math.sqrt(2)) < 0.15            # oldest delta pairs: ~ sqrt(2)

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
for rule, c in zip(delta.RULES, ("C0", "C1")):
    ax1.plot(ns, mean_err[rule], color=c, label=f"{rule}: all pairs")
    ax1.plot(ns, recent_err[rule], color=c, ls="--", label=f"{rule}: 4 most recent")
ax1.plot(ns, [math.sqrt((n - 1) / K) for n in ns], "k:", label=r"$\sqrt{(n-1)/K}$")
ax1.axvline(K, color="gray", lw=0.8)
ax1.set_xlabel("pairs written n   (K = 16)")
ax1.set_ylabel("relative retrieval error")
ax1.set_title("Error vs number of pairs")
ax1.legend(fontsize=8)
age = torch.arange(n_big - 1, -1, -1)
for rule, c in zip(delta.RULES, ("C0", "C1")):
    ax2.plot(age.numpy(), by_age[rule].numpy(), color=c, label=rule)
ax2.axhline(math.sqrt(2), color="k", ls=":", lw=0.8, label=r"$\sqrt{2}$: unrelated read-out")
ax2.set_xlabel("age of the pair (writes since it was written)")
ax2.set_ylabel("relative retrieval error")
ax2.set_title(f"n = {n_big} pairs: error by age")
ax2.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# The left panel shows the additive error following $\sqrt{(n-1)/K}$ for all pairs at once;
# the delta rule's error on the most recent pairs stays low however many pairs were written.
# The right panel is the delta rule's characteristic shape: the newest pair exact, errors
# rising with age and levelling off near $\sqrt 2 \approx 1.41$. That is the error of a
# read-out with no relation to the stored value but of the same typical size: an old key now
# returns a mixture of newer values that its key overlaps with. The delta rule has
# forgotten the old pair and overwritten it. The additive rule never forgets and never
# recalls cleanly.
# Neither is "better" in general. A trained RWKV-7 chooses per token how much to remove
# (iclr) and how much to decay ($w$), interpolating between the two; chapter 14 trains a model
# on exactly this kind of task.
#
# ## 2. State tracking: what a diagonal transition cannot do
#
# Associative recall is about *storing*. State tracking is about *composing*: the input is a
# sequence of actions, and the answer after each token is the result of applying all of them
# in order. The cleanest instance is the **word problem of a group**: letters are group
# elements $\sigma_1, \sigma_2, \ldots$, and after token $t$ the model should output the
# product $\pi_t = \sigma_t\circ\cdots\circ\sigma_1$. For the symmetric group $S_5$ (the 120
# permutations of five things) this problem is NC¹-complete (Barrington 1989), which is what
# makes it the standard probe below.
#
# In this book's notation a permutation is written in one-line form: the tuple $p$ with
# $p[i] = \pi(i)$. `compose` computes the prefix products combinatorially, our ground truth;
# each letter in this chapter is a transposition, and every permutation of $S_n$ is a product
# of at most $n - 1$ of them (`decompose`).

# %%
print(inspect.getsource(delta.compose))

# %% [markdown]
# Any linear recurrence with *diagonal* transitions, RWKV-4/5/6's included, multiplies the
# state by $D_t = \operatorname{diag}(e^{w_t})$. Diagonal matrices commute, so the product
# $D_T\cdots D_1$ is the same in every order:

# %%
D = [torch.diag(torch.rand(5, generator=g, dtype=torch.float64)) for _ in range(4)]
orders = [(0, 1, 2, 3), (3, 2, 1, 0), (2, 0, 3, 1)]
prods = [torch.linalg.multi_dot([D[i] for i in o]) for o in orders]
for o, P in zip(orders[1:], prods[1:]):
    rwkvlab.check(f"diagonal product, order {o} vs (0, 1, 2, 3)", P, prods[0], tol=1e-13)

# %% [markdown]
# Now let a diagonal recurrence read a word of transpositions: each letter is mapped to its
# own log-decay vector (any map will do; `diagonal_track` uses a fixed random one), the
# state starts at $S_0 = I$, and we look at the transition part of the state alone (no
# writes). Two words that use the same letters the same number of times end in the same
# state, whatever their order. Here are two words of length 52 with equal letter counts whose
# products differ:

# %%
w1 = [(0, 1), (1, 2), (3, 4), (0, 4)] * 13
w2 = [(1, 2), (0, 1), (0, 4), (3, 4)] * 13
p1, p2 = delta.compose(w1, 5)[-1], delta.compose(w2, 5)[-1]
d1, d2 = delta.diagonal_track(w1, 5), delta.diagonal_track(w2, 5)
print("same letters, same counts:", sorted(w1) == sorted(w2))
print("products:", p1, "vs", p2)
assert sorted(w1) == sorted(w2) and p1 != p2
rwkvlab.check("diagonal states of the two words", d1, d2, tol=1e-12)

# %% [markdown]
# Be careful about what this shows. It shows that the *transition part* of a diagonal
# recurrence computes a commutative function of its input. The full RWKV-6 state,
# $S_T = \sum_i \big(\prod_{j>i} D_j\big)\,k_i v_i^\top$, *does* depend on order through the
# writes, and a multi-layer network with nonlinearities between layers can do more than one
# layer. The statement that no such network solves the $S_5$ word problem at every length is
# a theorem about circuits (§4), not something a two-word example proves; the example shows
# where the obstacle lives.
#
# ## 3. State tracking with reflections
#
# The RWKV-7 transition is diagonal *plus rank one*, and with $a = -\hat k$, $b = 2\hat k$,
# $w = 0$ it is the reflection $I - 2\hat k\hat k^\top$. For $\hat k = (e_i - e_j)/\sqrt 2$,
#
# $$
# (I - 2\hat k\hat k^\top)\,x \;=\; x - (x_i - x_j)(e_i - e_j),
# $$
#
# which swaps $x_i$ and $x_j$ and leaves every other entry alone: the permutation matrix of
# the transposition $(i\,j)$. The construction (`reflection_args`):
#
# * $K = V = n$, one head, initial state $S_0 = I$ (reached from $S_0 = 0$ below);
# * letter $(i\,j)$ → $a = -\hat k$, $b = 2\hat k$, $w = 0$, and no write ($k = v = 0$);
# * read-out key $r = (0, 1, \ldots, n-1)$ at every token.
#
# Why the read-out works: let $P_\pi$ be the matrix with $P_\pi e_i = e_{\pi(i)}$. The state
# is $S_t = P_{\sigma_t}\cdots P_{\sigma_1} = P_{\pi_t}$, and
# $(S_t^\top r)_i = \sum_m (P_{\pi_t})_{m i}\, r_m = r_{\pi_t(i)} = \pi_t(i)$. The output
# vector of token $t$ *is* the current permutation in one-line form.

# %%
print(inspect.getsource(delta.reflection_args))
print(inspect.getsource(delta.track))

# %% [markdown]
# First, a look at the states themselves: the first six tokens of an $S_5$ word, the state
# after each (taken from `wkv7.naive`'s final state on the prefix), next to the permutation
# matrix of the prefix product.

# %%
word5 = delta.random_word(5, 100, torch.Generator().manual_seed(5))
states = []
for t in range(1, 7):
    args = delta.reflection_args(word5[:t], 5)
    _, S_t = wkv7.naive(args["r"], args["w"], args["k"], args["v"], args["a"], args["b"],
                        initial_state=torch.eye(5)[None, None], output_final_state=True)
    states.append(S_t[0, 0])
    pi = delta.compose(word5[:t], 5)[-1]
    P = torch.zeros(5, 5)
    P[list(pi), list(range(5))] = 1.0                         # P e_i = e_{π(i)}
    rwkvlab.check(f"S_{t} vs P_pi for pi = {pi}", S_t[0, 0], P, tol=1e-6, quiet=True)

fig, axes = plt.subplots(1, 6, figsize=(11, 2.3))
for t, (ax, S_t) in enumerate(zip(axes, states), start=1):
    ax.imshow(S_t.numpy(), cmap="Greys", vmin=0, vmax=1)
    ax.set_title(f"t={t}: ({word5[t-1][0]} {word5[t-1][1]})", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle("RWKV-7 state after each reflection token: a permutation matrix", fontsize=10)
fig.tight_layout()
plt.show()

# %% [markdown]
# Now the full runs: $S_3$ words of length 60 and $S_5$ words of length 100, several of each,
# in float32 through `wkv7.naive`. Every prefix's permutation, read off the output and
# rounded, must equal the combinatorial product exactly. We also print the *drift*, the
# largest distance of any read-out from an integer: each reflection is applied with a
# rounded $1/\sqrt 2$, but reflections are orthogonal (up to that rounding), so rounding errors
# add up roughly linearly instead of being amplified step after step; at these lengths they stay
# far below the 0.5 that would make rounding ambiguous.

# %%
for n, length in ((3, 60), (5, 100)):
    for seed in range(3):
        word = delta.random_word(n, length, torch.Generator().manual_seed(100 * n + seed))
        perms, drift = delta.track(word, n)
        assert perms == delta.compose(word, n), f"S{n} word {seed}: a prefix was read wrong"
        assert drift < 1e-4
    print(f"S{n}: 3 random words of length {length}, every prefix exact (last drift {drift:.0e})")

# %% [markdown]
# ### Getting to $S_0 = I$ from a zero state
#
# Every model starts from $S_0 = 0$, and reflections of zero are zero: run from there, the
# construction reads nothing at all. The identity has to be *written* first. With the additive
# part of the update that takes $n$ tokens: token $i$ writes $k = v = e_i$ with $w = 0$ and
# $a = b = 0$, and after $n$ of them $S = \sum_i e_ie_i^\top = I$ (`basis_prefix_args`). In a
# network those would be $n$ fixed start symbols whose key and value projections are the basis
# vectors. No shorter prefix exists: each token changes the state by $G_tS_{t-1} + k_tv_t^\top$,
# which raises its rank by at most one. (The other way in is a trained initial state: every
# `wkv7` implementation takes `initial_state` and passes gradients to it.) Below, the rank
# after each prefix token, then the $S_5$ words of the previous cell run from zero with the
# prefix in front.

# %%
print(inspect.getsource(delta.basis_prefix_args))

# %%
pre = delta.basis_prefix_args(5)
ranks = []
for t in range(1, 6):
    _, S_pre = wkv7.naive(*(pre[m][:, :t] for m in ("r", "w", "k", "v", "a", "b")), output_final_state=True)
    ranks.append(int(torch.linalg.matrix_rank(S_pre[0, 0])))
print("rank of the state after each prefix token:", ranks)
assert ranks == [1, 2, 3, 4, 5] and torch.equal(S_pre[0, 0], torch.eye(5))

args_nz = delta.reflection_args(word5, 5)
o_nz, _ = wkv7.naive(*(args_nz[m] for m in ("r", "w", "k", "v", "a", "b")))      # from zero, no prefix
assert torch.equal(o_nz, torch.zeros_like(o_nz))
for seed in range(3):
    word = delta.random_word(5, 100, torch.Generator().manual_seed(500 + seed))
    perms, drift = delta.track(word, 5, from_zero=True)
    assert perms == delta.compose(word, 5) and drift < 1e-4
print(f"from S_0 = 0 without the prefix: every read-out is 0; with the 5-token prefix: "
      f"3 random S5 words of length 100, every prefix exact (last drift {drift:.0e})")

# %% [markdown]
# Letters that are not transpositions cost more than one token: `decompose` writes a
# permutation as at most $n - 1$ transpositions (a cycle $(c_0\,c_1\cdots c_m)$ is
# $(c_0\,c_1)$, then $(c_0\,c_2)$, …, then $(c_0\,c_m)$), and we read the output only at the
# last token of each letter. This is the "$n - 1$ reflections per letter" count that appears
# in the literature (§4): with one rank-one update per token, a general $S_5$ letter takes up
# to four tokens.

# %%
gl = torch.Generator().manual_seed(7)
letters = [tuple(torch.randperm(5, generator=gl).tolist()) for _ in range(50)]
tokens, ends = [], []
for p in letters:
    tokens += delta.decompose(p)
    ends.append(len(tokens) - 1)
perms, drift = delta.track(tokens, 5)
running, expect = tuple(range(5)), []
for p in letters:                                    # π ← σ ∘ π, one-line form
    running = tuple(p[x] for x in running)
    expect.append(running)
read_at_ends = [perms[e] for e in ends]
print(f"50 random S5 letters -> {len(tokens)} tokens; products read at letter ends match: {read_at_ends == expect}")
assert read_at_ends == expect and all(len(delta.decompose(p)) <= 4 for p in letters)

# %% [markdown]
# Finally, the same construction under the released parameterisation. There $b =
# \mathrm{iclr}\odot\hat\kappa$ with $\mathrm{iclr} \in (0, 1)$, so the best it can do is
# $b = \eta\hat k$ with $\eta$ just below 1, and $w$ just below 0. That transition,
# $I - \eta\hat k\hat k^\top$, has eigenvalue $1 - \eta \approx 0.01$ along $\hat k$ instead of
# $-1$: instead of swapping $x_i$ and $x_j$ it (almost) replaces both with their mean. The
# state collapses, and the read-out is no longer a permutation from the very first token.

# %%
perms_rel, drift_rel = delta.track(word5, 5, eta=0.99)
first_bad = next(t for t, (a, b) in enumerate(zip(perms_rel, delta.compose(word5, 5))) if a != b)
print(f"eta = 0.99 (iclr just below 1): first wrong prefix at token {first_bad + 1}, drift {drift_rel:.2f}")
assert perms_rel != delta.compose(word5, 5) and drift_rel > 0.05
assert first_bad == 0                                # wrong from the very first token

# %% [markdown]
# ## 4. What is proven, for which model
#
# Summaries of RWKV-7 often say that it "achieves NC¹ expressivity, surpassing the TC⁰
# limitations of standard attention", and comparison tables label RWKV-6 "linear attention
# (TC⁰)" and RWKV-7 "dynamic state evolution (NC¹)". Those labels compress several
# conditional, parameterisation-specific results into flat statements. Here is what the
# literature establishes, separated from what this chapter demonstrated.
#
# **Complexity classes, briefly.** TC⁰ is the class of problems solved by constant-depth,
# polynomial-size circuits with unbounded fan-in threshold gates: highly parallel computation.
# NC¹ allows logarithmic depth with bounded fan-in gates. TC⁰ ⊆ NC¹ is known; whether the
# inclusion is strict is **open**, and "TC⁰ ≠ NC¹" is a widely believed conjecture. The $S_5$
# word problem is NC¹-complete, so if TC⁰ ≠ NC¹ no TC⁰ family solves it.
#
# **Upper bounds (what a model cannot do).**
#
# * Merrill, Petty and Sabharwal, "The Illusion of State in State-Space Models" (ICML 2024,
#   arXiv 2404.08819), Thm 4.4: generalised linear SSMs $h_i = \bar A_i h_{i-1} + \bar B_i x_i$
#   (their Def. 2.1) whose transitions are *diagonal*, $\bar A_i = \operatorname{diag}(\bar a_i)$,
#   even input-dependent, are in L-uniform TC⁰, for log-precision arithmetic and a fixed number
#   of layers (the proof works with the convolutional form, which it assumes equals the
#   recurrent one); Cor. 4.7: if TC⁰ ≠ NC¹, none of them solves the $S_5$ word problem. RWKV-4/5/6
#   have diagonal transitions, so the argument applies to them (we have not checked whether the
#   paper names RWKV). So "RWKV-6 is TC⁰" is a *conditional upper bound* under log precision
#   and fixed depth, and the separation from NC¹ rests on the conjecture.
# * For transformers the analogous upper bound is Merrill and Sabharwal's result that
#   log-precision transformers are in uniform TC⁰ ("The Parallelism Tradeoff", TACL 2023).
#   "Standard attention is TC⁰" is again an upper bound under a precision assumption, not an
#   unconditional limitation, and it is not the same as "linear attention is TC⁰".
# * Grazzi, Siems, Zela, Franke, Hutter and Pontil, "Unlocking State-Tracking in Linear RNNs
#   Through Negative Eigenvalues" (ICLR 2025, arXiv 2411.12537), work in *finite* precision,
#   a different setting: a stack of linear RNN layers $H_i = A(x_i)H_{i-1} + B(x_i)$, each
#   followed by a decoder $\hat y_i = \mathrm{dec}(H_i, x_i)$. Thm 1: such a network
#   recognises parity (precisely, the language $(11)^*$, i.e. parity of a string of 1s) at
#   arbitrary length only if some layer has some transition $A(x)$ with an eigenvalue outside
#   $[0, \infty)$; it generalises Sarrof et al.'s (2024) result for diagonal
#   transitions. Transitions with eigenvalues in
#   $[0, 1]$ (diagonal gates in $(0,1)$, DeltaNet with $\beta \in [0,1]$) cannot. Their fix
#   widens the range to $[-1, 1]$: for DeltaNet, $\beta \in [0, 2]$, exactly the $\eta = 2$
#   reflection of this chapter. Thm 2 adds that counting modulo $m$ (for $m$ not a power of 2)
#   needs, in some layer, a product of transitions with a non-real eigenvalue, which real
#   diagonal (or triangular) transitions never produce, negative eigenvalues or not.
#
# **Lower bounds (what a model can do).**
#
# * The RWKV-7 paper (Peng et al. 2025, arXiv 2503.14456v2) lists among its contributions
#   proofs that "the generalized delta rule employed in RWKV-7 can solve problems outside of
#   TC0 under the widely held complexity conjecture that TC0 ≠ NC1", including the $S_5$ state
#   tracking problem with a single layer and all regular languages with a constant number of
#   layers. The proofs are in the paper's Appendix D (D.1 "Warmup: Expressivity Beyond TC0",
#   D.2 "Main Result: RWKV-7 Can Recognize Any Regular Language"). We have not checked the
#   theorem statements against the paper itself, so this book does not say how many layers
#   they use or which range of the in-context learning rate their transitions assume. What
#   the book derives instead is the condition any swap construction must meet: the token's
#   transition needs the eigenvalue $-1$, which with $a = -\hat\kappa$ and
#   $b = \mathrm{iclr}\odot\hat\kappa$ means an iclr of 2 along $\hat\kappa$ (§3 and chapter 8).
# * Grazzi et al., Thm 3: products of generalised Householder matrices with eigenvalues in
#   $\{-1, 1\}$ implement any group automaton in one layer, with at most $n - 1$ factors per
#   letter for permutations of $n$ elements (our `decompose` count). Thm 4: stacks of layers
#   whose transitions are products of generalised Householder matrices with eigenvalues in
#   $[-1, 1]$ recognise any regular language, with a finite number of layers that depends on
#   the automaton (exponential in its number of states in the worst case).
#
# **The released parameterisation.** Chapter 8 proved that with $\mathrm{iclr} \in (0,1)$,
# $b = \hat\kappa\odot\mathrm{iclr}$, $a = -\hat\kappa$ and $w \in (-e^{-0.5}, 0)$, every
# eigenvalue of the transition is real and inside $(-0.455, 1)$: spectral radius strictly
# below 1 (in exact arithmetic; chapter 8 shows float32 can reach 1 at the top end, never
# $-1$ at the bottom), so no exact reflection, permutation or even identity. So, whatever
# parameterisation the proofs use, the released transitions cannot realise the swap
# construction of §3: a result that needs it is about a variant with a wider iclr range, not
# about the released checkpoints as parameterised. The released transitions do have negative eigenvalues, so Grazzi et al.'s
# necessary condition for parity is met, but a necessary condition is not sufficient. A
# short argument of our own (not a published theorem) suggests more: on the input
# $1\,1\,1\cdots$, each layer of a released model iterates one fixed affine map whose linear
# part has spectral radius below 1, so its state converges, and by induction over layers the
# outputs of a finite stack converge too, so it cannot keep alternating as parity requires at
# unbounded length.
#
# **What this chapter showed, and did not.** We *constructed* arguments for which one RWKV-7
# layer (with $b = 2\hat k$, i.e. an iclr of 2, outside the released range) tracks $S_3$ and
# $S_5$ exactly, from the identity or from zero behind an $n$-token prefix, and
# checked it on words of length 60–100 and on 50 general $S_5$ letters through `rwkvlab.wkv7`
# in float32. That is a demonstration that the solution exists and is easy to write down; it
# says nothing about whether training finds it, and a finite test is not a proof for all
# lengths (the orthogonality argument says the rounding drift grows slowly, not that it stays
# below 0.5 for every length). We showed that diagonal
# transition products are order-independent, and two words a diagonal transition cannot
# distinguish; the impossibility for whole diagonal networks is Merrill et al.'s conditional
# theorem, which we cite and do not reprove. So, instead of the flat labels:
#
# | flat label | what holds |
# |---|---|
# | RWKV-6 / linear attention: "TC⁰" | diagonal-transition SSMs are in L-uniform TC⁰ with log precision and fixed depth (Merrill et al. 2024); no NC¹-hard problem unless TC⁰ = NC¹ |
# | attention: "TC⁰ limitations" | log-precision transformers are in uniform TC⁰ (Merrill & Sabharwal 2023): an upper bound with the same caveats |
# | RWKV-7: "NC¹ expressivity" | the paper proves that the generalised delta rule solves $S_5$ state tracking in one layer (App. D; we have not checked its parameterisation); a swap needs an iclr of 2, and the released iclr $\in (0,1)$ transitions have $\rho < 1$ and cannot realise that construction |
#
# ## Summary
#
# * Written through `wkv7` with hand-set arguments, the additive rule and the delta rule agree
#   on orthonormal keys; on a repeated key the delta rule returns the new value and the
#   additive rule the sum; with more pairs than dimensions the additive error grows like
#   $\sqrt{(n-1)/K}$ for every pair, while the delta rule keeps recent pairs accurate and
#   forgets old ones.
# * Diagonal transitions commute, so a diagonal state's transition part is a commutative
#   summary of the input: two different permutation words with the same letters look the same.
# * A transposition is the reflection $I - 2\hat k\hat k^\top$ with
#   $\hat k = (e_i - e_j)/\sqrt 2$, which is one RWKV-7 token with $a = -\hat k$, $b = 2\hat k$,
#   $w = 0$. From $S_0 = I$ the state is the permutation matrix of the running product, and the
#   read-out with $r = (0, \ldots, n-1)$ prints the permutation. It is exact for $S_3$ and
#   $S_5$ words of length 60–100. A model starts from $S_0 = 0$; $n$ prefix tokens writing
#   $e_ie_i^\top$ (no fewer, one rank per token) bring it to $I$, and the run from zero is exact too.
# * The RWKV-7 paper proves that the generalised delta rule solves $S_5$ in one layer (its
#   Appendix D, whose parameterisation we have not checked). A swap needs an iclr of 2; the
#   released parameterisation (iclr in $(0,1)$) has spectral radius below 1 and cannot make
#   it. The TC⁰/NC¹ results are conditional on TC⁰ ≠ NC¹ and assume log precision and
#   fixed depth; Grazzi et al.'s eigenvalue conditions are finite-precision results.
#
# ## Exercises
#
# 1. Parity with one channel: choose $K = V = 1$ and arguments for `wkv7` such that the output
#    after $t$ tokens of a 0/1 string is $(-1)^{\text{number of 1s}}$. Which argument must leave
#    the released range?
# 2. Repeat the error-by-age experiment with the delta rule at $\eta = 0.5$ (`write(..., lr=0.5)`).
#    How do the newest pair's error and the forgetting curve change? Explain with the
#    eigenvalue $1 - \eta$ along $\hat k$.
# 3. `diagonal_track` ignores writes. Give two words with the same letters for which a
#    diagonal recurrence *with* writes ($S \leftarrow D_t S + k_t v_t^\top$, keys and values
#    fixed per letter) ends in different states. Why does this not contradict §2?
# 4. Show that $(I - 2\hat k\hat k^\top)$ with $\hat k = (e_i - e_j)/\sqrt 2$ is the only
#    reflection of the form $I - 2\hat k\hat k^\top$ that maps the standard basis to itself and
#    swaps $e_i$ and $e_j$.
# 5. The cyclic group $\mathbb{Z}_3$ can be embedded in $S_3$ as the rotations
#    $(0\,1\,2)$. How many reflection tokens does one rotation take in this construction? Can a
#    single RWKV-7 token of the form $\operatorname{diag}(e^w) + b a^\top$ implement the
#    3-cycle on $\mathbb{R}^3$? (Hint: chapter 8, exercise 6, and Grazzi et al. Thm 2.)
# 6. Replace the read-out key $r = (0, 1, \ldots, n-1)$ by $r = (1, 2, 4, \ldots, 2^{n-1})$.
#    What does the output encode now, and why might it be more robust to drift?

# %% [markdown]
# Short answers to exercises 1, 2, 3 and 5 (the student edition hides them):
#
# ### BEGIN SOLUTION
# 1. $S_0 = 1$, $r = 1$, $w = 0$, $k = v = 0$, $a = -1$ and $b = 2\cdot\text{bit}$: the transition
#    is $G_t = 1 - 2\cdot\text{bit}_t = \pm 1$, so $o_t = (-1)^{\#1\text{s}}$ (coded in exercise 9
#    below). The decay cannot help, since $e^{w} > 0$ never changes a sign; the flip needs
#    $b\,a = -2$, i.e. an in-context learning rate (iclr) of 2, outside the released range $(0, 1)$
#    (with iclr $\to 1$ the transition tends to $0$ and erases the state).
# 2. The delta state returns $(1-\eta)\,S^\top\hat k + \eta\, v$ for the newest key, so the newest
#    pair is no longer exact: at $\eta = 0.5$, $n = 48$, $K = 16$ its error is about 0.58 (it is 0
#    at $\eta = 1$). Forgetting is slower and the curve flatter: about 0.6–0.7 for the five
#    most recent pairs and about 1.0 for the oldest, instead of $\sqrt 2$. Each write shrinks the
#    old content along $\hat k$ by the eigenvalue $1 - \eta$ only, $0.5$ instead of $0$, so
#    old pairs are only partly overwritten.
# 3. Two letters $A \ne B$ with decays $D_A \ne D_B$ and writes $k_A v_A^\top$, $k_B v_B^\top$: the
#    words $AB$ and $BA$ end in states that differ by
#    $(D_B - I)\,k_A v_A^\top - (D_A - I)\,k_B v_B^\top$, which is non-zero for most choices.
#    §2 claims only that the *transition part* $D_T\cdots D_1$, the way the state's earlier
#    content is carried forward, is order-independent. Writes add order-dependent terms, so a
#    diagonal layer is not blind to order; what it cannot do is compose its past content in a
#    non-commutative way, as the word problem needs.
# 5. Two tokens: the rotation $(0\,1\,2)$ is $(0\,1)$ followed by $(0\,2)$ (`decompose`). No single
#    token does it: with $P$ the permutation matrix of the 3-cycle, $P - \operatorname{diag}(e^{w})$
#    has a $2\times 2$ minor equal to $-1$ for every $w$ (rows 0, 1 and columns 0, 2 of
#    $P e_i = e_{\pi(i)}$), so it is never the rank-one $b\,a^\top$. Its eigenvalues
#    $e^{\pm 2\pi i/3}$ are not real either.
# ### END SOLUTION

# %% [markdown]
# ### Exercises that check themselves
#
# Each cell prints its exercise's statement, holds a solution between the markers
# `### BEGIN SOLUTION` and `### END SOLUTION` (the student edition, `python -m rwkvlab exercises
# student`, replaces it with a stub), and ends with `exercises.check`, which runs the function on
# seeded random cases and says what is wrong if it is. The references are independent of your
# code: `delta.recall` (the memory written through `wkv7.naive`) in float64, and the
# combinatorial products of `delta.compose`.
#
# 7. **A delta-rule memory by hand.** Write the delta rule's write loop of §1 yourself, one pair
#    at a time, and read the memory back; the checker writes a key twice and more pairs than
#    dimensions.

# %%
import torch

from rwkvlab import exercises

print(exercises.spec("09.7"))


def delta_recall(keys, values, queries, lr):
    ### BEGIN SOLUTION
    kh = keys / keys.norm(dim=-1, keepdim=True)
    S = torch.zeros(keys.shape[-1], values.shape[-1], dtype=keys.dtype)
    for k_i, v_i in zip(kh, values):
        e = k_i @ S                                      # what the memory returns for k̂ now
        S = S - lr * torch.outer(k_i, e - v_i)           # one gradient step towards v_i
    return (queries / queries.norm(dim=-1, keepdim=True)) @ S
    ### END SOLUTION


exercises.check("09.7", delta_recall)

# %% [markdown]
# 8. **Swaps as reflections.** Track a word of transpositions in the state, as in §3, and return
#    the raw read-outs: each row must be the running permutation in one-line form.

# %%
import math

import torch

from rwkvlab import exercises

print(exercises.spec("09.8"))


def swap_readout(word, n):
    ### BEGIN SOLUTION
    S, r, out = torch.eye(n), torch.arange(n, dtype=torch.float32), []
    for i, j in word:
        kh = torch.zeros(n)
        kh[i], kh[j] = 1 / math.sqrt(2), -1 / math.sqrt(2)
        S = S - 2 * torch.outer(kh, kh @ S)              # (I − 2k̂k̂ᵀ) S: swap rows i and j
        out.append(S.T @ r)                              # o_t = S_tᵀ r = π_t in one-line form
    return torch.stack(out)
    ### END SOLUTION


exercises.check("09.8", swap_readout)

# %% [markdown]
# 9. **Parity with one channel.** Exercise 1 as code: choose the `wkv7` arguments for a state of
#    one number that flips its sign on every 1. The checker also enforces the rules of the game
#    (a constant read-out key, no writes, arguments that depend only on the current bit).

# %%
import torch

from rwkvlab import exercises

print(exercises.spec("09.9"))


def parity_args(bits):
    ### BEGIN SOLUTION
    x = bits.float()[..., None, None]                    # [B, T, 1, 1]
    zeros, ones = torch.zeros_like(x), torch.ones_like(x)
    # G = e^0 + b·a = 1 − 2·bit: +1 for a 0, −1 for a 1 (a reflection of the one-dimensional state)
    return dict(r=ones, w=zeros, k=zeros, v=zeros, a=-ones, b=2 * x)
    ### END SOLUTION


exercises.check("09.9", parity_args)
