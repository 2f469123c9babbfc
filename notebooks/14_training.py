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
# # Training on a laptop: associative recall and a tiny text model
#
# The last chapter of the book trains the models it built. Nothing here needs a GPU: the
# models are tiny, the tasks are chosen so that a few hundred optimisation steps tell a story,
# and the chapter's default run takes well under a minute on a laptop CPU. At its end you will
# be able to
#
# * set up **multi-query associative recall** (MQAR; Arora et al. 2023, "Zoology"), a
#   synthetic task known to separate sequence mixers, in a version where keys get *overwritten*;
# * train a tiny RWKV-7, a tiny RWKV-6 with exactly the same recurrent state size, and a
#   softmax transformer of the same width and depth on it, and read their loss curves;
# * see where the delta rule wins — and where, at this scale, it does not reliably — from a
#   **recorded** run over three seeds (made once, on 23 November 2026, and shipped in
#   `data/recall_full.json`; `RWKVLAB_FULL=1` recomputes it);
# * train a byte-level RWKV-7 on a Shakespeare excerpt, sample from it in RNN mode, save it
#   as an official checkpoint and load it with `python -m rwkvlab generate`.
#
# The task in one line. The model reads key–value pairs, then keys again, and must answer
# each with the value *last* paired with it:
#
# $$
# \underbrace{k_2\,v_7\;\; k_0\,v_3\;\; k_2\,v_{11}\;\; k_1\,v_5 \;\cdots}_{\text{pairs (keys repeat)}}\;\;
# \underbrace{k_2 \to v_{11}\;\;\; k_0 \to v_3\;\cdots}_{\text{queries}}
# $$
#
# An additive memory ($S \mathrel{+}= k v^\top$) answers $k_2$ with a blend of $v_7$ and
# $v_{11}$; the delta rule removes $v_7$ when it writes $v_{11}$ (chapter 8).
#
# **Live and recorded.** By default the chapter trains one short run *live* (section 4) and
# the text model (section 6); the multi-seed comparison of section 5 is *read from a file*,
# `data/recall_full.json`, not computed when you run the chapter. `RWKVLAB_FULL=1` recomputes
# it instead (three tasks × three seeds × 400 steps at batch 64, and a longer text run): about
# half an hour on a laptop CPU, e.g.
# `RWKVLAB_FULL=1 python -m pytest --nbval notebooks/14_training.py --nbval-cell-timeout=7200 -p no:cacheprovider`.

# %%
import rwkvlab

print(rwkvlab.device.describe())

# %%
import inspect
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from rwkvlab import book
from rwkvlab import model as M
from rwkvlab.model import train
from rwkvlab.model import transformer as tf
from rwkvlab.tokenizer import ByteTokenizer

# the book's checkout (book.toml, data/, out/), found from the working directory; outside one
# this raises an error that says where it looked
ROOT = book.root()
FULL = os.environ.get("RWKVLAB_FULL", "") == "1"
# One thread: these tensors are tiny, and on a shared or busy CPU several threads per
# operation wait on each other far longer than they compute (we measured 20× slow-downs).
torch.set_num_threads(1)
torch.manual_seed(0)
print("full-length run" if FULL else "short run (set RWKVLAB_FULL=1 for the full-length experiment)")

# %% [markdown]
# ## 1. The task
#
# Keys are tokens $0,\dots,n_k-1$ and values $n_k,\dots,n_k+n_v-1$. A sequence holds $P$
# pairs and then $Q$ queries; each query is a key that occurred, followed by its answer, the
# value of that key's *latest* pair. The model is trained to predict the next token, but the
# loss is taken only at the query positions, where the next token is an answer. The generator
# is vectorised: the latest pair for each query is the largest position whose key matches.

# %%
print(inspect.getsource(train.Recall.batch))

# %% [markdown]
# The three tasks of this chapter differ in how often keys repeat:

# %%
for name, task in train.RECALL_TASKS.items():
    print(f"{name:16s} {task}  → input length {task.length}")
task = train.RECALL_TASKS["overwrite-4keys"]
inp, tgt, mask = task.batch(1, torch.Generator().manual_seed(3))
name_of = lambda t: f"k{t}" if t < task.n_keys else f"v{t - task.n_keys}"  # noqa: E731
print("\none sequence of 'overwrite-4keys':")
print(" ".join(name_of(t) for t in inp[0].tolist()) + f" [{name_of(tgt[0, -1].item())}]")
print("answers at the query positions:", " ".join(name_of(t) for t in tgt[mask].tolist()))

# %% [markdown]
# How much does overwriting matter? If a model answered with the *first* value it saw for
# the key instead of the latest, it would be right only when the key was never re-assigned.
# Measured over many sequences:

# %%
def first_vs_latest(task, n=4000):
    inp, tgt, mask = task.batch(n, torch.Generator().manual_seed(0))
    pairs = inp[:, : 2 * task.n_pairs].reshape(n, task.n_pairs, 2)
    keys, vals = pairs[..., 0], pairs[..., 1]
    q = inp[:, 2 * task.n_pairs::2]                                      # query keys
    first = (keys[:, None, :] == q[:, :, None]).float().argmax(-1)      # first matching pair
    return (vals.gather(1, first) == tgt[mask].reshape(n, -1)).float().mean().item()


for name, t in train.RECALL_TASKS.items():
    print(f"{name:16s} answering with the first value is right {100 * first_vs_latest(t):5.1f} % of the time")
assert first_vs_latest(train.RECALL_TASKS["distinct"]) == 1.0
assert first_vs_latest(train.RECALL_TASKS["overwrite-4keys"]) < 0.25
print(f"chance (uniform over {task.n_values} values): {100 / task.n_values:.1f} %")

# %% [markdown]
# In "overwrite-4keys" each of the 4 keys is paired twice on average, and about four answers
# in five require forgetting an earlier value; with distinct keys nothing is ever overwritten.
#
# ## 2. Three models with the same shape
#
# `train.small_models` builds an RWKV-7, an RWKV-6 and a softmax transformer of the same width
# $C = 32$, depth 2, head size 16 and MLP width $2C$, each with its own initialisation recipe
# (RWKV-LM's for the two RWKVs). The two RWKV models have **exactly the same recurrent state**:
# per block, two token-shift vectors and one $16\times16$ matrix per head. The transformer
# instead keeps every key and value it has read.

# %%
print(inspect.getsource(train.small_models))
models = train.small_models(task.vocab_size, max_len=task.length + 1)
with torch.no_grad():
    states = {n: M.state_nbytes(models[n](inp)[1]) for n in ("RWKV-7", "RWKV-6")}
    kv = tf.cache_nbytes(models["softmax"](inp)[1])
for n, m in models.items():
    n_par = sum(p.numel() for p in m.parameters())
    mem = f"recurrent state {states[n]} bytes" if n in states else f"KV cache after {task.length} tokens: {kv} bytes"
    print(f"{n:8s} {n_par:6d} parameters | {mem}")
assert states["RWKV-7"] == states["RWKV-6"], "equal state size by construction"
assert kv > 2 * states["RWKV-7"], "after one sequence the KV cache is over twice the RWKV state"

# %% [markdown]
# ## 3. The training loop
#
# Plain AdamW with a short warm-up, a cosine decay to a tenth of the rate, and gradient
# clipping; one fresh batch per step (the task is infinite, so there is no over-fitting to
# worry about). RWKV-LM's recipe starts the output maps at zero, which tolerates a large
# learning rate, $10^{-2}$; in our trials the transformer diverged above a few $10^{-3}$, so it
# trains at $3\cdot10^{-3}$ (`train.LEARNING_RATES`). The loop prints a one-line progress bar.

# %%
print(inspect.getsource(train.fit))

# %% [markdown]
# Which WKV core? All of them compute the same thing (chapters 6–13). Models this small train
# on the CPU even where a GPU exists (they are too small to keep one busy), and for sequences
# this short RWKV-7's token loop (`naive`) was its fastest core there when we timed it, while
# for RWKV-6 the chunked form was.

# %%
IMPLS = {"RWKV-7": "naive", "RWKV-6": "chunked"}

# %% [markdown]
# ## 4. A short run, live
#
# The default run trains each model for 120 steps at batch 32 on "overwrite-4keys"
# (the full run: 400 steps at batch 64, three seeds, three tasks). This is a *small* budget:
# it shows that all three learn something, not who wins — section 5 is about that.

# %%
steps, batch = (400, 64) if FULL else (120, 32)
live = train.recall_run(task, steps, batch, seed=0, impls=IMPLS)

# %%
chance_loss = math.log(task.n_values)
fig, ax = plt.subplots(figsize=(7, 3.4))
for n, r in live.items():
    smooth = [sum(r["losses"][max(0, i - 9): i + 1]) / len(r["losses"][max(0, i - 9): i + 1]) for i in range(len(r["losses"]))]
    ax.plot(smooth, label=f"{n} (accuracy {100 * r['accuracy']:.0f} %)")
ax.axhline(chance_loss, ls=":", c="gray", label="chance: ln 16")
ax.set_xlabel("step")
ax.set_ylabel("loss at query positions")
ax.set_title(f"overwrite-4keys, batch {batch}")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
for n, r in live.items():
    final = sum(r["losses"][-20:]) / 20
    print(f"{n:8s} final loss {final:.3f} | accuracy {100 * r['accuracy']:5.1f} % | {r['seconds']:.1f} s")
    # learning happened: loss well below chance and accuracy well above it
    assert final < chance_loss - 0.5, f"{n}: loss {final:.3f} did not fall 0.5 below ln 16 = {chance_loss:.3f}"
    assert r["accuracy"] > 1 / task.n_values + 0.15, f"{n}: accuracy {r['accuracy']:.3f} is not 15 points above chance"
print("past the plateau (accuracy > 60 %) in this live run:",
      ", ".join(n for n, r in live.items() if r["accuracy"] > 0.6) or "none")

# %% [markdown]
# All three leave chance quickly (that is what the cell asserts), and a run then typically sits
# on a plateau near 40 % accuracy for a while (the recorded table below shows it too).
# That plateau is the easy part of the task: a query key tells the model which *few* values
# are plausible (those that appeared next to that key), and guessing among them already beats
# chance by a wide margin. Getting the *latest* one is the hard part, and it arrives, if at
# all, as a sudden drop in the loss after the plateau — typical of tasks that need a mechanism
# to form (here: write a key–value association, overwrite it, retrieve it by key). In a short
# run one model may already have dropped — the last line above names it; with seed 0 at this
# budget it can well be RWKV-6 — and which one differs from seed to seed, which is why the next
# section looks at several.
#
# ## 5. Where the delta rule wins: the recorded full run
#
# **Everything in this section is a recording, not a live result** (unless you set
# `RWKVLAB_FULL=1`). The full experiment trains each model for 400 steps at batch 64, on all
# three tasks, with three seeds each (seed = initialisation and data stream), with the same
# `train.recall_run` as section 4. It takes about 2 minutes per task and seed on one
# CPU core. We ran it once, on 23 November 2026, on the 16-core CPU of the project's GPU
# machine with torch 2.11, one process per run and one thread each, and ship the losses (every
# 5th step averaged) and accuracies in `data/recall_full.json`. With `RWKVLAB_FULL=1` this
# cell recomputes all nine runs in turn, writes `out/recall_full.json`, and the table, plot
# and assertions below then use the new numbers. One entry alone is
# `train.recall_run(train.RECALL_TASKS["overwrite-4keys"], 400, 64, seed=0, impls=IMPLS)`.
# Floating-point details differ between torch versions and move single accuracies by a few
# points: rerunning that entry with torch 2.13 on a 2-core CPU gave the same outcome for all
# three models (RWKV-7 solved it, RWKV-6 and softmax on the plateau) with RWKV-6 at 40.8 %
# instead of the recorded 38.8 %.

# %%
if FULL:
    recorded = []
    for name, t in train.RECALL_TASKS.items():
        for seed in range(3):
            res = train.recall_run(t, 400, 64, seed=seed, impls=IMPLS)
            for v in res.values():
                v["losses"] = [sum(v["losses"][i:i + 5]) / len(v["losses"][i:i + 5]) for i in range(0, len(v["losses"]), 5)]
            recorded.append({"task": name, "seed": seed, "steps": 400, "batch": 64, "loss_every": 5, "results": res})
    (ROOT / "out").mkdir(exist_ok=True)
    (ROOT / "out" / "recall_full.json").write_text(json.dumps(recorded))
    print("wrote out/recall_full.json")
else:
    recorded = json.loads(book.data_path("recall_full.json").read_text())
    print(f"RECORDED, not computed now: {len(recorded)} runs read from data/recall_full.json "
          f"({recorded[0]['machine']})")

names = ["RWKV-7", "RWKV-6", "softmax"]
acc = {(r["task"], r["seed"], n): r["results"][n]["accuracy"] for r in recorded for n in names}
tasks = list(train.RECALL_TASKS)
print(f"{'task':16s} " + " | ".join(f"{n:>22s}" for n in names))
for t in tasks:
    cells = [" ".join(f"{100 * acc[(t, s, n)]:5.1f}" for s in range(3)) for n in names]
    print(f"{t:16s} " + " | ".join(f"{c:>22s}" for c in cells))

# %%
fig, axes = plt.subplots(1, 3, figsize=(14, 3.4), sharey=True)
colors = {"RWKV-7": "C0", "RWKV-6": "C1", "softmax": "C2"}
for ax, t in zip(axes, tasks):
    for r in (r for r in recorded if r["task"] == t):
        for n in names:
            ls = r["results"][n]["losses"]
            ax.plot([r["loss_every"] * i for i in range(len(ls))], ls, c=colors[n], lw=0.9,
                    label=n if r["seed"] == 0 else None)
    ax.axhline(math.log(16), ls=":", c="gray")
    ax.set_title(t)
    ax.set_xlabel("step")
axes[0].set_ylabel("loss at query positions")
axes[0].legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# What the shipped record (`data/recall_full.json`) shows, task by task (three seeds each,
# accuracy in %; a rerun with `RWKVLAB_FULL=1` may differ in the details):
#
# * **overwrite-4keys** — the delta rule's home ground. RWKV-7 solves it with every seed;
#   RWKV-6, with the same state size, solves it with one seed of three and otherwise stays on
#   the plateau. The softmax transformer, at this budget, never leaves the plateau.
# * **distinct** (no overwriting) — both RWKV models can solve it, since an additive memory is
#   enough when every key is written once; RWKV-6 does so with all three seeds, RWKV-7 with two
#   of three. The delta rule is not needed here, and it does not make optimisation easier.
# * **overwrite** with 8 keys and 16 pairs — harder, and 400 steps are not enough for either
#   model to be reliable: RWKV-7 solves it with one seed and gets partway with another, RWKV-6
#   gets partway with two.
#
# So, at equal state size, the delta rule buys *reliability on the task that needs
# overwriting*; elsewhere the two are comparable and the variation between seeds is as large
# as the variation between models. Three seeds are a small sample; the assertions below check
# only what the record shows clearly, and they check the *record* (the file, or the rerun with
# `RWKVLAB_FULL=1`), not anything trained in this session.

# %%
def mean_acc(task_name, model_name):
    return sum(acc[(task_name, s, model_name)] for s in range(3)) / 3


solved = lambda t, n: sum(acc[(t, s, n)] > 0.9 for s in range(3))  # noqa: E731
print(f"{'rerun' if FULL else 'recorded'}, overwrite-4keys: RWKV-7 solves {solved('overwrite-4keys', 'RWKV-7')}/3 seeds, "
      f"RWKV-6 {solved('overwrite-4keys', 'RWKV-6')}/3; mean accuracy {100 * mean_acc('overwrite-4keys', 'RWKV-7'):.0f} % "
      f"vs {100 * mean_acc('overwrite-4keys', 'RWKV-6'):.0f} %")
assert mean_acc("overwrite-4keys", "RWKV-7") > mean_acc("overwrite-4keys", "RWKV-6") + 0.2
assert solved("overwrite-4keys", "RWKV-7") > solved("overwrite-4keys", "RWKV-6")
assert solved("distinct", "RWKV-6") >= 2, "an additive memory suffices without overwriting"
assert max(acc[(t, s, "softmax")] for t in tasks for s in range(3)) < 0.5, "the transformer stays on the plateau here"

# %% [markdown]
# Two remarks on fairness. The transformer is not a weak architecture for recall — with
# enough steps it can be the strongest of the three, since its KV cache keeps every pair
# verbatim (after one sequence it already holds more than twice the RWKV state; section 2).
# Learned absolute positions and our small budget are the likely brakes; exercise 3 asks you
# to give it more.
# And RWKV-6 is not helpless against overwriting: its data-dependent decay can wipe the
# state's rows that belong to an incoming key, which works when keys occupy separate channels
# — with 4 keys in 16-dimensional heads it is possible, and one recorded seed solves the task
# (we did not inspect whether it does so this way). The delta rule
# does the same removal for *any* direction of the key, by construction.
#
# ### How one block can solve it
#
# It helps to see how a single RWKV-7 block *could* represent the solution, with the pieces of
# chapter 12 (a sketch, not a proof: the check below covers the state update only). Take a value
# token $v_j$ that follows its key $k_i$.
#
# 1. **Token shift** puts the key into the value's position: with $\mu_k \approx 1$ the input
#    to the key projection at the value token is (mostly) the previous token, the key $k_i$,
#    while with $\mu_v \approx 0$ the value projection sees the current token, $v_j$.
# 2. **Remove, then write.** The removal key $\hat\kappa$ points along the key's direction; with
#    an in-context learning rate $a \approx 1$ the update first deletes whatever the state
#    returns for that direction — the *old* value of this key — and then writes the new
#    association $\tilde k\,v^\top$.
# 3. **Read.** At a query, the token shift again supplies nothing useful, but the receptance of
#    the query token itself is the key's direction, and $S^\top r$ returns the value stored
#    under it; the head maps it to the value's token.
#
# An additive memory can do steps 1 and 3 but not the deletion: after $k_2 v_7 \ldots k_2
# v_{11}$ it returns $v_7 + v_{11}$ (decayed), and the head must guess between them. RWKV-6's
# decay can imitate the deletion only by forgetting whole channels, which also forgets every
# other key stored in them. The state update alone shows the difference, with orthonormal keys
# written by hand into one head of `rwkvlab.wkv7`:

# %%
from rwkvlab import wkv7

Kd = 8
keys_ = torch.eye(Kd, dtype=torch.float64)[None, :3]                  # three orthonormal keys, [1, 3, K]
vals_ = torch.randn(1, 4, Kd, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
order = [0, 1, 0, 2]                                                  # key 0 is written twice
S_delta = torch.zeros(1, 1, Kd, Kd, dtype=torch.float64)
S_add = torch.zeros_like(S_delta)
zero = torch.zeros(1, 1, Kd, dtype=torch.float64)
for t, i in enumerate(order):
    kt, vt = keys_[:, i][:, None], vals_[:, t][:, None]
    _, S_delta = wkv7.step(kt, zero, kt, vt, -kt, kt, S_delta)         # a = 1: remove, then write
    _, S_add = wkv7.step(kt, zero, kt, vt, zero, zero, S_add)          # additive: write only
read = lambda S: torch.einsum("bhkv,bhk->bhv", S, keys_[:, 0][:, None])[0, 0]  # noqa: E731
rwkvlab.check("delta rule returns the latest value of key 0", read(S_delta), vals_[0, 2], 1e-12)
rwkvlab.check("additive memory returns the sum of both values", read(S_add), vals_[0, 0] + vals_[0, 2], 1e-12)

# %% [markdown]
# ## 6. A tiny text model
#
# Now a language model in the ordinary sense: a byte-level RWKV-7 (vocabulary 256, so no
# tokenizer file) trained on the first 120 KB of Shakespeare's plays shipped in `data/`. The
# last tenth is held out.

# %%
text = book.data_path("shakespeare.txt").read_text(encoding="utf-8")
data = torch.tensor(ByteTokenizer().encode(text))
split = int(0.9 * len(data))
train_data, val_data = data[:split], data[split:]
counts = torch.bincount(train_data, minlength=256).double()
p = counts / counts.sum()
unigram = -(p[p > 0] * p[p > 0].log()).sum().item()
print(f"{len(data)} bytes; a model that knows only byte frequencies scores {unigram:.3f} nats/byte")

width, depth, head, T_text, B_text, steps_text = (128, 4, 32, 128, 16, 2000) if FULL else (64, 2, 32, 64, 16, 60)
lm = M.RWKV7(M.Config7.make(256, width, depth, head_size=head, d_decay=16, d_aaa=16, d_mv=16, d_gate=16))
lm.init_weights("rwkv", seed=0)
print(f"text model: {sum(p.numel() for p in lm.parameters())} parameters")
text_losses = train.fit(lm, train.text_batches(train_data, B_text, T_text, torch.Generator().manual_seed(0)),
                        steps_text, 1e-2 if not FULL else 6e-3, impl="chunked",
                        label="text")

# %%
with torch.no_grad():
    n_val = min(len(val_data) - 1, 4096)
    logits, _ = lm(val_data[None, :n_val])
    val_loss = F.cross_entropy(logits[0], val_data[1:n_val + 1]).item()
fig, ax = plt.subplots(figsize=(7, 3))
ax.plot(text_losses, lw=0.8, label="training batches")
ax.axhline(unigram, ls=":", c="gray", label="byte frequencies only")
ax.axhline(math.log(256), ls="--", c="gray", label="uniform: ln 256")
ax.scatter([len(text_losses) - 1], [val_loss], c="k", zorder=3, label="held-out")
ax.set_xlabel("step")
ax.set_ylabel("nats per byte")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
print(f"held-out loss {val_loss:.3f} nats/byte ({val_loss / math.log(2):.2f} bits) vs {unigram:.3f} from frequencies alone")
assert val_loss < unigram - 0.3, "the model uses context, not only byte frequencies"

# %% [markdown]
# The held-out loss is well below what byte frequencies alone give, so the model uses context
# (mostly: which letters follow which, where spaces and line breaks go, the shape of a
# speaker's name). Sampling from it runs in RNN mode, one `step` per byte, with nucleus
# sampling:

# %%
prompt = "ROMEO:\n"
sample_ids = list(lm.generate(ByteTokenizer().encode(prompt), 200, temperature=0.8, top_p=0.9, seed=1))
print(prompt + ByteTokenizer().decode(sample_ids))

# %% [markdown]
# Not Shakespeare — after seconds of training on a laptop it is a model of Shakespeare's
# *typography*. The full run (`RWKVLAB_FULL=1`: width 128, 4 layers, 2,000 steps) should get
# further — more real words and speaker names; nothing here checks that, so compare the samples
# yourself.
#
# ## 7. Save, and generate from the command line
#
# `rwkvlab.model.save` writes the official RWKV-LM names, so the file is an x070 checkpoint
# like BlinkDL's, only small; the `generate` command loads it, picks the byte tokenizer from
# the vocabulary size, and streams text in RNN mode.

# %%
out_dir = ROOT / "out"
out_dir.mkdir(exist_ok=True)
ckpt = out_dir / "shakespeare-x070.pth"
M.save(lm, ckpt)
cmd = [sys.executable, "-m", "rwkvlab", "generate", "--model", str(ckpt), "--prompt", "JULIET:\n",
       "--tokens", "120", "--temperature", "0.8", "--seed", "3"]
res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120,
                     env={**os.environ, "OMP_NUM_THREADS": "1"})
print("$ python -m rwkvlab generate --model out/shakespeare-x070.pth --prompt 'JULIET:\\n' --tokens 120 ...")
print(res.stderr.strip())
print(res.stdout)
assert res.returncode == 0 and res.stdout.startswith("JULIET:\n")
reloaded = M.load(ckpt)
with torch.no_grad():
    rwkvlab.check("reloaded checkpoint, same logits", reloaded(val_data[None, :64])[0], lm(val_data[None, :64])[0], 0.0)

# %% [markdown]
# ## Summary
#
# * MQAR with overwritten keys separates memories that can *replace* from memories that can
#   only *add*. At equal state size, RWKV-7 learned the 4-key overwrite task with every seed of
#   the recorded run, RWKV-6 with one of three; without overwriting, the additive memory was
#   enough.
# * Small-budget training is noisy: mechanisms appear as sudden drops after plateaus, and
#   seeds differ as much as models do. Report several seeds; assert only what they all show.
# * A small RWKV-7 (about 150 thousand parameters in the short run) learns the surface of
#   English from about 108 KB of text (the training split) in well under a minute on a CPU;
#   `rwkvlab.model.save` makes it an official checkpoint that `generate` can run.
#
# ## Exercises
#
# 1. Run the short experiment of section 4 with five seeds. On how many does RWKV-7 leave the
#    plateau within 120 steps? What changes at batch 64?
# 2. Set `k_a` to zero and freeze it (so the replacement key is $k$, not $a\odot k$) in the
#    RWKV-7 model before training on "overwrite-4keys". Does it still solve the task? What
#    about setting the in-context learning rate $a$ to zero (no removal at all)?
# 3. Give the transformer 2,000 steps and a learning-rate warm-up of 100 steps. When does it
#    solve "overwrite-4keys", and what accuracy does it reach on "overwrite"?
# 4. Make RWKV-6's job harder: use 32 keys in "overwrite" with head size 16. Predict which model
#    suffers more, then check.
# 5. Train the text model with RWKV-6 instead (`M.RWKV6` with the same sizes). Compare held-out
#    losses after the same number of steps.
# 6. Load the saved checkpoint, read a long prompt in parallel mode, and continue it in RNN mode
#    (chapter 13). Check that the first generated distribution equals the parallel forward's
#    last row.

# %% [markdown]
# ### Exercises that check themselves
#
# Each cell below prints its exercise's statement, holds a solution between the markers
# `### BEGIN SOLUTION` and `### END SOLUTION` (the student edition, `python -m rwkvlab exercises
# student`, replaces it with a stub), and ends with `exercises.check`, which runs the function on
# seeded cases against an independent reference (here: PyTorch's cross-entropy in float64, the
# rates `train.fit` really applies, a replay of the loop) and says what is wrong. The cells are
# cheap: a second or two in all.
#
# 7. The loss every cell of this chapter minimises, written out: next-token cross-entropy, with
#    the targets one position to the left of the logits that predict them.

# %%
import torch

from rwkvlab import exercises

print(exercises.spec("14.7"))


def next_token_loss(logits, idx):
    ### BEGIN SOLUTION
    pred, target = logits[:, :-1], idx[:, 1:]            # position t predicts token t + 1
    log_p = pred.gather(-1, target[..., None])[..., 0] - torch.logsumexp(pred, dim=-1)
    return -log_p.mean()
    ### END SOLUTION


exercises.check("14.7", next_token_loss)

# %% [markdown]
# 8. Section 3's schedule, step by step: the learning rate `train.fit` uses at each optimiser
#    step (warm-up, cosine, floor — and which step of the scheduler each update sees).

# %%
import math

import torch

from rwkvlab import exercises

print(exercises.spec("14.8"))


def lr_schedule(steps, peak, warmup):
    ### BEGIN SOLUTION
    s = torch.arange(steps, dtype=torch.float64)          # optimiser step i sees s = i - 1 scheduler steps
    warm = torch.clamp((s + 1) / warmup, max=1.0)
    return peak * warm * (0.1 + 0.9 * (1 + torch.cos(math.pi * s / steps)) / 2)
    ### END SOLUTION


exercises.check("14.8", lr_schedule)

# %% [markdown]
# 9. A loop for texts longer than a window: train on consecutive windows and carry the
#    recurrent state from one window to the next, cut from the graph — what RWKV's constant-size
#    state makes cheap (chapter 13), and what `train.fit` does not need for MQAR.

# %%
import torch
import torch.nn.functional as F

from rwkvlab import exercises
from rwkvlab import model as M

print(exercises.spec("14.9"))


def train_stream(model, stream, T, lr):
    ### BEGIN SOLUTION
    opt = torch.optim.Adam(model.parameters(), lr=lr)    # once: its moment estimates must persist
    state, losses = None, []
    for i in range((stream.shape[1] - 1) // T):
        inputs, targets = stream[:, i * T:(i + 1) * T], stream[:, i * T + 1:(i + 1) * T + 1]
        logits, state = model(inputs, state)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        state = M.state_detach(state)                    # keep the values, drop the graph
        losses.append(loss.item())
    return losses
    ### END SOLUTION


exercises.check("14.9", train_stream)
