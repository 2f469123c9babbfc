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
# # RWKV-7's kernel is the family's kernel
#
# Since 2024 a whole family of recurrent models has been built on the delta rule: DeltaNet,
# Gated DeltaNet, Kimi Delta Attention, DeltaProduct, and RWKV-7 itself. Read side by side,
# their papers look like different architectures. Read through RWKV-7's kernel, they are
# different *arguments* to one function. This chapter makes that claim concrete: every model
# below runs on the book's own `rwkvlab.wkv7` (the loop, the chunked form and both Triton
# kernels), and every run is checked against a plain loop written from that model's paper.
# By the end of it you will be able to
#
# * derive the `wkv7` arguments $w, a, b, k$ that turn the kernel into DeltaNet, Gated DeltaNet
#   and Kimi Delta Attention, and say why a gate lands in $b$ for one model and in $a$ for
#   another;
# * run DeltaProduct's several Householder steps per token as sub-steps of `wkv7`, and use it
#   to track the group $S_3$ with two reflections per token, where one `wkv7` token per letter
#   provably cannot;
# * read off, for each model, what its transition's eigenvalues can be and what that allows
#   it to track, every row of the table checked by a cell;
# * place the test-time-training reading and the newest models that leave this form.
#
# The whole chapter is one matrix. Every model here updates its state by
# $S_t = G_t S_{t-1} + k_t v_t^\top$ with a transition that is diagonal plus rank one (DPLR),
#
# $$
# G_t \;=\; \operatorname{diag}(e^{w_t}) + b_t a_t^\top ,
# $$
#
# and the models differ only in which of $w_t$, $a_t$, $b_t$ they tie to each other and to
# the written key $k_t$.

# %%
import rwkvlab

print(rwkvlab.device.describe())

# %%
import importlib.util
import inspect
import itertools
import math

import matplotlib.pyplot as plt
import torch

from rwkvlab import delta, family, wkv7
from rwkvlab.checking import rel_err

torch.set_printoptions(precision=3, sci_mode=False)

# %% [markdown]
# ## 1. The contract, and the one thing to be careful about
#
# The kernel's contract is the book's (chapter 8): per head, with the state $S$ in K×V layout
# (rows are key channels), `w` the log decay and $r$ the query,
#
# $$
# S_t = \operatorname{diag}(e^{w_t})\,S_{t-1} + b_t\,(a_t^\top S_{t-1}) + k_t v_t^\top,
# \qquad o_t = S_t^\top r_t .
# $$
#
# A model is a choice of $w_t, a_t, b_t, k_t$ (the query and the value pass through unchanged).
# The package keeps those choices in one module, `rwkvlab.family`, one function per model; each
# takes the model's parameters in FLA's layout and returns the six `wkv7` arguments. `run`
# hands them to any rung of the ladder:

# %%
print(inspect.getsource(family.run))

# %% [markdown]
# The one thing to be careful about is orientation. DeltaNet, Gated DeltaNet and DeltaProduct
# are written with a $V\times K$ state acting on column vectors, $o_t = S_t q_t$, so their
# transitions multiply the state *from the right*. The kernel's state is the transpose, and its
# transition multiplies from the left. Transposing a paper's update is the first step of every
# mapping below. The second is to notice *which state the removal reads*: `wkv7` forms
# $a_t^\top S_{t-1}$ from the state before this token's decay, and writes $b_t$ without decaying
# it. A gate that a paper applies to the whole transition therefore has to be moved into $a$ or
# $b$ by hand.
#
# Every mapping is checked the same way. `family.random_inputs` draws seeded inputs: unit keys
# (the papers L2-normalise them), $\beta \in (0, \beta_{\max})$, and log gates whose factor
# $\alpha = e^{g}$ lies in $(e^{-0.05}, 1]$ ("slow") or in $(e^{-5}, e^{-1}]$ ("fast"; §5 also uses
# "wide", anywhere in $(e^{-5}, 1]$), plus a random initial state. `check_model` runs the mapping through `naive` and `chunked` in float64 on
# three shapes ($T = 1$; odd $T$ with several heads; $T = 37$, across the 32-token chunks) and
# through both Triton kernels in float32 on one tiny shape ($T = 20$, across their 16-token
# chunks), and compares outputs and final states with the paper's loop, itself run in float64.

# %%
SHAPES = [(1, 1, 1, 4, 3), (2, 7, 2, 8, 5), (1, 37, 3, 16, 16)]   # (B, T, H, K, V)
TINY = (1, 20, 2, 16, 16)          # the Triton kernels need K, V in 16..128; the interpreter needs T small
TOL = {"naive": 1e-14, "chunked": 1e-14, "triton_recurrent": 1e-6, "triton_chunked": 1e-6}


def check_model(name, to_wkv7, reference, n_h=1, beta_max=1.0, decays=("slow", "fast")):
    """Run one mapping on every rung and compare with the paper's loop; one printed line per rung."""
    worst = dict.fromkeys(TOL, 0.0)
    cases = [(shape, ("naive", "chunked")) for shape in SHAPES] + [(TINY, ("triton_recurrent", "triton_chunked"))]
    for decay in decays:
        for seed, (shape, impls) in enumerate(cases):
            x = family.random_inputs(*shape, n_h=n_h, decay=decay, beta_max=beta_max, seed=seed)
            o_ref, S_ref = reference(x)                                  # the paper's loop, float64
            for impl in impls:
                args, S0 = to_wkv7(x), x["S0"]
                if impl.startswith("triton"):        # float32, on the kernels' device (a GPU when there is one)
                    dev = rwkvlab.device.device()
                    args, S0 = {n: t.float().to(dev) for n, t in args.items()}, S0.float().to(dev)
                o, S = family.run(args, impl, initial_state=S0, output_final_state=True)
                o, S = family.last_substep(o, n_h).cpu(), S.cpu()
                err = max(rel_err(o.double(), o_ref), rel_err(S.double(), S_ref))
                worst[impl] = max(worst[impl], err)
    for impl, err in worst.items():
        ok = err <= TOL[impl]
        print(f"{name:>15} {impl:>16}: max rel err {err:.0e} (tol {TOL[impl]:.0e})  {'ok' if ok else 'FAILED'}")
        assert ok, f"{name} on {impl}: {err:.2e}"


# %% [markdown]
# The simplest rows first, as a warm-up. Linear attention has no decay and no removal
# ($w = a = b = 0$); a diagonal gate (GLA, arXiv 2312.06635, Eq. 3:
# $S_t = \operatorname{Diag}(\alpha_t) S_{t-1} + k_t v_t^\top$, $o_t = S_t^\top q_t$) sets
# $w = \log\alpha$ and leaves $a = b = 0$. That is RWKV-6's state update; RWKV-6 only reads the
# state *before* the write and adds its bonus $u$ (chapter 5), which is why the book gives it its
# own kernel.

# %%
check_model("GLA", lambda x: family.gla(x["q"], x["k"], x["v"], x["gk"]),
            lambda x: family.reference_gla(x["q"], x["k"], x["v"], x["gk"], initial_state=x["S0"]))

# %% [markdown]
# ## 2. DeltaNet and Gated DeltaNet
#
# DeltaNet (Yang et al. 2024, arXiv 2406.06484) writes, with $\beta_t \in (0, 1)$ the write
# strength and unit keys,
#
# $$
# S_t = S_{t-1}\,(I - \beta_t k_t k_t^\top) + \beta_t v_t k_t^\top,\qquad o_t = S_t q_t
# \qquad (S_t \in \mathbb{R}^{V\times K}).
# $$
#
# Transpose it. With $S'_t = S_t^\top$ (K×V),
# $S'_t = (I - \beta_t k_t k_t^\top)\,S'_{t-1} + \beta_t k_t v_t^\top
# = S'_{t-1} - (\beta_t k_t)(k_t^\top S'_{t-1}) + (\beta_t k_t)\,v_t^\top$ and $o_t = S_t'^\top q_t$.
# Term by term against the contract:
#
# $$
# w_t = 0,\qquad a_t = -k_t,\qquad b_t = \beta_t k_t,\qquad k^{\text{wkv7}}_t = \beta_t k_t,\qquad r_t = q_t .
# $$
#
# DeltaNet's $\beta$ multiplies the value in the paper; in the kernel it sits on the written key,
# which is the same outer product. Chapter 8 derived this as one step of gradient descent with
# learning rate $\beta$; here it is the paper's recurrence instead, checked against the paper's
# loop (run in the paper's orientation, $V \times K$):

# %%
print(inspect.getsource(family.deltanet))
print(inspect.getsource(family.reference_gated_deltanet))

# %% [markdown]
# `reference_deltanet` is that loop with $\alpha = 1$. DeltaNet has no gate, so instead of two
# decays we check two ranges of $\beta$: the paper's $(0, 1)$ and Grazzi et al.'s extension
# to $(0, 2)$ (§4 uses it).

# %%
for beta_max in (1.0, 2.0):
    check_model(f"DeltaNet beta<{beta_max:g}", lambda x: family.deltanet(x["q"], x["k"], x["v"], x["beta"]),
                lambda x: family.reference_deltanet(x["q"], x["k"], x["v"], x["beta"], initial_state=x["S0"]),
                beta_max=beta_max, decays=("slow",))

# %% [markdown]
# Gated DeltaNet (Yang, Kautz and Hatamizadeh, arXiv 2412.06464) multiplies DeltaNet's
# transition by a scalar gate $\alpha_t \in (0, 1)$ per head and token:
#
# $$
# S_t = S_{t-1}\,\big(\alpha_t (I - \beta_t k_t k_t^\top)\big) + \beta_t v_t k_t^\top .
# $$
#
# Transposed, $S'_t = \alpha_t S'_{t-1} - (\alpha_t\beta_t k_t)(k_t^\top S'_{t-1}) + \beta_t k_t v_t^\top$.
# The gate multiplies the removal term as well as the state, and `wkv7` neither decays what its
# removal reads nor what it writes back, so the gate has to be folded into the removal by hand:
#
# $$
# w_t = \log\alpha_t\,\mathbf 1,\qquad a_t = -k_t,\qquad b_t = \alpha_t\beta_t k_t,\qquad k^{\text{wkv7}}_t = \beta_t k_t .
# $$
#
# (Since $\alpha_t$ is a scalar it could equally go on $a_t$. For a per-channel gate it could
# not, as §3 shows.) Forgetting the factor $\alpha_t$ in $b_t$ is an easy mistake, and it is not
# a small one: it subtracts the undecayed component along $k_t$ from a decayed state.

# %%
print(inspect.getsource(family.gated_deltanet))
check_model("Gated DeltaNet", lambda x: family.gated_deltanet(x["q"], x["k"], x["v"], x["beta"], x["g"]),
            lambda x: family.reference_gated_deltanet(x["q"], x["k"], x["v"], x["beta"], x["g"],
                                                      initial_state=x["S0"]))

x = family.random_inputs(1, 16, 2, 8, 8, decay="fast", seed=7)
wrong = family.gated_deltanet(x["q"], x["k"], x["v"], x["beta"], x["g"])
wrong["b"] = x["beta"].unsqueeze(-1) * x["k"]                         # the gate left out of b
o_wrong, _ = family.run(wrong, "naive", initial_state=x["S0"])
o_ref, _ = family.reference_gated_deltanet(x["q"], x["k"], x["v"], x["beta"], x["g"], initial_state=x["S0"])
err_wrong = rel_err(o_wrong, o_ref)
print(f"Gated DeltaNet with b = beta k (gate missing from b), fast decay: rel err {err_wrong:.2f}")
assert err_wrong > 0.1

# %% [markdown]
# When `fla-core` is importable and a CUDA GPU is present, the next cell also compares the
# kernel with FLA's own chunked kernels for these two models, `chunk_delta_rule` and
# `chunk_gated_delta_rule` (float32 inputs, FLA's layout, `scale=1`); FLA's kernels are written
# for GPUs. Its tolerance, 5e-3, leaves room for TF32 matrix products, which FLA's kernels may use;
# this book has not run that comparison on the machine it is tested on, so the cell says
# whether it ran.

# %%
if importlib.util.find_spec("fla") is None:
    print("FLA comparison skipped: fla-core is not installed")
elif not torch.cuda.is_available():
    print("FLA comparison skipped: no CUDA GPU (FLA's kernels are written for GPUs)")
else:
    from fla.ops.delta_rule import chunk_delta_rule
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    # fla-core 0.6.0's delta-rule kernels take 16-bit inputs only ("does not support float32"):
    # FLA gets bf16, and ours the same bf16 values in float32, so the gap is FLA's bf16 rounding
    # (the book's bf16 tolerance, 1e-2); the states stay float32 on both sides
    x = {n: t.float().cuda() for n, t in family.random_inputs(2, 100, 4, 64, 64, seed=3).items()}
    xb = {n: t if n == "S0" else t.bfloat16() for n, t in x.items()}
    x = {n: t.float() for n, t in xb.items()}
    common = dict(scale=1.0, initial_state=x["S0"], output_final_state=True)
    got = chunk_delta_rule(q=xb["q"], k=xb["k"], v=xb["v"], beta=xb["beta"], **common)
    want = family.run(family.deltanet(x["q"], x["k"], x["v"], x["beta"]), "triton_chunked",
                      initial_state=x["S0"], output_final_state=True)
    rwkvlab.check("FLA chunk_delta_rule (bf16) vs wkv7 triton_chunked", got, want, tol=1e-2)
    got = chunk_gated_delta_rule(q=xb["q"], k=xb["k"], v=xb["v"], g=x["g"], beta=xb["beta"], **common)
    want = family.run(family.gated_deltanet(x["q"], x["k"], x["v"], x["beta"], x["g"]), "triton_chunked",
                      initial_state=x["S0"], output_final_state=True)
    rwkvlab.check("FLA chunk_gated_delta_rule (bf16) vs wkv7 triton_chunked", got, want, tol=1e-2)

# %% [markdown]
# ## 3. Kimi Delta Attention: a per-channel gate, a constrained DPLR
#
# Kimi Delta Attention (KDA), the recurrent layer of Kimi Linear (Kimi Team 2025,
# arXiv 2510.26692), replaces Gated DeltaNet's scalar gate with one gate per key channel,
# $\alpha_t \in (0, 1)^{K}$, and applies it *before* the delta step (K×V state):
#
# $$
# S_t = (I - \beta_t k_t k_t^\top)\,\operatorname{Diag}(\alpha_t)\,S_{t-1} + \beta_t k_t v_t^\top ,
# \qquad o_t = S_t^\top q_t .
# $$
#
# Multiply it out: $S_t = \operatorname{Diag}(\alpha_t) S_{t-1} - (\beta_t k_t)\big(k_t^\top \operatorname{Diag}(\alpha_t) S_{t-1}\big) + \beta_t k_t v_t^\top$,
# and $k_t^\top \operatorname{Diag}(\alpha_t) = (\alpha_t \odot k_t)^\top$. So
#
# $$
# w_t = \log\alpha_t,\qquad a_t = -\,\alpha_t \odot k_t,\qquad b_t = \beta_t k_t,\qquad k^{\text{wkv7}}_t = \beta_t k_t .
# $$
#
# This time the gate must go on $a$: the removal reads the *decayed* state, channel by channel,
# and a vector gate on $b$ would decay the wrong side. This is also where KDA and RWKV-7 differ
# in order: RWKV-7 decays and removes in parallel from the same $S_{t-1}$
# ($G = \operatorname{diag}(e^{w}) - (\mathrm{iclr}\odot\hat\kappa)\hat\kappa^\top$), KDA decays
# first and then takes the delta step ($G = (I - \beta kk^\top)\operatorname{Diag}(\alpha)$).
# Both fit the same kernel because $a$ is free.
#
# The Kimi Linear report calls its transition "a specialized variant" of DPLR. In the kernel's
# terms the specialisation is visible: $b_t$ *is* the written key, and $a_t$ is $b_t$ scaled by
# $-\alpha_t/\beta_t$ channel by channel, so one vector $k_t$ and two gates fix all three, where
# RWKV-7 has a removal key $\hat\kappa$, a replacement key $\tilde k$ and a vector learning rate.

# %%
print(inspect.getsource(family.kda))
print(inspect.getsource(family.reference_kda))
check_model("KDA", lambda x: family.kda(x["q"], x["k"], x["v"], x["beta"], x["gk"]),
            lambda x: family.reference_kda(x["q"], x["k"], x["v"], x["beta"], x["gk"], initial_state=x["S0"]))

x = family.random_inputs(2, 9, 3, 8, 4, decay="fast", seed=11)
args = family.kda(x["q"], x["k"], x["v"], x["beta"], x["gk"])
assert torch.equal(args["b"], args["k"])                                  # b is the written key
ratio = -x["gk"].exp() / x["beta"].unsqueeze(-1)                          # a = b · (−α/β), channel by channel
rwkvlab.check("KDA's constraint: a = -(alpha/beta) * b", args["a"], ratio * args["b"], tol=1e-14)

# %% [markdown]
# ## 4. DeltaProduct: several steps per token, and $S_3$ with two reflections
#
# DeltaNet takes one gradient step per token. DeltaProduct (Siems et al. 2025,
# arXiv 2502.10297) takes $n_h$: each token $t$ carries $n_h$ keys, values and write strengths
# $(k_{t,j}, v_{t,j}, \beta_{t,j})$, and the state goes through $n_h$ DeltaNet steps before the
# output is read,
#
# $$
# H_{t,j} = H_{t,j-1}\,(I - \beta_{t,j} k_{t,j} k_{t,j}^\top) + \beta_{t,j} v_{t,j} k_{t,j}^\top,
# \quad j = 1, \ldots, n_h,\qquad H_{t,0} = H_{t-1},\ H_t = H_{t,n_h},\ o_t = H_t q_t ,
# $$
#
# with $\beta \in [0, 2]$ so that each factor can reach the eigenvalue $-1$. The token's
# transition is the product of $n_h$ generalised Householder matrices: diagonal (here the
# identity) plus rank $n_h$. The kernel has no rank-$n_h$ term, and it does not need one: it runs
# each token as $n_h$ consecutive DeltaNet sub-steps, and we keep the output of the last. The
# mapping interleaves the sub-steps on the time axis; `last_substep` picks the outputs.

# %%
print(inspect.getsource(family.deltaproduct))
print(inspect.getsource(family.last_substep))
for n_h in (2, 3):
    check_model(f"DeltaProduct n_h={n_h}", lambda x: family.deltaproduct(x["q"], x["kp"], x["vp"], x["bp"]),
                lambda x: family.reference_deltaproduct(x["q"], x["kp"], x["vp"], x["bp"], initial_state=x["S0"]),
                n_h=n_h, beta_max=2.0, decays=("slow",))

# %% [markdown]
# ### Two reflections per token track $S_3$
#
# Chapter 9 tracked words of *transpositions*: one reflection
# $I - 2\hat k\hat k^\top$, $\hat k = (e_i - e_j)/\sqrt2$, per letter, from $S_0 = I$, with the read-out
# key $r = (0, 1, \ldots, n-1)$ printing the running permutation. Now let the letters be
# arbitrary elements of $S_3$, all six permutations of three things, one per token. A
# transposition is one reflection; a 3-cycle is two (`delta.decompose`); the identity is none.
# With $n_h = 2$ every letter fits in one token: its reflections, padded with sub-steps of
# $\beta = 0$ (which do nothing). No token writes ($v = 0$), so the state is the product of the
# transitions. The reference is combinatorial: $\pi_t = \sigma_t \circ \pi_{t-1}$.

# %%
S3 = list(itertools.permutations(range(3)))


def s3_deltaproduct(word, n=3, dtype=torch.float64):
    """DeltaProduct parameters (n_h = 2, B = H = 1) that apply each letter of S_3 in one token."""
    T = len(word)
    kp, bp = torch.zeros(1, T, 1, 2, n, dtype=dtype), torch.zeros(1, T, 1, 2, dtype=dtype)
    kp[..., 0] = 1.0                                        # any unit key: β = 0 makes the step the identity
    for t, perm in enumerate(word):
        for j, (i1, i2) in enumerate(delta.decompose(perm)):
            kp[0, t, 0, j] = 0.0
            kp[0, t, 0, j, i1], kp[0, t, 0, j, i2] = 1 / math.sqrt(2), -1 / math.sqrt(2)
            bp[0, t, 0, j] = 2.0                            # a reflection: β = 2
    q = torch.arange(n, dtype=dtype).expand(1, T, 1, n).contiguous()
    return q, kp, torch.zeros(1, T, 1, 2, n, dtype=dtype), bp


def running_products(word, n=3):
    p, out = tuple(range(n)), []
    for s in word:
        p = tuple(s[p[i]] for i in range(n))               # σ_t after π_{t−1}
        out.append(p)
    return out


gen = torch.Generator().manual_seed(0)
word = [S3[i] for i in torch.randint(6, (60,), generator=gen).tolist()]
truth = running_products(word)
q, kp, vp, bp = s3_deltaproduct(word)
o_paper, _ = family.reference_deltaproduct(q, kp, vp, bp, initial_state=torch.eye(3, dtype=q.dtype)[None, None])
read = {}
for impl in ("naive", "chunked"):
    o, _ = family.run(family.deltaproduct(q, kp, vp, bp), impl, initial_state=torch.eye(3, dtype=q.dtype)[None, None])
    read[impl] = family.last_substep(o, 2)[0, :, 0]
# the Triton kernels need K = V ≥ 16: embed S_3 in the first three of 16 coordinates, on a shorter word
q16, kp16, vp16, bp16 = (torch.nn.functional.pad(t, (0, 13)) if t.shape[-1] == 3 else t for t in (q, kp, vp, bp))
S0_16 = torch.nn.functional.pad(torch.eye(3), (0, 13, 0, 13))[None, None]
for impl in ("triton_recurrent", "triton_chunked"):
    dev = rwkvlab.device.device()                     # the kernels' device: a GPU when there is one
    args = {n_: t[:, :48].float().to(dev) for n_, t in family.deltaproduct(q16, kp16, vp16, bp16).items()}
    o, _ = family.run(args, impl, initial_state=S0_16.to(dev))
    read[impl] = family.last_substep(o, 2)[0, :, 0, :3].double().cpu()

rwkvlab.check("S3 word, 60 tokens: paper's DeltaProduct loop vs the permutations", o_paper[0, :, 0],
              torch.tensor(truth, dtype=torch.float64), tol=1e-14)
for impl, out in read.items():
    perms = [tuple(int(v) for v in row) for row in out.round().tolist()]
    drift = (out - out.round()).abs().max().item()
    assert perms == truth[:len(perms)], impl
    print(f"S3 word through wkv7.{impl:<16}: {len(perms)} tokens, every prefix product read exactly "
          f"(largest distance from an integer {drift:.0e})")

# %% [markdown]
# ### One `wkv7` token per letter cannot
#
# Could a single token do it, with cleverer arguments? A 3-cycle is the permutation matrix
# $P$ with $P e_0 = e_1$, $P e_1 = e_2$, $P e_2 = e_0$. A token's transition is
# $\operatorname{diag}(e^{w}) + b a^\top$, so it would need $P - D$ to have rank at most one for
# some diagonal $D$. It never does: rows 0, 1 and columns 0, 2 of $P - D$ form
# $\begin{psmallmatrix} -d_0 & 1 \\ 1 & 0 \end{psmallmatrix}$, whose determinant is $-1$ whatever
# $D$ is. A rank-one matrix has no non-zero $2\times2$ minor. (The same holds for any decay,
# any $a$ and any $b$, so it rules out every single-step row of this chapter's table, RWKV-7
# included.) A second, spectral, view: $P$'s eigenvalues are the cube roots of unity, two
# of them non-real, while a DeltaNet transition $I - \beta kk^\top$ is symmetric, with real
# eigenvalues only.

# %%
P = torch.zeros(3, 3, dtype=torch.float64)
P[[1, 2, 0], [0, 1, 2]] = 1.0                                  # P e_i = e_{i+1 mod 3}
d = torch.randn(1000, 3, generator=gen, dtype=torch.float64)
minors = torch.linalg.det((P - torch.diag_embed(d))[:, [0, 1]][:, :, [0, 2]])
print(f"2x2 minor of P - D over 1000 random diagonals: min {minors.min().item():.3f}, max {minors.max().item():.3f}")
assert torch.allclose(minors, torch.full_like(minors, -1.0), atol=1e-12)
ev = torch.linalg.eigvals(P)
print("eigenvalues of the 3-cycle:", [f"{z.real:+.3f}{z.imag:+.3f}i" for z in ev.tolist()])
assert (ev.imag.abs() > 0.8).sum() == 2 and torch.allclose(ev.abs(), torch.ones(3, dtype=torch.float64))

# %% [markdown]
# So the extra Householder factor is not a convenience. With one factor per token a layer has
# to see a 3-cycle as two tokens; with two it sees one. Grazzi et al. (arXiv 2411.12537, Thm 3)
# prove the general version that chapter 9 quoted: products of $n - 1$ reflections per letter
# implement the word problem of any group of permutations of $n$ elements in one layer, and for
# $S_3$ that is two, DeltaProduct with $n_h = 2$. What we showed is the construction and the
# obstruction; whether training finds the construction is a separate, empirical question.
#
# ## 5. The table
#
# Each row is a model, its arguments to `wkv7`, the set its transition's eigenvalues lie in (for
# the parameter ranges its paper uses, unit keys), and what that allows. The eigenvalue column is
# asserted by the next cell on random transitions built by the row's own mapping; the last column
# cites the result or the construction behind it.
#
# | model | $w$ | $a$ | $b$ | $k$ (written) | eigenvalues of $G_t$ | what it can track |
# |---|---|---|---|---|---|---|
# | linear attention | $0$ | $0$ | $0$ | $k$ | $\{1\}$ | nothing beyond sums: the transitions are the identity |
# | GLA / RWKV-6 state | $\log\alpha$ | $0$ | $0$ | $k$ | $(0, 1]$, real | transitions commute (ch. 9); no parity (Grazzi Thm 1) |
# | DeltaNet | $0$ | $-k$ | $\beta k$ | $\beta k$ | $\{1, 1-\beta\} \subset (0, 1]$ | no parity (Grazzi Thm 1) |
# | DeltaNet, $\beta \in (0, 2)$ | $0$ | $-k$ | $\beta k$ | $\beta k$ | $\{1, 1-\beta\} \subset (-1, 1]$ | parity, and swaps at $\beta = 2$ (ch. 9; Grazzi et al.) |
# | Gated DeltaNet | $\log\alpha\,\mathbf 1$ | $-k$ | $\alpha\beta k$ | $\beta k$ | $\{\alpha, \alpha(1-\beta)\} \subset (0, 1)$ | no parity (Grazzi Thm 1) |
# | KDA | $\log\alpha$ | $-\alpha\odot k$ | $\beta k$ | $\beta k$ | real, in $[0, \max\alpha]$ | no parity (Grazzi Thm 1) |
# | RWKV-7 (released) | $-e^{-0.5}\sigma(d)$ | $-\hat\kappa$ | $\mathrm{iclr}\odot\hat\kappa$ | $\tilde k$ | real, in $(-0.455, 1)$ | negative eigenvalues, but no exact reflection (ch. 8, 9) |
# | DeltaProduct, $n_h = 2$ | $0$ (per sub-step) | $-k_{t,j}$ | $\beta_{t,j} k_{t,j}$ | $\beta_{t,j} k_{t,j}$ | in the unit disk, complex pairs possible | $S_3$, one letter per token (§4; Grazzi Thm 3) |
#
# "No parity" means: a network whose transitions all have eigenvalues in $[0, \infty)$ does not
# recognise parity at arbitrary length in finite precision (Grazzi et al., arXiv 2411.12537,
# Thm 1). KDA's transition $(I - \beta kk^\top)\operatorname{Diag}(\alpha)$ is similar to
# $\operatorname{Diag}(\alpha)^{1/2}(I - \beta kk^\top)\operatorname{Diag}(\alpha)^{1/2}$, a symmetric
# positive semi-definite matrix for $\beta \le 1$ and unit $k$: real, non-negative, at most
# $\max\alpha$. RWKV-7's interval is chapter 8's bound. DeltaProduct's factors each have norm
# at most 1 for $\beta \in [0, 2]$, so their product does too.

# %%
N, K = 400, 6
gen = torch.Generator().manual_seed(1)
x = family.random_inputs(1, N, 1, K, 2, n_h=2, decay="wide", seed=5)
x2 = family.random_inputs(1, N, 1, K, 2, n_h=2, decay="wide", beta_max=2.0, seed=6)
w_r, kk_r, iclr_r = delta.released_transitions(N, K, generator=gen)
rows = {
    "linear attention": family.transitions(family.linear_attention(x["q"], x["k"], x["v"])),
    "GLA / RWKV-6 state": family.transitions(family.gla(x["q"], x["k"], x["v"], x["gk"])),
    "DeltaNet": family.transitions(family.deltanet(x["q"], x["k"], x["v"], x["beta"])),
    "DeltaNet, beta<2": family.transitions(family.deltanet(x2["q"], x2["k"], x2["v"], x2["beta"])),
    "Gated DeltaNet": family.transitions(family.gated_deltanet(x["q"], x["k"], x["v"], x["beta"], x["g"])),
    "KDA": family.transitions(family.kda(x["q"], x["k"], x["v"], x["beta"], x["gk"])),
    "RWKV-7 (released)": family.transitions(family.rwkv7(x["q"], w_r[None, :, None], x["k"], x["v"],
                                                         kk_r[None, :, None], iclr_r[None, :, None])),
    "DeltaProduct n_h=2": family.transitions(family.deltaproduct(x2["q"], x2["kp"], x2["vp"], x2["bp"]), n_h=2),
}
eig = {name: torch.linalg.eigvals(G[0, :, 0]) for name, G in rows.items()}      # [N, K] complex
alpha, beta = x["g"][0, :, 0].exp(), x["beta"][0, :, 0]
tol = 1e-10


def real(z):
    return z.imag.abs().max().item() < tol


def close_to_set(z, allowed):           # every eigenvalue of row i equals one of allowed[i, :]
    return (z.unsqueeze(-1) - allowed.unsqueeze(-2)).abs().amin(-1).max().item() < 1e-8


checks = {
    "linear attention": close_to_set(eig["linear attention"], torch.ones(N, 1, dtype=torch.float64)),
    "GLA / RWKV-6 state": real(eig["GLA / RWKV-6 state"]) and close_to_set(eig["GLA / RWKV-6 state"], x["gk"][0, :, 0].exp()),
    "DeltaNet": close_to_set(eig["DeltaNet"], torch.stack([torch.ones(N), 1 - beta], -1)) and beta.max() < 1,
    "DeltaNet, beta<2": close_to_set(eig["DeltaNet, beta<2"], torch.stack([torch.ones(N), 1 - x2["beta"][0, :, 0]], -1)),
    "Gated DeltaNet": close_to_set(eig["Gated DeltaNet"], torch.stack([alpha, alpha * (1 - beta)], -1)),
    "KDA": real(eig["KDA"]) and eig["KDA"].real.min() > -tol
           and (eig["KDA"].real.amax(-1) <= x["gk"][0, :, 0].exp().amax(-1) + tol).all().item(),
    "RWKV-7 (released)": real(eig["RWKV-7 (released)"]) and eig["RWKV-7 (released)"].real.min() > math.exp(-math.exp(-0.5)) - 1
                         and eig["RWKV-7 (released)"].real.max() < 1,
    "DeltaProduct n_h=2": eig["DeltaProduct n_h=2"].abs().max().item() <= 1 + tol
                          and (eig["DeltaProduct n_h=2"].imag.abs() > 1e-3).any().item(),
}
for name, z in eig.items():
    print(f"{name:>20}: real part in [{z.real.min().item():+.3f}, {z.real.max().item():+.3f}], "
          f"largest |imag| {z.imag.abs().max().item():.3f}, largest |lambda| {z.abs().max().item():.3f}  "
          f"{'ok' if checks[name] else 'FAILED'}")
assert all(checks.values()), [n for n, ok in checks.items() if not ok]
print(f"DeltaNet with beta in (0, 2): smallest eigenvalue {eig['DeltaNet, beta<2'].real.min().item():+.3f}; "
      f"DeltaProduct: {(eig['DeltaProduct n_h=2'].imag.abs() > 1e-3).any(-1).float().mean().item():.0%} "
      f"of {N} transitions have a complex pair")

# %% [markdown]
# The same eigenvalues as a picture, one panel per row of the table, with the unit circle:

# %%
fig, axes = plt.subplots(2, 4, figsize=(12, 6), sharex=True, sharey=True)
circle = torch.linspace(0, 2 * math.pi, 200)
for ax, (name, z) in zip(axes.flat, eig.items()):
    ax.plot(circle.cos(), circle.sin(), color="0.7", lw=0.8)
    ax.scatter(z.real.flatten(), z.imag.flatten(), s=4, alpha=0.4)
    ax.axhline(0, color="0.85", lw=0.5)
    ax.axvline(0, color="0.85", lw=0.5)
    ax.set_title(name, fontsize=9)
    ax.set_aspect("equal")
fig.suptitle("Eigenvalues of the transition G_t, 400 random tokens per model (K = 6)", fontsize=10)
fig.tight_layout()
plt.show()

# %% [markdown]
# Only DeltaProduct leaves the real axis. Only the rows with $\beta$ up to 2 reach towards $-1$;
# the released RWKV-7 range stops short of it (its smallest eigenvalue in this sample is the
# $-0.394$ printed above, inside chapter 8's bound of $-0.455$).
#
# Two rows deserve a word. The DeltaNet row with $\beta \in (0, 2)$ is Grazzi et al.'s fix, and
# parity is its smallest example: one channel, $k = 1$, $\beta = 2\cdot\text{bit}$, and the
# transition $1 - 2\cdot\text{bit}$ flips the state's sign on every 1. Run through the kernel
# with the DeltaNet mapping:

# %%
bits = torch.randint(2, (1, 200), generator=gen)
ones = torch.ones(1, 200, 1, 1, dtype=torch.float64)
args = family.deltanet(ones, ones, 0 * ones, 2.0 * bits[..., None].double())
o, _ = family.run(args, "chunked", initial_state=torch.ones(1, 1, 1, 1, dtype=torch.float64))
parity = (-1.0) ** bits.cumsum(1)
rwkvlab.check("DeltaNet, beta = 2 bit, K = V = 1: output vs (-1)^(ones so far), 200 bits",
              o[0, :, 0, 0], parity[0].double(), tol=1e-12)

# %% [markdown]
# The RWKV-7 row is the released parameterisation; chapter 8 proved its bound and chapter 9
# drew the consequence: its eigenvalues reach below zero, which Grazzi et al.'s Thm 1 requires
# for parity, but its spectral radius stays below 1, so it cannot make the exact reflections of
# the DeltaNet $\beta = 2$ row. The kernel is the same; the ranges the models feed it are not.
#
# ## 6. Beyond the book: the test-time-training reading, and where the DPLR form ends
#
# This section is context, not code: none of it is implemented or checked here, and each
# sentence states one fact with its source.
#
# **The test-time-training reading.** Chapter 8 read RWKV-7's update as one gradient step on the
# regression loss $\tfrac12\|S^\top k - v\|^2$; a line of work takes that reading as the design
# principle.
#
# * TTT (Sun et al., arXiv 2407.04620) makes the hidden state a machine-learning model itself,
#   a linear model in TTT-Linear and a two-layer MLP in TTT-MLP, and makes the update rule a
#   step of self-supervised learning, taken on the test sequence too.
# * Titans (Behrouz, Zhong and Mirrokni, arXiv 2501.00663) add a neural long-term memory, a
#   deep network whose weights are trained at test time with a gradient-based "surprise" signal,
#   momentum and a forgetting (weight-decay) term, beside attention as short-term memory.
# * MesaNet (von Oswald et al., arXiv 2506.05233) does not take one step on the latest token's
#   loss but solves, at every time step, the regularised least-squares regression over all
#   tokens seen so far, with a conjugate-gradient solver.
#
# In the terms of this chapter: one gradient step per token on a squared loss, for a linear
# memory, is a DPLR update (chapter 8); a deep memory (TTT-MLP, Titans) has no state matrix for a
# transition to multiply, and an exact least-squares solve (MesaNet) needs the inverse of an
# accumulated key covariance rather than a product of transitions. Neither is a call to `wkv7`.
#
# **Where the form ends.**
#
# * RWKV-8 "Heron" (BlinkDL/RWKV-LM, `RWKV-v8/README.md`, 2025) adds ROSA, a "Rapid Online
#   Suffix Automaton": its reference code (`RWKV-v8/251014_rosa_1bit_layer.py`, function `rosa`)
#   builds a suffix automaton over a discrete sequence and returns, at each position, the token
#   that followed the latest earlier occurrence of the longest matching suffix, a lookup whose
#   structure grows with the sequence rather than a fixed-size matrix state.
# * RWKV-8's DeepEmbed (RWKV-LM `RWKV-v7/rwkv_v8_rc00_demo.py`, `RWKV_x080_CMix_*`) does not touch
#   the time mixing at all: that demo still calls the RWKV-7 kernel, and DeepEmbed multiplies the
#   channel-mix output, channel by channel, by a learned vector looked up by the current token's id.
# * Log-linear attention (Guo et al., arXiv 2506.04761) replaces the fixed-size hidden state with
#   a set of hidden states that grows logarithmically with the sequence length (a Fenwick-tree
#   partition of the past), and applies this to Mamba-2 and Gated DeltaNet.
#
# ## Summary
#
# * One kernel, `wkv7`, computes $S_t = \operatorname{diag}(e^{w_t})S_{t-1} + b_t(a_t^\top S_{t-1}) + k_t v_t^\top$;
#   DeltaNet, Gated DeltaNet and KDA are choices of its arguments (`rwkvlab.family`), and each
#   agrees with a loop written from its own paper to float64 rounding on the torch rungs and to
#   float32 rounding on both Triton kernels, for slow and fast gates.
# * The care is in orientation and in which state the removal reads: a scalar gate that a paper
#   puts on the whole transition moves into $b$ (Gated DeltaNet, $b = \alpha\beta k$); KDA's
#   per-channel gate, applied before the delta step, moves into $a$ ($a = -\alpha\odot k$). KDA's
#   "constrained DPLR" ties $b$ to the written key and $a$ to $b$.
# * DeltaProduct is $n_h$ DeltaNet sub-steps per token with the output read at the last. With
#   $n_h = 2$ it tracks $S_3$ one letter per token through every rung of the kernel; one token
#   of any DPLR transition cannot make a 3-cycle, because $P - D$ always has a $2\times2$ minor
#   of $-1$.
# * The table's eigenvalue sets are asserted on random transitions: $[0, 1]$-type spectra
#   (linear attention, GLA, DeltaNet with $\beta < 1$, Gated DeltaNet, KDA) rule out parity by
#   Grazzi et al.'s Thm 1; DeltaNet with $\beta$ up to 2 reaches $-1$ and does parity; the released
#   RWKV-7 reaches below zero but not $-1$; DeltaProduct's products have complex pairs.
#
# ## Exercises
#
# 1. Gated DeltaNet with the gate on $a$ instead of $b$: write the mapping, and check it against
#    `family.reference_gated_deltanet`. Why does the same move fail for KDA?
# 2. Write the mapping for a "KDA with RWKV-7's order": $S_t = \operatorname{Diag}(\alpha_t)S_{t-1}
#    - \beta_t k_t (k_t^\top S_{t-1}) + \beta_t k_t v_t^\top$. Which of $a$, $b$ changes? Show with a
#    run that it differs from KDA when the gates are fast.
# 3. DeltaProduct with $n_h = 2$ and both sub-steps using the *same* key and $\beta = 1$: what is
#    the token's transition? What if $\beta = 2$?
# 4. Extend §4 to $S_4$: how many reflections does its worst letter need (`delta.decompose`), and
#    so which $n_h$? Run a word of 40 letters through `wkv7.chunked`.
# 5. The minor argument of §4 shows that no DPLR token makes a 3-cycle. Which $2\times 2$ minor
#    plays the same role for the 4-cycle on $\mathbb{R}^4$?
# 6. Using `family.transitions`, find the smallest eigenvalue a KDA transition reaches when
#    $\beta$ is allowed up to 2 (as Grazzi et al. do for DeltaNet). Does the per-channel gate
#    keep it away from $-1$?

# %% [markdown]
# Short answers to exercises 1, 3 and 5 (the student edition hides them):
#
# ### BEGIN SOLUTION
# 1. `a = -alpha * k, b = beta * k` (α the scalar gate, broadcast over K): $b a^\top = -\alpha\beta kk^\top$
#    either way, so the check passes. For KDA the gate is a vector; $b a^\top$ must equal
#    $-\beta k (\alpha\odot k)^\top$, whose columns are scaled by $\alpha$: only $a$ can carry that.
#    Putting it on $b$ gives $-\beta(\alpha\odot k)k^\top$, the transpose pattern: rows scaled instead.
# 3. $(I - kk^\top)^2 = I - kk^\top$ for unit $k$ (a projection: the second step removes nothing more).
#    With $\beta = 2$, $(I - 2kk^\top)^2 = I$: the two reflections cancel, and the token is the identity.
# 5. For $P e_i = e_{i+1 \bmod 4}$, rows 0, 1 and columns 0, 3 of $P - D$ give
#    $\begin{psmallmatrix} -d_0 & 1 \\ 1 & 0\end{psmallmatrix}$ again, determinant $-1$ for every $D$.
# ### END SOLUTION
