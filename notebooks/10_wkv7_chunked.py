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
# # The chunked form of RWKV-7: WY representation and the UT transform
#
# RWKV-7 updates its matrix state with a transition that is no longer diagonal: every token
# decays the state channel by channel *and* subtracts a rank-one piece that depends on what the
# state currently holds. The loop from the previous chapters still works, but it walks the
# sequence one token at a time. This chapter builds the form that trains fast: cut the sequence
# into chunks of $C$ tokens, do everything inside a chunk with matrix products, and pass only one
# state from chunk to chunk.
#
# By the end of the chapter you will be able to
#
# - derive the chunkwise-parallel form of RWKV-7 (a *diagonal-plus-low-rank*, "DPLR", delta
#   rule) in matrix form, with the decay inside, and say where every exponent comes from;
# - name and compute the four state-independent intra-chunk matrices $A_{ab}, A_{ak}, A_{rb},
#   A_{rk}$, explain what each one measures, and build them from matrix products by halving
#   the chunk, with the decay factored at block midpoints;
# - invert the unit lower-triangular matrix $I - A_{ab}$ by forward substitution (the *UT
#   transform*) and read the result as a WY representation of a product of transitions;
# - spot the two numerical traps of this algebra in float32 (an overflow in the forward pass and
#   a cancellation in the backward pass) and avoid both;
# - check the result against the loop: outputs, final states and gradients.
#
# The whole idea fits in one line. Inside a chunk that starts from the state $S_0$, call
# $e_t^\top = a_t^\top S_{t-1}$ the row that the low-rank term reads from the state. Stack those
# rows into a matrix $E$ ($C \times V$). They depend on the state, but only through an affine map
# whose coefficients can be computed for all chunks at once, in parallel:
#
# $$E \;=\; (I - A_{ab})^{-1}\big(\tilde A\, S_0 + A_{ak} V\big) \;=\; W S_0 + U .$$
#
# Once $E$ is known, RWKV-7 inside a chunk is just RWKV-6-style linear attention with one extra
# key ($b$) and one extra value ($E$) per token.

# %%
import rwkvlab

print(rwkvlab.device.describe())

# %%
import inspect
import math

import matplotlib.pyplot as plt
import torch

from rwkvlab import wkv7
from rwkvlab.checking import rel_err
from rwkvlab.wkv7 import reference as ref

torch.set_printoptions(precision=3, sci_mode=False)


rwkv7_inputs = wkv7.random_inputs   # seeded r, w, k, v, a = -κ̂, b = κ̂ ⊙ iclr as a model feeds them
print(inspect.getsource(wkv7.random_inputs))


# %% [markdown]
# ## 1. The recurrence, and which way round the state is stored
#
# We keep the book's layout (the one FLA uses): the state $S$ is $K \times V$, rows indexed by
# key channels, and `w` is the **log** decay, so the per-channel factor is $e^{w_t} \in (0, 1]$.
# Write $D_t = \operatorname{diag}(e^{w_t})$. One token does
#
# $$S_t = D_t S_{t-1} + b_t\,(a_t^\top S_{t-1}) + k_t v_t^\top,
# \qquad o_t = \text{scale}\cdot S_t^\top r_t .$$
#
# Two things differ from RWKV-6. The middle term reads the state: $a_t^\top S_{t-1}$ is a row of
# length $V$, a weighted sum of the state's key rows, and $b_t$ writes it back (in the models
# $a = -\hat\kappa$ and $b = \hat\kappa \odot \text{iclr}$, so the term removes what the state
# currently stores along the unit direction $\hat\kappa$, at a per-channel rate). And the
# read-out sees the *updated* state $S_t$, so a token reads its own write; RWKV-6 read the old
# state and added a bonus $u$ instead. In RWKV-7 the bonus lives outside this kernel (paper
# Eq. 20), so there is no $u$ here.
#
# Equivalently, $S_t = G_t S_{t-1} + k_t v_t^\top$ with the transition
# $G_t = D_t + b_t a_t^\top$: a diagonal matrix plus a rank-one one.
#
# > **Orientation.** The RWKV-7 paper writes the state the other way round, $V \times K$, with
# > row vectors and the decay acting on the *columns*:
# > $\mathit{wkv}_t = \mathit{wkv}_{t-1}\big(\operatorname{diag}(w_t) - \hat\kappa_t^\top(a_t \odot \hat\kappa_t)\big) + v_t^\top \tilde k_t$
# > (Eq. 17 of arXiv 2503.14456v2, with $w_t$ the factor itself and $a_t$ the in-context
# > learning rate), and the paper
# > notes that its wkv is transposed to match the code. The official CUDA kernel stores it the
# > same way. Our $S$ is the transpose of theirs; the two agree once you map our $(k, a, b)$ to
# > their $(\tilde k, -\hat\kappa, \hat\kappa \odot \text{iclr})$ and our $e^{w}$ to their $w$.
# > A formula that circulates (misstatement 8 of chapter 16) mixes the two layouts (a left-multiplied decay next
# > to a right-multiplied low-rank term) and write the decay as $\exp(-\exp(w))$, the
# > parameterization the official RWKV-6 and RWKV-7 CUDA kernels take; the kernels in this book
# > take the log decay itself (chapter 8, §4, converts between the two).
#
# Here is the package's loop. `_update` is the one-token step, shared by `naive` and `step`.

# %%
print(inspect.getsource(ref._update))
print(inspect.getsource(wkv7.naive))

# %% [markdown]
# Before building on it, a cross-check of the orientation. The cell below runs the paper's form
# directly: a $V \times K$ state, decay on the columns, $\hat\kappa$ and the learning rate as
# the paper names them, the read-out $\mathit{wkv}_t\, r_t$. Transposed, its state must equal
# ours.

# %%
B, T, H, K, V = 1, 9, 2, 4, 3
r, w, k, v, a, b = rwkv7_inputs(B, T, H, K, V, seed=1, dtype=torch.float64)
kappa_hat, iclr = -a, b / (-a)                         # undo a = -κ̂, b = κ̂ ⊙ iclr

wkv = torch.zeros(H, V, K, dtype=torch.float64)        # the paper's layout: values × keys
y = torch.zeros(T, H, V, dtype=torch.float64)
for t in range(T):
    for h in range(H):
        kh, lr = kappa_hat[0, t, h], iclr[0, t, h]
        G = torch.diag(w[0, t, h].exp()) - torch.outer(kh, lr * kh)     # diag(w) − κ̂ᵀ(a ⊙ κ̂)
        wkv[h] = wkv[h] @ G + torch.outer(v[0, t, h], k[0, t, h])
        y[t, h] = wkv[h] @ r[0, t, h]

o, S = wkv7.naive(r, w, k, v, a, b, output_final_state=True)
rwkvlab.check("naive (K×V) vs the paper's V×K loop: outputs", o[0], y, 1e-12)
rwkvlab.check("naive (K×V) vs the paper's V×K loop: state is the transpose", S[0], wkv.transpose(-1, -2), 1e-12)

# %% [markdown]
# ## 2. Why the RWKV-6 chunk trick is not enough
#
# For RWKV-6 (chapter 6) the state after a chunk is the decayed start state plus a sum of
# decayed outer products $k_i v_i^\top$, and every one of those pieces is known before the chunk
# starts. That is what lets all chunks compute their internal attention in parallel; only the
# $K \times V$ states are passed along.
#
# RWKV-7 breaks this in one place. Unroll the recurrence from the start of a chunk:
#
# $$S_t = G_t G_{t-1}\cdots G_1 S_0 + \sum_{i \le t} G_t \cdots G_{i+1}\, k_i v_i^\top .$$
#
# The transitions $G_j$ are no longer diagonal, so their products are dense $K \times K$
# matrices, different for every pair $(t, i)$. Forming them costs $O(K^2)$ to $O(K^3)$ per pair.
# The DeltaNet paper (Yang et al., NeurIPS 2024) met the same problem for
# $G_t = I - \beta_t k_t k_t^\top$. Its answer was to keep products of such matrices in a
# *WY representation*: identity plus a sum of a few outer products, with the vectors found by a
# short triangular recursion (Bischof & Van Loan, 1987). Chapter 8 introduced the delta rule
# itself. Here we need the chunked version, with a per-channel decay in every step and with
# independent vectors $a_t \neq b_t$. We derive it directly, because the route through $E$
# makes the decay easy to handle.
#
# **Name the state-dependent part.** Let $e_t^\top := a_t^\top S_{t-1}$, the row the low-rank
# term reads. Then the update is
#
# $$S_t = D_t S_{t-1} + b_t e_t^\top + k_t v_t^\top ,$$
#
# which *looks* like RWKV-6 with a diagonal transition and two writes per token: $k_t v_t^\top$
# and $b_t e_t^\top$. The catch is that $e_t$ is unknown until $S_{t-1}$ is. The rest of the
# derivation computes all the $e_t$ of a chunk at once.

# %% [markdown]
# ## 3. The derivation in matrix form
#
# Work inside one chunk, with its tokens numbered $t = 1, \dots, C$ (the code counts from 0) and
# its start state $S_0$. Let
#
# $$c_t = \sum_{j \le t} w_j \quad (c_0 = 0), \qquad
# \Gamma_t = \operatorname{diag}(e^{c_t}), \qquad
# \Gamma_{t \leftarrow i} = D_t D_{t-1} \cdots D_{i+1} = \operatorname{diag}\big(e^{c_t - c_i}\big)\ \ (i \le t).$$
#
# $c_t$ is the cumulative log decay from the chunk's start through token $t$, one value per key
# channel. Every exponent we will meet is a $c_t - c_i$ with $i \le t$, a sum of log decays over
# a stretch of time, so it is $\le 0$ and its exponential lies in $[0, 1]$.
#
# **Step 1: unroll with the diagonal transitions only.** Because $D_t$ is diagonal, the
# unrolled update is a plain decayed sum:
#
# $$S_t = \Gamma_t S_0 + \sum_{i=1}^{t} \Gamma_{t \leftarrow i}\,\big(k_i v_i^\top + b_i e_i^\top\big). \tag{1}$$
#
# The package's reference computes all the pairwise exponents $c_t - c_i$ of a chunk at once. It
# computes each one as a sum over its own interval, $\sum_{i<j\le t} w_j$, not as a difference
# of two running sums; section 6 shows why that matters, and section 7 how `chunked` gets the
# same decays without forming them pair by pair.

# %%
print(inspect.getsource(ref.segment_log_decays))

# %%
w_chunk = rwkv7_inputs(1, 6, 1, 3, 2, seed=2, dtype=torch.float64)[1][0, :, 0]   # [C, K]
L = ref.segment_log_decays(w_chunk)
c = w_chunk.cumsum(0)
lower = torch.tril(torch.ones(6, 6, dtype=torch.bool))
assert torch.isneginf(L[~lower]).all()                       # future tokens: e^{-inf} = 0
rwkvlab.check("segment sums == c_t - c_i on i <= t", L[lower], (c[:, None] - c[None])[lower], 1e-12)

# %% [markdown]
# **Step 2: what the removal reads.** Apply (1) at $t - 1$ and multiply by $a_t^\top$:
#
# $$e_t^\top = a_t^\top \Gamma_{t-1} S_0
# + \sum_{i < t} \big(a_t^\top \Gamma_{t-1 \leftarrow i}\, k_i\big)\, v_i^\top
# + \sum_{i < t} \big(a_t^\top \Gamma_{t-1 \leftarrow i}\, b_i\big)\, e_i^\top .$$
#
# The numbers in brackets are the first two of our four matrices, and the vector in front of
# $S_0$ is $a_t$ decayed back to the chunk's start:
#
# $$A_{ab}[t, i] = \sum_\kappa a_{t\kappa}\, e^{c_{t-1,\kappa} - c_{i\kappa}}\, b_{i\kappa},\qquad
# A_{ak}[t, i] = \sum_\kappa a_{t\kappa}\, e^{c_{t-1,\kappa} - c_{i\kappa}}\, k_{i\kappa}\qquad (i < t),$$
#
# $$\tilde a_t = a_t \odot e^{c_{t-1}} .$$
#
# Both matrices are **strictly** lower triangular: $e_t$ reads $S_{t-1}$, which holds only the
# writes of tokens before $t$. Stacking the rows ($E$ and $V$ are $C \times V$, $\tilde A$ is
# $C \times K$):
#
# $$E = \tilde A S_0 + A_{ak} V + A_{ab} E
# \quad\Longleftrightarrow\quad
# (I - A_{ab})\,E = \tilde A S_0 + A_{ak} V. \tag{2}$$
#
# **Step 3: what the read-out sees.** Apply (1) at $t$ and multiply by $r_t^\top$:
#
# $$o_t^\top = \text{scale}\cdot\Big(\tilde r_t^\top S_0 + \sum_{i \le t} A_{rk}[t, i]\, v_i^\top + \sum_{i \le t} A_{rb}[t, i]\, e_i^\top\Big),$$
#
# $$A_{rk}[t, i] = \sum_\kappa r_{t\kappa}\, e^{c_{t\kappa} - c_{i\kappa}}\, k_{i\kappa},\qquad
# A_{rb}[t, i] = \sum_\kappa r_{t\kappa}\, e^{c_{t\kappa} - c_{i\kappa}}\, b_{i\kappa}\qquad (i \le t),
# \qquad \tilde r_t = r_t \odot e^{c_t}.$$
#
# These two include the diagonal $i = t$, because the read-out sees the updated state. That is
# the one place where "read after write" shows up in the algebra. In matrix form:
#
# $$O = \text{scale}\cdot\big(\tilde R S_0 + A_{rk} V + A_{rb} E\big). \tag{3}$$
#
# **Step 4: the hand-off.** Apply (1) at $t = C$:
#
# $$S_C = \operatorname{diag}(\gamma)\, S_0 + \hat K^\top V + \hat B^\top E,\qquad
# \gamma = e^{c_C},\quad \hat k_i = k_i \odot e^{c_C - c_i},\quad \hat b_i = b_i \odot e^{c_C - c_i}. \tag{4}$$
#
# The four $C \times C$ matrices and the five decayed vectors depend only on the chunk's own
# inputs, never on the state. One function computes them for every chunk of every head at once.

# %%
print(inspect.getsource(ref.intra_chunk_matrices))

# %% [markdown]
# Each matrix should equal its definition, computed here the slow way, one pair $(t, i)$ at a
# time, straight from the cumulative sums.

# %%
C, K, Vd = 8, 4, 3
xs = rwkv7_inputs(1, C, 1, K, Vd, seed=3, dtype=torch.float64)         # one chunk, one head
r1, w1, k1, v1, a1, b1 = (x[0, :, 0] for x in xs)
M = ref.intra_chunk_matrices(r1, w1, k1, a1, b1)
c1 = w1.cumsum(0)
c1_prev = torch.cat([torch.zeros(1, K, dtype=torch.float64), c1[:-1]])      # c_{t-1}


def by_definition(x, c_row, y, strict):
    out = torch.zeros(C, C, dtype=torch.float64)
    for t in range(C):
        for i in range(t if strict else t + 1):
            out[t, i] = (x[t] * torch.exp(c_row[t] - c1[i]) * y[i]).sum()
    return out


for name, want in [("A_ab", by_definition(a1, c1_prev, b1, True)), ("A_ak", by_definition(a1, c1_prev, k1, True)),
                   ("A_rb", by_definition(r1, c1, b1, False)), ("A_rk", by_definition(r1, c1, k1, False))]:
    rwkvlab.check(f"{name} by definition", M[name], want, 1e-12)
assert torch.all(torch.diagonal(M["A_ab"]) == 0) and torch.all(torch.diagonal(M["A_ak"]) == 0)

# %% [markdown]
# ## 4. The UT transform: solving (2) by forward substitution
#
# Equation (2) asks for $(I - A_{ab})^{-1}$. Two facts make this easy.
#
# - $I - A_{ab}$ is **unit lower triangular**: ones on the diagonal, zeros above. Its
#   determinant is 1, so it is invertible whatever $a$, $b$ and $w$ are, and its inverse is
#   unit lower triangular too.
# - The inverse $\mathcal T = (I - A_{ab})^{-1}$ satisfies $\mathcal T = I + A_{ab}\mathcal T$.
#   Row $t$ of that identity reads
#
# $$\mathcal T_{t,:} = I_{t,:} + \sum_{i<t} A_{ab}[t, i]\, \mathcal T_{i,:},$$
#
# where $I_{t,:}$ is row $t$ of the identity (not the removal row $e_t$). So row $t$ needs only
# the rows above it. Building the rows one after another is forward
# substitution. There are no divisions, because the diagonal is 1, and no pivoting. The cost is
# $O(C^3)$ per chunk, which is small next to the $O(C^2 K)$ of the matrices when $C \lesssim K$.
# DeltaNet calls this step the *UT transform* (crediting Joffrain et al., 2006): it turns the
# recursion into one triangular matrix that then multiplies everything else. The package's
# version is an explicit loop over rows, written without in-place writes so autograd can
# differentiate through it.

# %%
print(inspect.getsource(ref.ut_transform))

# %%
A_ab = M["A_ab"]
T_ut = ref.ut_transform(A_ab)
I_C = torch.eye(C, dtype=torch.float64)
rwkvlab.check("UT transform vs torch.linalg.solve_triangular",
              T_ut, torch.linalg.solve_triangular(I_C - A_ab, I_C, upper=False, unitriangular=True), 1e-12)
rwkvlab.check("(I - A_ab) @ T == I", (I_C - A_ab) @ T_ut, I_C, 1e-12)

# %% [markdown]
# **What the entries of $\mathcal T$ mean.** Expand $(I - A)^{-1} = I + A + A^2 + \cdots$; the
# series stops after $C$ terms because $A$ is strictly lower triangular. The entry
# $(A^m)[t, i]$ sums over paths $t \leftarrow j_1 \leftarrow \dots \leftarrow i$, and each hop
# contributes $a^\top(\text{decays})\,b$. Adding all the paths rebuilds the full transitions:
#
# $$\mathcal T[t, i] = a_t^\top\, G_{t-1} G_{t-2} \cdots G_{i+1}\, b_i \qquad (i < t).$$
#
# So $\mathcal T$ carries the chunk's products of DPLR transitions, squeezed into $C^2$ numbers.
# It stays as tame as those products are. With the model's inputs ($\|a_t\| = 1$,
# $\|b_i\| \le 1$, and transitions whose eigenvalues lie strictly inside the unit circle) its
# entries below the diagonal are small; on this chunk they stay below one in size. That is an
# observation, not a bound: a transition with spectral radius below 1 can still stretch some
# vectors (its norm can exceed 1, since $G$ is not symmetric), so a product of several could
# give a larger entry. Let us check the formula.

# %%
G = [torch.diag(w1[j].exp()) + torch.outer(b1[j], a1[j]) for j in range(C)]   # G_j = D_j + b_j a_jᵀ
T_paths = torch.eye(C, dtype=torch.float64)
for t in range(C):
    for i in range(t):
        P = torch.eye(K, dtype=torch.float64)
        for j in range(i + 1, t):
            P = G[j] @ P
        T_paths[t, i] = a1[t] @ P @ b1[i]
rwkvlab.check("T[t, i] == a_tᵀ G_{t-1}···G_{i+1} b_i", T_ut, T_paths, 1e-12)
off_diagonal = torch.tril(T_ut, -1).abs().max().item()
print(f"largest |T[t, i]|, i < t, with the model's inputs: {off_diagonal:.2f}")
assert off_diagonal < 1

# %% [markdown]
# **The WY representation.** Solve (2) with $\mathcal T$:
#
# $$E = \underbrace{\mathcal T \tilde A}_{W}\, S_0 + \underbrace{\mathcal T A_{ak} V}_{U} = W S_0 + U. \tag{5}$$
#
# $W$ ($C \times K$) and $U$ ($C \times V$) are the "w" and "u" of DeltaNet's WY form, with the
# decay built in, and neither depends on the state. The name comes from what (5) says about the
# chunk's transition. Put $V = 0$ into (4) and (5) to get $S_C = (\operatorname{diag}(\gamma) + \hat B^\top W)\,S_0$:
#
# $$G_C G_{C-1} \cdots G_1 \;=\; \operatorname{diag}(\gamma) + \sum_{i=1}^{C} \hat b_i\, w_i^\top ,$$
#
# a product of $C$ diagonal-plus-rank-one matrices written as one diagonal plus a sum of $C$
# outer products. This is the DPLR analogue of DeltaNet's
# $\prod_t (I - \beta_t k_t k_t^\top) = I - \sum_t w_t k_t^\top$. The next cell checks both
# claims: the product of transitions, and the rows $E$ against $a_t^\top S_{t-1}$ recorded from
# the loop.

# %%
W_wy = T_ut @ M["a_start"]
P_chunk = torch.eye(K, dtype=torch.float64)
for j in range(C):
    P_chunk = G[j] @ P_chunk
rwkvlab.check("G_C···G_1 == diag(γ) + B̂ᵀ W", P_chunk, torch.diag(M["gamma"]) + M["b_end"].T @ W_wy, 1e-12)

S0 = torch.randn(1, 1, K, Vd, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
state, rows = S0, []
for t in range(C):
    rows.append(a1[t] @ state[0, 0])                                # e_tᵀ = a_tᵀ S_{t-1}, before the step
    _, state = wkv7.step(*(x[:, t] for x in xs), state)
U_wy = T_ut @ (M["A_ak"] @ v1)
rwkvlab.check("E = W S_0 + U reproduces a_tᵀ S_{t-1}", W_wy @ S0[0, 0] + U_wy, torch.stack(rows), 1e-12)

# %% [markdown]
# ## 5. A picture of the decomposition
#
# With a zero start state, the map from values to outputs is linear and acts on each value
# channel separately: $o_t = \sum_s M[t, s]\, v_s$ for a lower-triangular $T \times T$ matrix
# $M$, RWKV-7's "attention matrix". Feed the loop the one-hot values $v_s = \mathbf e_s$ (so
# $V = T$) and its output *is* $M$. The chunked form splits $M$ into blocks:
#
# - the **diagonal blocks** come from the chunk's own tokens, by (2), (3) and (5) with
#   $S_0 = 0$: $M_{nn} = A_{rk} + A_{rb}\,\mathcal T A_{ak}$, all in parallel over chunks;
# - every block **below the diagonal** reaches token $t$ through the state $S_{[n]}$ handed
#   over at the chunk boundary. The chunked form never builds these blocks; it carries one
#   $K \times V$ state instead.
#
# The next cell draws $|M|$ on a log scale, outlines the chunks, and asserts that each diagonal
# block is exactly what the intra-chunk matrices predict.

# %%
Tm, Cm, Km = 48, 16, 16
rm, wm, km, _, am, bm = rwkv7_inputs(1, Tm, 1, Km, 1, seed=5, dtype=torch.float64)
onehot = torch.eye(Tm, dtype=torch.float64)[None, :, None, :]          # v_s = e_s, [1, T, 1, V=T]
M_full = wkv7.naive(rm, wm, km, onehot, am, bm)[0][0, :, 0, :]        # o_t[s] = M[t, s]
for n in range(Tm // Cm):
    blk = slice(n * Cm, (n + 1) * Cm)
    Mi = ref.intra_chunk_matrices(*(x[0, blk, 0] for x in (rm, wm, km, am, bm)))
    predicted = Mi["A_rk"] + Mi["A_rb"] @ ref.ut_transform(Mi["A_ab"]) @ Mi["A_ak"]
    rwkvlab.check(f"diagonal block {n} == A_rk + A_rb T A_ak", M_full[blk, blk], predicted, 1e-12)
assert torch.all(torch.triu(M_full, 1) == 0)                            # causal: nothing from the future

fig, ax = plt.subplots(figsize=(6.2, 5.2))
img = ax.imshow(torch.log10(M_full.abs() + 1e-12).numpy(), cmap="magma", vmin=-6, vmax=1)
for n in range(Tm // Cm):
    lo = n * Cm - 0.5
    ax.add_patch(plt.Rectangle((lo, lo), Cm, Cm, fill=False, ec="cyan", lw=2))
    if n:
        ax.add_patch(plt.Rectangle((-0.5, lo), n * Cm, Cm, fill=False, ec="white", lw=1, ls="--"))
        ax.annotate("", xy=(lo, lo + 2), xytext=(lo - Cm + 2, lo + 2),
                    arrowprops=dict(arrowstyle="->", color="white"))
ax.text(Cm / 2, 2 * Cm + Cm / 2, "through\nthe state $S_{[n]}$", color="white", ha="center", va="center", fontsize=9)
ax.text(2 * Cm + Cm / 2, 2 * Cm - 3, "intra-chunk:\n$A_{rk}+A_{rb}\\mathcal{T}A_{ak}$", color="cyan",
        ha="center", va="bottom", fontsize=9)
ax.set_xlabel("value position s")
ax.set_ylabel("output position t")
ax.set_title(f"RWKV-7's effective attention matrix |M[t, s]| (log10), chunks of C = {Cm}")
fig.colorbar(img, ax=ax, shrink=0.8)
plt.show()

# %% [markdown]
# The four matrices of one chunk, and $\mathcal T$, look like this. The two "removal" matrices
# are strictly lower triangular and the two "read-out" matrices include the diagonal. With the
# model's inputs every entry of $A_{ab}$ is at most 1 in size: $\|a_t\| = 1$,
# $\|b_i\| \le 1$, and the decays between them are factors $\le 1$. $\mathcal T$ is unit
# lower triangular, and its entries below the diagonal are small.

# %%
Mi = ref.intra_chunk_matrices(*(x[0, :Cm, 0] for x in (rm, wm, km, am, bm)))
panels = [("$A_{ab}$", Mi["A_ab"]), ("$A_{ak}$", Mi["A_ak"]), ("$A_{rb}$", Mi["A_rb"]), ("$A_{rk}$", Mi["A_rk"]),
          ("$\\mathcal{T}=(I-A_{ab})^{-1}$", ref.ut_transform(Mi["A_ab"]))]
fig, axes = plt.subplots(1, 5, figsize=(15, 3.2))
for ax, (title, mat) in zip(axes, panels):
    lim = mat.abs().max().item()
    ax.imshow(mat.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle("one chunk's state-independent matrices (red > 0, blue < 0; rows t, columns i)")
plt.show()
assert torch.all(torch.diagonal(Mi["A_rk"]) != 0) and torch.all(torch.triu(Mi["A_ab"]) == 0)
assert Mi["A_ab"].abs().max() <= 1

# %% [markdown]
# ## 6. Numerics: two traps and how the package avoids them
#
# **Trap 1: factorizing the decay.** In RWKV-6 and GLA it is tempting to split
# $e^{c_t - c_i} = e^{c_t}\cdot e^{-c_i}$, because then $A_{rk} = (R \odot e^{C})(K \odot e^{-C})^\top$
# is a single matrix product, the shape tensor cores like. But $-c_i$ grows with the length of
# the chunk and the strength of the decay. In float32, $e^{x}$ overflows once $x > 88.7$. A chunk
# of 16 tokens with log decay $-8$ (a factor of $3\times 10^{-4}$ per step: a channel that
# forgets almost at once) reaches $-c_{16} = 128$. The factorized form then multiplies
# $0 \times \infty$ and returns NaN. The pairwise form exponentiates each $c_t - c_i \le 0$ on its
# own and cannot overflow for any $w \le 0$. It costs more, though: $C^2K$ exponentials and
# multiply-adds per matrix and chunk, none of them on tensor cores. The GLA paper (§4.3) takes a
# middle road with a second level of chunking: factorized matrix products between sub-chunks,
# where the exponents stay bounded, and the exact pairwise form only inside each sub-chunk.
# Chapter 11's chunked kernel (*RWKV-7 in Triton II*) decides per chunk: the factorized products
# where the chunk's whole decay keeps $e^{-c}$ small (always, for real RWKV-7 decays), the
# pairwise form where it does not; the package's `chunked` takes the middle road all the way
# down (section 7).
#
# The realistic RWKV-7 decays are much milder: $w \in (-e^{-0.5}, 0) \approx (-0.61, 0)$, so a
# 16-token chunk reaches at most $-c \approx 9.7$. Still, a book's reference should not break on
# legal input, and the validation accepts any $w \le 0$.

# %%
def A_rk_factorized(r, w, k):
    """The tempting (unstable) form: (r ⊙ e^{c}) (k ⊙ e^{-c})ᵀ, masked to i ≤ t."""
    c = w.cumsum(-2)
    return torch.tril((r * c.exp()) @ (k * (-c).exp()).transpose(-1, -2))


C16, K16 = 16, 16
r2, w2, k2, v2, a2, b2 = (x[0, :, 0] for x in rwkv7_inputs(1, C16, 1, K16, 4, seed=6, w_const=-8.0))
unstable = A_rk_factorized(r2, w2, k2)
stable = ref.intra_chunk_matrices(r2, w2, k2, a2, b2)["A_rk"]
reference64 = ref.intra_chunk_matrices(*(x.double() for x in (r2, w2, k2, a2, b2)))["A_rk"]
print(f"w = -8, C = 16: largest -c_t = {-w2.cumsum(0).min().item():.0f} > 88.7 = log(float32 max)")
assert not torch.isfinite(unstable).all()                                # the factorized form breaks
assert torch.isfinite(stable).all()
rwkvlab.check("pairwise A_rk (float32, w = -8) vs float64", stable, reference64, 1e-6)

x_strong = rwkv7_inputs(1, 40, 2, 16, 16, seed=7, w_const=-8.0)
rwkvlab.check("chunked vs naive, w = -8 everywhere", wkv7.chunked(*x_strong, output_final_state=True),
              wkv7.naive(*x_strong, output_final_state=True), 1e-5)

# %% [markdown]
# **Trap 2: differences of running sums, seen by the gradient.** Computing $c_t - c_i$ as the
# difference of two cumulative sums avoids overflow and gives a fine forward pass. Its
# gradient is another matter. Take the diagonal $i = t$: the value $e^{c_t - c_t} = 1$ does not
# depend on $w$ at all, but autograd sees $c_t$ enter twice, with $+$ and $-$, and routes two
# $O(1)$ contributions into the same running sum, where they cancel. The true gradient of a
# strongly decaying channel is tiny (about $e^{w}$). After the cancellation it is buried under
# float32 rounding of the $O(1)$ terms, about $10^{-7}$. The package avoids the subtraction:
# `segment_log_decays` sums each interval $\sum_{i<j\le t} w_j$ directly (a cumulative sum of a
# masked $C \times C$ grid), so the diagonal is a constant 0, and `intra_chunk_matrices` takes
# $e^{c_{t-1} - c_i}$ by shifting rows instead of subtracting $w_t$. The cell measures the
# gradient $\partial/\partial w$ of $\langle G, A_{rk}\rangle$ in float32 both ways, against
# float64.

# %%
def A_rk_by_differences(r, w, k):
    c = w.cumsum(-2)
    d = (c.unsqueeze(-2) - c.unsqueeze(-3)).masked_fill(~torch.tril(torch.ones(len(w), len(w), dtype=torch.bool))[..., None], -math.inf)
    return torch.einsum("tk,tik,ik->ti", r, d.exp(), k)


def A_rk_by_segments(r, w, k):
    return torch.einsum("tk,tik,ik->ti", r, ref.segment_log_decays(w).exp(), k)


def grad_w(fn, w, dtype):
    w = w.to(dtype).requires_grad_()
    weight = torch.linspace(-1, 1, C16 * C16, dtype=dtype).reshape(C16, C16)
    return torch.autograd.grad((fn(r2.to(dtype), w, k2.to(dtype)) * weight).sum(), w)[0]


print("log decay | grad rel err: differences  segment sums")
errors = {}
for wv in (-0.5, -2.0, -8.0, -20.0):
    w_test = torch.full((C16, K16), wv, dtype=torch.float64)
    exact = grad_w(A_rk_by_segments, w_test, torch.float64)
    errors[wv] = [rel_err(grad_w(f, w_test, torch.float32), exact) for f in (A_rk_by_differences, A_rk_by_segments)]
    print(f"{wv:9.1f} | {errors[wv][0]:22.0e} {errors[wv][1]:13.0e}")
assert all(seg < 1e-5 for _, seg in errors.values())                       # segment sums: float32-accurate
assert errors[-8.0][0] > 1e-4 and errors[-20.0][0] > 0.5                   # differences: lost

# %% [markdown]
# ## 7. Factoring at midpoints: the four matrices as matrix products
#
# The pairwise form *defines* the four matrices, and `intra_chunk_matrices` stays the
# reference. As a way to compute them in plain torch it is slow: it writes $TCK$ exponentials,
# and on a CPU moving that much memory is most of the cost. The middle road of Trap 1 removes
# that tensor if we take it all the way down.
#
# Split a block of tokens at its midpoint $m$. For a column $i \le m$ and a row $t > m$ the decay
# passes through $m$ ($c_t - c_m$ names the log decay over $(m, t]$, as in section 3):
#
# $$e^{c_t - c_i} = e^{c_t - c_m}\cdot e^{c_m - c_i} .$$
#
# Both factors are decays over forward intervals, in $[0, 1]$, so unlike $e^{c_t}\cdot e^{-c_i}$
# this cannot overflow. The block of $A_{rk}$ coupling the second half to the first is then one
# matrix product, rows $r_t \odot e^{c_t - c_m}$ times columns $k_i \odot e^{c_m - c_i}$, and the
# same product with columns $b_i$ gives $A_{rb}$, with rows $a_t \odot e^{c_{t-1} - c_m}$ (also
# $\le 1$, since $t - 1 \ge m$) $A_{ak}$ and $A_{ab}$. Each half against itself is the same
# problem on half the tokens: split again. Single tokens carry no decay: $r_t \cdot k_t$ and
# $r_t \cdot b_t$ on the diagonals of $A_{rk}$, $A_{rb}$; zero for $A_{ak}$, $A_{ab}$.
#
# `chunk_matrices` runs this bottom-up, merging blocks of 1, 2, 4, … tokens in pairs. Each token
# carries its rows decayed from the start of its block and its columns decayed to the block's
# end; each block carries its total decay. A merge is one batched product for the coupling
# block; then the right block's rows are multiplied by the left block's total, the left block's
# columns by the right block's, and the totals multiply. After the last merge the rows are
# $\tilde r, \tilde a$, the columns $\hat k, \hat b$, the total $\gamma$. Every decay is a product
# of per-token factors $e^{w_j} \le 1$ over its own interval: nothing is divided and no exponent is
# a difference of running sums, so both traps of section 6 stay shut. The multiply-adds are those
# of the pairwise form, as $\log_2 C$ batched products and $2\log_2 C$ rescalings per chunk.

# %%
print(inspect.getsource(ref.chunk_matrices))

# %% [markdown]
# Which merge fills which entry (the highest bit in which $t$ and $i$ differ):

# %%
Cd = 16
level = torch.full((Cd, Cd), float("nan"))
for t in range(Cd):
    for i in range(t + 1):
        level[t, i] = 0 if i == t else (t ^ i).bit_length()     # 1: blocks of 1 merged, 2: of 2, ...
fig, ax = plt.subplots(figsize=(5.2, 4.4))
img = ax.imshow(level.numpy(), cmap=plt.get_cmap("viridis", 5), vmin=-0.5, vmax=4.5)
cbar = fig.colorbar(img, ax=ax, ticks=range(5), shrink=0.85)
cbar.ax.set_yticklabels(["diagonal", "merge of 1s", "merge of 2s", "merge of 4s", "merge of 8s"])
ax.set_xlabel("column i")
ax.set_ylabel("row t")
ax.set_xticks(range(0, Cd, 4))
ax.set_yticks(range(0, Cd, 4))
ax.set_title(f"C = {Cd}: one batched product per merge level")
plt.show()

# %% [markdown]
# The halving must reproduce the pairwise definition, for a power of two, for a length it pads,
# and in float32 with $w = -8$, where the factorized form of section 6 broke.

# %%
for Cc in (16, 7):
    xs = rwkv7_inputs(1, Cc, 2, 8, 3, seed=30 + Cc, dtype=torch.float64)
    r3, w3, k3, _, a3, b3 = (x[0].transpose(0, 1) for x in xs)        # [H, C, K]: heads lead
    want, got = ref.intra_chunk_matrices(r3, w3, k3, a3, b3), ref.chunk_matrices(r3, w3, k3, a3, b3)
    rwkvlab.check(f"chunk_matrices == intra_chunk_matrices, C = {Cc}, all nine pieces",
                  [got[n] for n in want], [want[n] for n in want], 1e-12)
got32 = ref.chunk_matrices(r2, w2, k2, a2, b2)                             # w = -8, section 6's chunk
four = ("A_ab", "A_ak", "A_rb", "A_rk")
assert all(torch.isfinite(got32[n]).all() for n in got32)
rwkvlab.check("chunk_matrices, w = -8, float32 vs float64", [got32[n] for n in four],
              [ref.intra_chunk_matrices(*(x.double() for x in (r2, w2, k2, a2, b2)))[n] for n in four], 1e-6)

# %% [markdown]
# And Trap 2 on the whole of `chunked`: $w = -0.01$ except two tokens with $w = -10^4$ and
# $-10^3$ (alternate channels). A running sum through them reaches $10^4$, where float32 keeps
# about $10^{-3}$, so a difference of two such sums would cost about $10^{-4}$ relative. Outputs,
# final state and all gradients must stay at float32 accuracy.

# %%
xh = list(rwkv7_inputs(1, 40, 2, 16, 8, seed=31, dtype=torch.float64, w_const=-0.01))
xh[1][:, 11, :, ::2] = -1e4
xh[1][:, 27, :, 1::2] = -1e3
gh = torch.Generator().manual_seed(32)
s0h = torch.randn(1, 2, 16, 8, generator=gh, dtype=torch.float64)
doh, dSh = torch.randn(1, 40, 2, 8, generator=gh, dtype=torch.float64), torch.randn(1, 2, 16, 8, generator=gh, dtype=torch.float64)


def with_grads(fn, inputs, state):
    inputs, state = [x.clone().requires_grad_() for x in inputs], state.clone().requires_grad_()
    o, S = fn(*inputs, initial_state=state, output_final_state=True)
    loss = (o * doh.to(o.dtype)).sum() + (S * dSh.to(S.dtype)).sum()
    return [o, S, *torch.autograd.grad(loss, [*inputs, state])]


rwkvlab.check("chunked float32 vs naive float64, w = -1e4 and -1e3 among -0.01: o, S_T and all gradients",
              with_grads(wkv7.chunked, [x.float() for x in xh], s0h.float()), with_grads(wkv7.naive, xh, s0h), 1e-6)

# %% [markdown]
# The factored road that `chunked` takes without autograd (section 8), against the pairwise
# definition in float64, on chunks with realistic decays up to the span it is allowed:

# %%
print(inspect.getsource(ref.factored_matrices))
for scale in (0.5, 1.0):                                       # w in (-scale, 0): spans near 9 and 19 over 32
    r4, w4, k4, v4, a4, b4 = (x[0, :, 0] for x in rwkv7_inputs(1, 32, 1, 16, 8, seed=33, decay=scale))
    span = -w4.sum(0).min().item()
    assert span <= ref.CHUNK_FACTOR_SPAN                       # a chunk chunked would factor
    fac = ref.factored_matrices(r4, w4, k4, a4, b4)
    exact = ref.intra_chunk_matrices(*(x.double() for x in (r4, w4, k4, a4, b4)))
    rwkvlab.check(f"factored_matrices, chunk of 32 with decay span {span:.1f}, float32 vs float64",
                  [fac[n] for n in exact], [exact[n] for n in exact], 1e-6)

# %% [markdown]
# ## 8. The whole algorithm
#
# Put (2)–(5) together, and move everything that does not need the state out of the sequential
# part. Write $S$ for a chunk's start state. By (5), $E = WS + U$ with $U = \mathcal T A_{ak} V$;
# put that into (3) and (4):
#
# $$O = \text{scale}\cdot\big(R\,S + M_\text{loc} V\big),\qquad R = \tilde R + A_{rb} W,\qquad M_\text{loc} = A_{rk} + A_{rb}\,\mathcal T A_{ak},$$
#
# $$S_\text{next} = P\,S + Q,\qquad P = \operatorname{diag}(\gamma) + \hat B^\top W,\qquad Q = \big(\hat K + (\mathcal T A_{ak})^\top \hat B\big)^\top V .$$
#
# $M_\text{loc}$ is the chunk's diagonal block of the attention matrix of section 5, $P$ the
# chunk's product of transitions in WY form (section 4), $Q$ what the chunk writes from a zero
# start. None depends on the state. So `chunked`
#
# 1. computes, for every chunk of every head at once, the chunk's pieces — by `chunk_matrices`,
#    or, when no gradient is taken and every chunk's decay $-c_C$ is at most
#    `CHUNK_FACTOR_SPAN` $= 20$ (always, for real RWKV-7 decays), by `factored_matrices`: Trap 1's
#    product $e^{c_t}\cdot e^{-c_i}$, safe there (factors $\le e^{20}$, rounding $\le 2.4\cdot10^{-6}$;
#    the cell below checks it), in one batched product instead of one per halving level. Under
#    autograd it never takes that road, because the $+c$ and $-c$ of the product cancel in
#    $\bar w$ (section 6's second trap). Then
#    $\mathcal T = (I - A_{ab})^{-1}$ by one batched `torch.linalg.solve_triangular` (LAPACK's
#    forward substitution, the recursion of `ut_transform`), then $W$, $\mathcal T A_{ak}$, $P$,
#    $Q$, $R$ and $M_\text{loc} V$ as batched matrix products;
# 2. runs $S \leftarrow P S + Q$ from chunk to chunk, the only sequential step (one batched
#    $K \times K$ by $K \times V$ product per chunk);
# 3. computes $O = \text{scale}\cdot(R\,S + M_\text{loc} V)$ for all chunks from the kept start states.
#
# Carrying $E$ through the loop instead (section 4's order) saves multiply-adds when $C < K$,
# but needs three small operations per chunk instead of one, and in plain torch each pays a fixed
# cost (exercise 5). The maps $S \mapsto PS + Q$ also compose: two chunks in a row are one map
# with $P_2P_1$ and $P_2Q_1 + Q_2$. Chapter 11's folded forward uses that to take 64 tokens per
# sequential step on a GPU. "At once" means one *segment* at a time: about `SEGMENT` token-heads
# (batch × heads × tokens) of whole chunks, so that a segment's intermediates are still in the
# CPU's cache when they are used; only the state passes between segments.
#
# A sequence whose length is not a multiple of $C$ is padded with tokens that do nothing:
# $w = 0$ (factor 1), $k = a = b = 0$. Such a token leaves the state exactly as it was, so the
# final state is unaffected and the padded outputs are dropped; each chunk is padded to a power
# of two the same way, for the halving. Sequences packed with `cu_seqlens` run one after
# another, each with its own initial state, so no chunk straddles two sequences.

# %%
print(inspect.getsource(ref._chunked_one))
print(inspect.getsource(wkv7.chunked))

# %% [markdown]
# The data flow of those three steps, for a sequence of four chunks: everything in the two
# outer rows runs for all chunks at once; only the middle row, one $K\times K$ by $K\times V$
# product per chunk, runs in order. The shapes in the boxes are the ones `chunked` builds at
# $C = 16$, $K = V = 64$; the cell checks them on the package's own `chunk_matrices`.

# %%
from matplotlib.patches import FancyBboxPatch

Cd, Kd, Vd, nd = 16, 64, 64, 4
xd = rwkv7_inputs(1, Cd, 1, Kd, Vd, seed=40)
md = ref.chunk_matrices(xd[0][0, :, 0], xd[1][0, :, 0], xd[2][0, :, 0], xd[4][0, :, 0], xd[5][0, :, 0])
assert md["A_ab"].shape == (Cd, Cd) and md["a_start"].shape == (Cd, Kd) and md["gamma"].shape == (Kd,)
fig, ax = plt.subplots(figsize=(11, 4.2))
ax.set_xlim(-1.9, nd * 2.6 + 0.4), ax.set_ylim(0, 3.2), ax.axis("off")
flow_rows = [(2.45, "1. per chunk,\nall at once", f"A's, T = (I - A_ab)^-1\nW, TA_ak, P, Q, R, M_loc\n({Cd}x{Cd}, {Cd}x{Kd}, {Kd}x{Kd})",
         "#cfe3f7"),
             (1.35, "2. the scan,\nin order", f"S <- P S + Q\n({Kd}x{Kd} @ {Kd}x{Vd})", "#f7d9c4"),
             (0.25, "3. per chunk,\nall at once", f"O = scale (R S + M_loc V)\n({Cd}x{Kd} @ {Kd}x{Vd})", "#d5efd0")]
for y, label, text, color in flow_rows:
    ax.text(-1.85, y + 0.35, label, fontsize=9, weight="bold", va="center")
    for n in range(nd):
        x0 = 0.4 + n * 2.6
        ax.add_patch(FancyBboxPatch((x0, y), 2.1, 0.7, boxstyle="round,pad=0.02", fc=color, ec="k", lw=0.8))
        ax.text(x0 + 1.05, y + 0.35, f"chunk {n}\n{text}" if y > 2 else text, ha="center", va="center", fontsize=6.5)
for n in range(nd):
    x0 = 0.4 + n * 2.6
    ax.annotate("", xy=(x0 + 1.05, 2.05), xytext=(x0 + 1.05, 2.45), arrowprops=dict(arrowstyle="->"))   # P, Q down
    ax.annotate("", xy=(x0 + 1.05, 0.95), xytext=(x0 + 1.05, 1.35), arrowprops=dict(arrowstyle="->"))   # S down
    if n + 1 < nd:
        ax.annotate("", xy=(x0 + 2.6, 1.7), xytext=(x0 + 2.1, 1.7), arrowprops=dict(arrowstyle="->", color="C3"))
ax.set_title("wkv7.chunked: state-independent work in parallel, one light recurrence between", fontsize=10)
plt.show()


# %% [markdown]
# Now the ladder's check: the chunked form against the loop in float32, for several shapes
# (one token; odd lengths that are not a multiple of the chunk; several heads; $K \neq V$),
# several chunk sizes, with and without an initial state. The tolerance is the book's $10^{-5}$.

# %%
cases = [  # (B, T, H, K, V, chunk_size)
    (1, 1, 1, 4, 4, 16),
    (2, 13, 2, 8, 6, 4),
    (1, 37, 2, 16, 16, 16),
    (2, 50, 2, 16, 8, 7),
    (1, 64, 1, 16, 32, 64),
]
for Bc, Tc, Hc, Kc, Vc, Cc in cases:
    x = rwkv7_inputs(Bc, Tc, Hc, Kc, Vc, seed=Tc)
    s0 = torch.randn(Bc, Hc, Kc, Vc, generator=torch.Generator().manual_seed(Cc))
    got = wkv7.chunked(*x, scale=0.5, initial_state=s0, output_final_state=True, chunk_size=Cc)
    want = wkv7.naive(*x, scale=0.5, initial_state=s0, output_final_state=True)
    assert got[0].dtype == torch.float32 and got[1].shape == (Bc, Hc, Kc, Vc)
    rwkvlab.check(f"chunked vs naive B={Bc} T={Tc} H={Hc} K={Kc} V={Vc} C={Cc}", got, want, 1e-5)

# %% [markdown]
# Packed variable-length input: four sequences in one row, each with its own initial state,
# must give exactly what four separate runs give.

# %%
cu = torch.tensor([0, 5, 6, 23, 30])
x = rwkv7_inputs(1, 30, 2, 8, 8, seed=8)
s0 = torch.randn(4, 2, 8, 8, generator=torch.Generator().manual_seed(9))
o_packed, S_packed = wkv7.chunked(*x, initial_state=s0, output_final_state=True, cu_seqlens=cu, chunk_size=8)
bounds = cu.tolist()
o_sep, S_sep = zip(*(wkv7.naive(*(t[:, lo:hi] for t in x), initial_state=s0[n:n + 1], output_final_state=True)
                     for n, (lo, hi) in enumerate(zip(bounds, bounds[1:]))))
rwkvlab.check("chunked varlen vs separate naive runs", (o_packed, S_packed), (torch.cat(o_sep, 1), torch.cat(S_sep, 0)), 1e-5)

# %% [markdown]
# Half-precision inputs accumulate in float32: the output comes back in the input dtype and the
# state in float32. The error is then set by bf16's 8 significant bits, a relative rounding
# error of up to $2^{-8} \approx 4\times10^{-3}$ per number, not by the algorithm. We allow 1e-2 relative against the float32
# loop on bf16-rounded inputs (the check below comes out near $2\times10^{-3}$: the output's own rounding).

# %%
xb = tuple(t.bfloat16() for t in rwkv7_inputs(1, 40, 2, 16, 16, seed=10))
ob, Sb = wkv7.chunked(*xb, output_final_state=True)
assert ob.dtype == torch.bfloat16 and Sb.dtype == torch.float32
rwkvlab.check("chunked bf16 vs naive float32 (same rounded inputs)", ob, wkv7.naive(*(t.float() for t in xb))[0], 1e-2)

# %% [markdown]
# ### The same pieces under FLA's names
#
# flash-linear-attention runs RWKV-7 through its generalized delta rule in
# diagonal-plus-low-rank (DPLR) form, `fla/ops/generalized_delta_rule/dplr/` (by Songlin Yang and
# Yu Zhang), and its kernels compute exactly the pieces derived above. The names differ only in
# the query ($q$ for the book's $r$) and in the decayed vectors. Read with this table, the
# book's derivation is a map of that code. The launch column is `chunk_dplr_fwd` in
# `fla/ops/generalized_delta_rule/dplr/chunk.py`; the last column names the piece of
# `rwkvlab/wkv7/kernels_chunked.py` (chapter 11, *Triton II*) that computes it: a prep launch
# parallel over chunks, then the state pass.
#
# | this chapter | FLA's DPLR name | computed by (FLA launch) | here (torch) | chapter 11's launch |
# | --- | --- | --- | --- | --- |
# | $c_t$, $c_{t-1}$ (chunk-local log decays) | `gi`, `ge` | `chunk_rwkv6_fwd_cumsum` | `segment_log_decays` (as interval sums) | prep (`_prefixes`) |
# | $A_{rk}, A_{rb}, A_{ak}, A_{ab}$ | `A_qk`, `A_qb`, `A_ak`, `A_ab` | `chunk_dplr_fwd_intra` | `intra_chunk_matrices` | prep (`_pairs`: factored or exact per chunk) |
# | $\tilde r = r\odot e^{c_t}$, $\tilde a = a\odot e^{c_{t-1}}$ | `qg` (scale folded in), `ag` | `chunk_dplr_fwd_intra` | `r_start`, `a_start` | prep (`a_dec`; stores `r_dec` as `Rd`) |
# | $\hat k, \hat b$ (decayed to the chunk's end) | `kg`, `bg` | `chunk_dplr_fwd_intra` | `k_end`, `b_end` | prep (stores `Kd`, `Bd`) |
# | $\mathcal T = (I - A_{ab})^{-1}$ | `A_ab_inv` | `prepare_wy_repr_fwd` | `ut_transform`, `solve_triangular` | prep (`_unit_lower_inverse`: repeated squaring) |
# | $W = \mathcal T\tilde A$, $U = \mathcal T A_{ak} V$ | `w`, `u` | `prepare_wy_repr_fwd` | `chunk_matrices` | prep (stores `W`, `U`) |
# | chunk-start states $S$; removal rows $E = WS + U$ | `h`; `v_new` | `chunk_dplr_fwd_h` | the state loop of `_chunked_one` | state pass (`E = W S + U`, `S ←`) |
# | $O = \text{scale}(\tilde R S + A_{rk}V + A_{rb}E)$ | `o` | `chunk_dplr_fwd_o` | equation (3) | prep stores $A_{rk}V$ (`Op`) and $A_{rb}$; state pass adds $\tilde R S + A_{rb}E$ (FLA: a launch of its own) |
#
# Two differences are worth knowing. FLA forms the pairwise exponents as differences of its
# running sums (`exp(b_gi - b_gk_j)` in `chunk_A_fwd.py`), where this book sums each interval
# (section 6 says why), and it stores `A_qk`, `A_qb` and the decayed vectors in the input's
# 16-bit dtype while keeping `A_ab` and `A_ak` in float32 for the inverse. The cell writes FLA's
# definitions out in torch, from its source, and checks them against the package's pieces on one
# chunk.

# %%
C8, K8 = 8, 4
r8, w8, k8, v8, a8, b8 = (x[0, :, 0] for x in rwkv7_inputs(1, C8, 1, K8, 3, seed=31, dtype=torch.float64))
gi = w8.cumsum(0)                                                   # FLA's gi: inclusive cumsum
ge = gi - w8                                                        # FLA's ge: exclusive
upto = torch.tril(torch.ones(C8, C8, dtype=torch.bool))             # i <= t
before = torch.tril(torch.ones(C8, C8, dtype=torch.bool), -1)       # i < t
fla_names = {
    "A_qk": torch.where(upto, torch.einsum("tk,tik,ik->ti", r8, torch.exp(gi[:, None] - gi[None]), k8), 0.),
    "A_qb": torch.where(upto, torch.einsum("tk,tik,ik->ti", r8, torch.exp(gi[:, None] - gi[None]), b8), 0.),
    "A_ak": torch.where(before, torch.einsum("tk,tik,ik->ti", a8, torch.exp(ge[:, None] - gi[None]), k8), 0.),
    "A_ab": torch.where(before, torch.einsum("tk,tik,ik->ti", a8, torch.exp(ge[:, None] - gi[None]), b8), 0.),
    "qg": r8 * torch.exp(gi), "ag": a8 * torch.exp(ge),
    "kg": k8 * torch.exp(gi[-1] - gi), "bg": b8 * torch.exp(gi[-1] - gi),
}
ours = ref.intra_chunk_matrices(r8, w8, k8, a8, b8)
for fla_name, book_name in [("A_qk", "A_rk"), ("A_qb", "A_rb"), ("A_ak", "A_ak"), ("A_ab", "A_ab"),
                            ("qg", "r_start"), ("ag", "a_start"), ("kg", "k_end"), ("bg", "b_end")]:
    rwkvlab.check(f"FLA's {fla_name} (from its definition) == this chapter's {book_name}",
                  fla_names[fla_name], ours[book_name], 1e-12)

# %% [markdown]
# ## 9. Gradients
#
# `chunked` is plain torch, so autograd differentiates it: through the products of the
# halving, the batched triangular solve and the loop over chunks (without autograd
# `chunk_matrices` rescales in place; with it, into new tensors). Both rungs must give the same gradient
# for every input: $r, w, k, v, a, b$, the initial state, and the final state as a second output
# that carries its own upstream gradient. In float64 the two agree to rounding. The float32
# gradients of the chunked form are compared with that float64 reference, with a tolerance of
# 1e-5, the same as the forward's (measured: about $10^{-7}$).

# %%
Bg, Tg, Hg, Kg, Vg = 2, 11, 2, 4, 3
xg = [t.requires_grad_() for t in rwkv7_inputs(Bg, Tg, Hg, Kg, Vg, seed=11, dtype=torch.float64)]
gen = torch.Generator().manual_seed(12)
s0g = torch.randn(Bg, Hg, Kg, Vg, generator=gen, dtype=torch.float64).requires_grad_()
do, dS = torch.randn(Bg, Tg, Hg, Vg, generator=gen, dtype=torch.float64), torch.randn(Bg, Hg, Kg, Vg, generator=gen, dtype=torch.float64)


def grads(fn, inputs, state):
    o, S = fn(*inputs, initial_state=state, output_final_state=True)
    return torch.autograd.grad((o * do.to(o.dtype)).sum() + (S * dS.to(S.dtype)).sum(), [*inputs, state])


g_naive = grads(wkv7.naive, xg, s0g)
g_chunk = grads(lambda *z, **kw: wkv7.chunked(*z, chunk_size=4, **kw), xg, s0g)
x32 = [t.detach().float().requires_grad_() for t in xg]
g_chunk32 = grads(lambda *z, **kw: wkv7.chunked(*z, chunk_size=4, **kw), x32, s0g.detach().float().requires_grad_())
for name, g64, gref, g32 in zip(["r", "w", "k", "v", "a", "b", "initial_state"], g_chunk, g_naive, g_chunk32):
    assert gref.abs().max() > 0
    rwkvlab.check(f"d/d{name}: chunked vs naive (float64)", g64, gref, 1e-10, quiet=True)
    rwkvlab.check(f"d/d{name}: chunked float32 vs float64", g32, gref, 1e-5, quiet=True)
print("gradients of r, w, k, v, a, b, initial_state (from o and final_state): chunked == naive  ok")

# %% [markdown]
# ## 10. One step at a time: inference
#
# At inference the state is carried from token to token and the chunked form is not needed.
# `step` applies the same `_update` as the loop to one token, with vectors `[B, H, K]` and the
# state `[B, H, K, V]`, and returns the new state. Run over a sequence, it must reproduce
# every position of the full forward and its final state.

# %%
print(inspect.getsource(wkv7.step))
x = rwkv7_inputs(2, 10, 2, 8, 4, seed=13)
s0 = torch.randn(2, 2, 8, 4, generator=torch.Generator().manual_seed(14))
o_full, S_full = wkv7.chunked(*x, initial_state=s0, output_final_state=True)
state, o_steps = s0, []
for t in range(10):
    o_t, state = wkv7.step(*(z[:, t] for z in x), state)
    o_steps.append(o_t)
rwkvlab.check("step, token by token, vs chunked", (torch.stack(o_steps, 1), state), (o_full, S_full), 1e-5)

# %% [markdown]
# ## 11. What it costs
#
# Count the multiply-adds per head for a sequence of $T$ tokens in chunks of $C$, as `chunked`
# does them (its matrix products are dense, even where one factor is triangular):
#
# | piece | per chunk | over the sequence |
# |---|---|---|
# | four matrices $A_{ab}, A_{ak}, A_{rb}, A_{rk}$ by halving | $2C^2K$ | $2TCK$ |
# | $\mathcal T = (I - A_{ab})^{-1}$ (triangular solve) | $\approx C^3/2$ | $TC^2/2$ |
# | $W = \mathcal T\tilde A$, $\mathcal T A_{ak}$ | $C^2K + C^3$ | $TC(K + C)$ |
# | $P = \operatorname{diag}(\gamma) + \hat B^\top W$, $Q = (\hat K + (\mathcal T A_{ak})^\top \hat B)^\top V$ | $CK^2 + C^2K + CKV$ | $TK(K + V) + TCK$ |
# | $R = \tilde R + A_{rb}W$, $M_\text{loc} = A_{rk} + A_{rb}\mathcal T A_{ak}$, $M_\text{loc}V$ | $C^2K + C^3 + C^2V$ | $TC(K + C + V)$ |
# | $S \leftarrow PS + Q$ (sequential) | $K^2V$ | $TK^2V/C$ |
# | $O = \text{scale}\cdot(RS + M_\text{loc}V)$ | $CKV$ | $TKV$ |
#
# In total $O(TC(K+V+C) + TK(K+V))$, plus $TK^2V/C$ for the scan. The
# loop costs about $5TKV$ (read $a^\top S$, decay, two rank-one writes, read out), and all of
# it is sequential. The chunked form does less than twice that arithmetic at $C = 16$ or $32$,
# but only $T/C$ of its steps are sequential, and everything else is large batched matrix
# products. (A cost of $O(BTHKV/C)$ for the chunked form circulates, misstatement 13 of chapter
# 16. That is not right: the
# state-sized work $TKV$ does not shrink with $C$. What shrinks is the number of *sequential*
# steps.) A GPU kernel builds the pairwise exponents tile by tile in registers when a chunk
# needs them, and the factorized products on tensor cores otherwise (chapter 11, *Triton II*).
#
# The cell evaluates the table for a typical RWKV-7 head ($K = V = 64$) at a few chunk sizes.

# %%
def chunked_cost(T, C, K, V):
    return (2 * T * C * K + T * C * C / 2 + T * C * (K + C) + T * K * (K + V) + T * C * K
            + T * C * (K + C + V) + T * K * K * V / C + T * K * V)


Tk, Kk, Vk = 4096, 64, 64
loop_cost = 5 * Tk * Kk * Vk                              # aᵀS, decay, b(aᵀS), kvᵀ, Sᵀr
print(" C | multiply-adds vs the loop | sequential steps")
for Ck in (1, 16, 32, 64):
    print(f"{Ck:2d} | {chunked_cost(Tk, Ck, Kk, Vk) / loop_cost:25.2f} | {Tk // Ck:5d}")
assert chunked_cost(Tk, 32, Kk, Vk) < 2 * loop_cost                       # a small constant more arithmetic

# %% [markdown]
# Arithmetic is not time: the loop pays a fixed cost per call for about ten small operations per
# token, the chunked form for a few dozen large batched products per segment and one small one
# per chunk. The cell times both in this process ($B = 1$, $T = 1024$, $H = 4$, $K = V = 64$,
# float32, no autograd; the defaults were chosen at $T = 4096$), median of three runs, and
# prints what it measured. The numbers depend on the machine and its load, so the book asserts
# nothing about them: timings belong in benchmarks, not tests.

# %%
import statistics
import time


def median_ms(fn, runs=3):
    fn()                                                            # warm up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


xt = rwkv7_inputs(1, 1024, 4, 64, 64, seed=40)
with torch.no_grad():
    t_naive = median_ms(lambda: wkv7.naive(*xt, output_final_state=True))
    print(f"B=1 T=1024 H=4 K=V=64 float32, {torch.get_num_threads()} threads: naive {t_naive:.0f} ms")
    for Ct in (16, 32, 64):
        t_chunk = median_ms(lambda: wkv7.chunked(*xt, output_final_state=True, chunk_size=Ct))
        print(f"  chunked, chunk_size={Ct:2d}: {t_chunk:6.1f} ms   {t_naive / t_chunk:5.1f}x faster than naive")

# %% [markdown]
# ## Summary
#
# - RWKV-7's transition $G_t = D_t + b_t a_t^\top$ couples each step to the state through the
#   row $e_t^\top = a_t^\top S_{t-1}$. With those rows named, a chunk looks like decayed linear
#   attention with two writes per token, $k_t v_t^\top$ and $b_t e_t^\top$.
# - Inside a chunk the rows satisfy $(I - A_{ab})E = \tilde A S_0 + A_{ak}V$. The matrix
#   $I - A_{ab}$ is unit lower triangular, so forward substitution (the UT transform) inverts it
#   without divisions, whatever the inputs.
# - $E = WS_0 + U$ with state-independent $W = \mathcal T\tilde A$ and $U = \mathcal T A_{ak}V$.
#   This is the WY representation: a chunk's product of DPLR transitions equals
#   $\operatorname{diag}(\gamma) + \hat B^\top W$.
# - Four $C \times C$ matrices carry all the within-chunk interactions. $A_{ab}$ and $A_{ak}$
#   (strictly lower triangular) serve the removal; $A_{rb}$ and $A_{rk}$ (diagonal included,
#   because the read-out sees the updated state) serve the output.
# - Every exponent is a sum of log decays over a forward interval, hence $\le 0$. Formed pair
#   by pair, and as interval sums rather than differences, they neither overflow in the forward
#   pass nor cancel in the backward pass.
# - Split at a block's midpoint, every decay factors into two decays $\le 1$, so halving the
#   chunk again and again (`chunk_matrices`) builds the four matrices from $\log_2 C$ batched
#   products, with no $C \times C \times K$ tensor and no difference of running sums.
# - `chunked` computes all that does not depend on the state for a whole segment of chunks at
#   once, then passes the state through $S \leftarrow PS + Q$, one batched product per chunk.
# - The chunked form matches the loop within the book's float32 tolerances ($10^{-5}$ for
#   outputs and states, $10^{-4}$ for gradients; the check lines print the actual errors),
#   costs $O(TC(K+V+C) + TK(K+V))$, and has only $T/C$ sequential steps.
#
# ## Exercises
#
# 1. **Read before write.** Suppose the read-out used the old state, $o_t = S_{t-1}^\top r_t$,
#    as in RWKV-6. Which of the four matrices change, and how do their masks change? Modify a
#    copy of `intra_chunk_matrices` and check it against a modified loop.
# 2. **Back to RWKV-6.** Set $a = b = 0$. Which terms of (2)–(5) vanish? Show that what remains
#    is the chunked form of chapter 6 without the bonus, up to the read-before-write difference
#    of exercise 1.
# 3. **Paths.** Prove $\mathcal T[t, i] = a_t^\top G_{t-1}\cdots G_{i+1} b_i$ by induction on
#    $t - i$, using $\mathcal T = I + A_{ab}\mathcal T$.
# 4. **Blocked UT transform.** For $C = 32$, invert the two $16 \times 16$ diagonal blocks of
#    $I - A_{ab}$ with `ut_transform`, then combine them using
#    $\begin{pmatrix} X & 0 \\ Y & Z \end{pmatrix}^{-1} = \begin{pmatrix} X^{-1} & 0 \\ -Z^{-1} Y X^{-1} & Z^{-1} \end{pmatrix}$.
#    Check the result against `ut_transform` on the whole chunk. Why do GPU kernels like this
#    form?
# 5. **The state-only scan.** `chunked` scans $S \leftarrow P_n S + Q_n$ with the chunk transition
#    $P_n = \operatorname{diag}(\gamma) + \hat B^\top W$ ($K \times K$) and the chunk's input
#    $Q_n = \hat K^\top V + \hat B^\top U$. Compare its cost with the $E$ route, in multiply-adds
#    and in operations inside the loop. Which one would you use when only the final state is
#    wanted? Time both on your machine.
# 6. **Chunk size and accuracy.** For the model's decays and for $w = -8$, plot the float32
#    error of `chunked` against `naive` (float64) as $C$ goes through 1, 4, 16, 64, 256. Does the
#    error grow with $C$? Explain what you see with the path reading of $\mathcal T$.
# 7. **Breaking the bound.** Replace $a = -\hat\kappa$, $b = \hat\kappa\,\text{iclr}$ by
#    unnormalized random vectors of norm 3. Watch $\max|\mathcal T|$ and the states grow with
#    $C$ and $T$. Which property of the model's parameterization was keeping them bounded?

# %% [markdown]
# Short answers to exercises 1, 2, 4, 5 and 7 (the student edition hides them):
#
# ### BEGIN SOLUTION
# 1. Only the read-out side changes. $A_{rb}$ and $A_{rk}$ become *strictly* lower triangular
#    ($i < t$) with the exponents $c_{t-1} - c_i$, exactly the masks and decays of $A_{ab}$ and
#    $A_{ak}$ with $a$ replaced by $r$, and $\tilde r_t = r_t \odot e^{c_{t-1}}$. $A_{ab}$,
#    $A_{ak}$, $\mathcal T$, $E$ and the hand-off are unchanged.
# 2. With $a = b = 0$: $A_{ab} = A_{ak} = A_{rb} = 0$, $\tilde A = 0$ and $\hat B = 0$, so
#    $\mathcal T = I$, $W = U = 0$ and $E = 0$. What is left is
#    $O = \text{scale}\cdot(\tilde R S_0 + A_{rk} V)$ and
#    $S \leftarrow \operatorname{diag}(\gamma) S + \hat K^\top V$: chapter 6's chunked form with no
#    bonus, except that $A_{rk}$ keeps its diagonal (read after write).
# 4. The off-diagonal block of the inverse is $-Z^{-1} Y X^{-1}$, two $16\times16$ matrix
#    products. GPU kernels like this form because the only sequential pieces are two
#    16-row substitutions that run side by side; the combination is dense matrix products,
#    which run on tensor cores, instead of 32 dependent row updates.
# 5. Per chunk the $P$ route costs $CK^2$ to form $P_n$ (plus $C^2K + CKV$ for $Q_n$), and $K^2V$ for each step
#    $P_n S$; the $E$ route costs about $3CKV$ per chunk ($WS$, $\hat B^\top E$, $\hat K^\top V$).
#    In multiply-adds the $E$ route is cheaper for $C \le K$, even when only the final state is
#    wanted, but its loop needs three operations per chunk instead of one, each with a fixed
#    cost in plain torch; at $C = 32$, $K = V = 64$ the two are about even on a CPU. The $P$ route
#    also allows a *parallel* (associative) scan over chunks, since $(P, Q)$ pairs compose
#    without the state; exercise 10 below codes the sequential version.
# 7. The model's parameterization: unit removal keys $\|\hat\kappa\| = 1$ ($a = -\hat\kappa$),
#    $b = \hat\kappa\odot\text{iclr}$ with iclr in $(0, 1)$, and decay factors $e^{w} \le 1$.
#    Together they make every transition's eigenvalues real and smaller than 1 in size (chapter 8),
#    so products of transitions, and with them $\mathcal T$ and the states, stay bounded;
#    with random $a$ and $b$ of norm 3 the rank-one part alone has the eigenvalue $a^\top b$, up to 9
#    in size, and both grow geometrically.
# ### END SOLUTION

# %% [markdown]
# ### Exercises that check themselves
#
# Each cell prints its exercise's statement, holds a solution between the markers
# `### BEGIN SOLUTION` and `### END SOLUTION` (the student edition, `python -m rwkvlab exercises
# student`, replaces it with a stub), and ends with `exercises.check`, which runs the function on
# seeded random cases and says what is wrong if it is. The references do not use the chunked
# code: a triangular solve from `torch.linalg` for the UT transform, and `wkv7.naive` in float64
# for everything else, with odd chunks, $w = -8$ and slow decays over several chunks.
#
# 8. **The UT transform.** Invert $I - A$ by forward substitution, as `ut_transform` does, and
#    ignore everything of $A$ that is not strictly below the diagonal.

# %%
import torch

from rwkvlab import exercises

print(exercises.spec("10.8"))


def ut_inverse(A):
    ### BEGIN SOLUTION
    C = A.shape[-1]
    eye = torch.eye(C, dtype=A.dtype).expand(A.shape)
    rows = [eye[..., 0, :]]                                   # row 0 of T is row 0 of I
    for t in range(1, C):
        done = torch.stack(rows, dim=-2)                      # rows 0..t-1 of T
        rows.append(eye[..., t, :] + (A[..., t:t + 1, :t] @ done).squeeze(-2))   # only i < t
    return torch.stack(rows, dim=-2)
    ### END SOLUTION


exercises.check("10.8", ut_inverse)

# %% [markdown]
# 9. **One chunk.** Given a chunk's start state, compute its outputs and the state it hands on,
#    equations (2)–(5), with the package's intra-chunk matrices.

# %%
import torch

from rwkvlab import exercises
from rwkvlab.wkv7 import reference as ref

print(exercises.spec("10.9"))


def chunk_forward(r, w, k, v, a, b, S0, scale):
    ### BEGIN SOLUTION
    M = ref.intra_chunk_matrices(r, w, k, a, b)
    E = ref.ut_transform(M["A_ab"]) @ (M["a_start"] @ S0 + M["A_ak"] @ v)   # rows a_tᵀ S_{t-1}
    o = scale * (M["r_start"] @ S0 + M["A_rk"] @ v + M["A_rb"] @ E)
    S = M["gamma"].unsqueeze(-1) * S0 + M["k_end"].mT @ v + M["b_end"].mT @ E
    return o, S
    ### END SOLUTION


exercises.check("10.9", chunk_forward)

# %% [markdown]
# 10. **The state-only scan.** Hand the state from chunk to chunk through the chunk transition
#     $P_n = \operatorname{diag}(\gamma) + \hat B^\top W$ and input $Q_n$ of exercise 5, without
#     computing any output; the last chunk may be shorter than the others.

# %%
import torch

from rwkvlab import exercises
from rwkvlab.wkv7 import reference as ref

print(exercises.spec("10.10"))


def final_state(r, w, k, v, a, b, initial_state, chunk_size):
    ### BEGIN SOLUTION
    S, T = initial_state, r.shape[1]
    for lo in range(0, T, chunk_size):                        # the last chunk may be shorter
        r_, w_, k_, v_, a_, b_ = (x[:, lo:lo + chunk_size].transpose(1, 2) for x in (r, w, k, v, a, b))
        M = ref.intra_chunk_matrices(r_, w_, k_, a_, b_)
        Tm = ref.ut_transform(M["A_ab"])
        W, U = Tm @ M["a_start"], Tm @ (M["A_ak"] @ v_)
        P = torch.diag_embed(M["gamma"]) + M["b_end"].mT @ W  # K×K: the chunk's product of transitions
        Q = M["k_end"].mT @ v_ + M["b_end"].mT @ U            # K×V: what the chunk writes
        S = P @ S + Q
    return S
    ### END SOLUTION


exercises.check("10.10", final_state)
