"""State tracking, trained: tiny RWKV-7-style layers with the removal term at c = 0, 1 and 2.

Grazzi et al. (arXiv 2411.12537) prove that a linear RNN whose transitions have only
non-negative eigenvalues cannot recognise parity at arbitrary length, and show in training that
widening the range to [−1, 1] lets models learn it. This module runs that experiment on the
book's own kernel. One layer, per head::

    S_t = diag(e^{w_t}) S_{t-1} − c · (iclr_t ⊙ κ̂_t)(κ̂_tᵀ S_{t-1}) + k_t v_tᵀ,     o_t = S_tᵀ r_t

i.e. ``wkv7`` with ``a = −κ̂``, ``b = c · κ̂ ⊙ iclr`` and the released ranges otherwise
(``w = −e^{−0.5} σ(·)``, ``iclr = σ(·)``, ``κ̂`` unit). ``c = 1`` is RWKV-7 as released (every
eigenvalue real, above ``e^{−e^{−0.5}} − 1 ≈ −0.455``, chapter 8); ``c = 2`` reaches −1 (a
reflection along ``κ̂`` when ``iclr → 1`` and ``w → 0``) and can pass it, down to
``e^{−e^{−0.5}} − 2 ≈ −1.455`` (a transition that grows the state along ``κ̂``); ``c = 0`` switches
the removal off (a diagonal transition, eigenvalues in ``(0.545, 1)``).

Every quantity of a token is a function of that token alone (an embedding and one linear map),
so the transitions a trained model uses can be listed and their eigenvalues read off
(:func:`token_eigenvalues`). A LayerNorm and a small MLP decode ``o_t`` into the answer for the
prefix ending at t. Tasks (:data:`TASKS`): ``"parity"`` (bits; the answer is the parity of the
ones so far) and ``"s3"`` (letters are the transpositions (0 1), (0 2), (1 2); the answer is the
running product in S_3, one of six classes). Training uses sequences of ``train_len`` with an
answer at every position, so every length up to ``train_len`` is trained; testing uses longer
ones.

The full experiment, recorded in ``data/state_tracking.csv``, is one command::

    python -m rwkvlab.tracking --full --out data/state_tracking.csv
"""
from __future__ import annotations

import itertools
import math
import time

import torch

from . import validate, wkv7

__all__ = ["TASKS", "VARIANTS", "task_batch", "TinyRWKV7", "train", "accuracy_by_position",
           "token_eigenvalues", "experiment", "DEFAULT", "FULL", "BUCKETS", "write_csv", "read_csv"]

_PAIRS = [(0, 1), (0, 2), (1, 2)]
_PERMS = list(itertools.permutations(range(3)))


def _s3_table() -> torch.Tensor:
    """``table[p, x]``: the index of σ_x ∘ π_p, σ_x the transposition ``_PAIRS[x]``."""
    table = torch.empty(6, 3, dtype=torch.long)
    for p, perm in enumerate(_PERMS):
        for x, (i, j) in enumerate(_PAIRS):
            table[p, x] = _PERMS.index(tuple(j if v == i else i if v == j else v for v in perm))
    return table


_S3 = _s3_table()

#: task -> (vocabulary size, number of classes)
TASKS = {"parity": (2, 2), "s3": (3, 6)}
#: the removal term's factor c, by name
VARIANTS = {"removal off (c = 0)": 0.0, "as released (c = 1)": 1.0, "doubled (c = 2)": 2.0}


def task_batch(task: str, B: int, T: int, generator: torch.Generator | None = None):
    """``(x, y)``, both LongTensor [B, T]: random inputs and the answer after every prefix."""
    if task not in TASKS:
        raise ValueError(f"task: expected one of {tuple(TASKS)}, got {task!r}")
    B, T = validate.positive_int("B", B), validate.positive_int("T", T)
    vocab, _ = TASKS[task]
    x = torch.randint(vocab, (B, T), generator=generator)
    if task == "parity":
        return x, x.cumsum(1) % 2
    y, p = torch.empty_like(x), torch.zeros(B, dtype=torch.long)        # π_0 = identity (index 0)
    for t in range(T):
        p = _S3[p, x[:, t]]
        y[:, t] = p
    return x, y


class TinyRWKV7(torch.nn.Module):
    """One RWKV-7-style layer with the removal term scaled by ``c``, and a decoder.

    ``forward(x)``: x LongTensor [B, T] -> logits [B, T, classes]. Per token, from its embedding
    e (dimension ``D``), one linear map gives, per head (``H`` heads of size ``K``): the log decay
    ``w = −e^{−0.5} σ(·)``, the unit removal key ``κ̂``, ``iclr = σ(·)``, the written key k, the value
    v and the read-out key r; then ``wkv7.<impl>(r, w, k, v, a = −κ̂, b = c · κ̂ ⊙ iclr)``.
    """

    def __init__(self, task: str, c: float, D: int = 32, H: int = 2, K: int = 8, hidden: int = 64,
                 seed: int = 0):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task: expected one of {tuple(TASKS)}, got {task!r}")
        c = validate.real("c", c)
        if not 0 <= c <= 2:
            raise ValueError(f"c: expected a number in [0, 2], got {c}")
        vocab, classes = TASKS[task]
        torch.manual_seed(seed)
        self.task, self.c, self.H, self.K = task, c, H, K
        self.emb = torch.nn.Embedding(vocab, D)
        self.proj = torch.nn.Linear(D, 6 * H * K)
        self.dec = torch.nn.Sequential(torch.nn.LayerNorm(H * K), torch.nn.Linear(H * K, hidden),
                                       torch.nn.ReLU(), torch.nn.Linear(hidden, classes))

    def token_args(self, x: torch.Tensor) -> dict:
        """The ``wkv7`` arguments of the tokens ``x`` [B, T]: each [B, T, H, K]."""
        B, T = x.shape
        p = self.proj(self.emb(x)).view(B, T, self.H, 6, self.K)
        w = -math.exp(-0.5) * torch.sigmoid(p[:, :, :, 0])
        kk = torch.nn.functional.normalize(p[:, :, :, 1], dim=-1)
        iclr = torch.sigmoid(p[:, :, :, 2])
        return dict(r=p[:, :, :, 5], w=w, k=p[:, :, :, 3], v=p[:, :, :, 4], a=-kk, b=self.c * kk * iclr)

    def forward(self, x: torch.Tensor, impl: str = "naive") -> torch.Tensor:
        a = self.token_args(x)
        o, _ = getattr(wkv7, impl)(a["r"], a["w"], a["k"], a["v"], a["a"], a["b"])
        return self.dec(o.reshape(*x.shape, self.H * self.K))


def token_eigenvalues(model: TinyRWKV7) -> torch.Tensor:
    """Eigenvalues of every token's transition ``diag(e^w) + b aᵀ``: complex [vocab, H, K]."""
    vocab = model.emb.num_embeddings
    with torch.no_grad():
        a = model.token_args(torch.arange(vocab)[None])
        G = torch.diag_embed(a["w"].exp()) + a["b"].unsqueeze(-1) * a["a"].unsqueeze(-2)
        return torch.linalg.eigvals(G[0].double())


def train(model: TinyRWKV7, steps: int, batch: int = 32, train_len: int = 16, lr: float = 3e-3,
          seed: int = 0) -> list[float]:
    """Adam on cross-entropy at every position of random ``train_len``-token sequences; returns the losses."""
    steps, batch, train_len = (validate.positive_int(n, v) for n, v in
                               (("steps", steps), ("batch", batch), ("train_len", train_len)))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed + 1)
    losses = []
    model.train()
    for _ in range(steps):
        x, y = task_batch(model.task, batch, train_len, g)
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def accuracy_by_position(model: TinyRWKV7, test_len: int, n: int = 64, seed: int = 12345) -> torch.Tensor:
    """Accuracy of the answer after each prefix length 1..test_len, over ``n`` fresh sequences: [test_len]."""
    g = torch.Generator().manual_seed(seed)
    x, y = task_batch(model.task, n, validate.positive_int("test_len", test_len), g)
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(-1) == y).double().mean(0)


#: the default (small) run of the chapter and the full one of the record
DEFAULT = dict(seeds=(0, 1), steps={"parity": 250, "s3": 350}, train_len=16, test_len=128, batch=32)
FULL = dict(seeds=(0, 1, 2, 3, 4), steps={"parity": 600, "s3": 800}, train_len=16, test_len=256, batch=32)
#: prefix-length buckets reported by :func:`experiment`
BUCKETS = ((1, 16), (17, 32), (33, 64), (65, 128), (129, 256))


def experiment(tasks=tuple(TASKS), variants=None, seeds=DEFAULT["seeds"], steps=DEFAULT["steps"],
               train_len=DEFAULT["train_len"], test_len=DEFAULT["test_len"], batch=DEFAULT["batch"],
               progress=None, models: dict | None = None) -> tuple[list[dict], dict]:
    """Train every (task, variant, seed) and measure accuracy by prefix length.

    Returns ``(rows, curves)``: one row per (task, variant, seed, bucket of :data:`BUCKETS` up to
    ``test_len``) with keys ``task, variant, c, seed, steps, train_len, length_lo, length_hi,
    accuracy, final_loss, min_eig, seconds``; and ``curves[(task, variant, seed)]`` the per-position
    accuracy [test_len]. ``min_eig`` is the smallest real part of any token's transition eigenvalue
    after training. Pass a dict as ``models`` to receive the trained models, keyed like ``curves``.
    """
    variants = dict(VARIANTS) if variants is None else variants
    rows, curves = [], {}
    for task in tasks:
        for name, c in variants.items():
            for seed in seeds:
                t0 = time.perf_counter()
                model = TinyRWKV7(task, c, seed=seed)
                losses = train(model, steps[task], batch=batch, train_len=train_len, seed=seed)
                acc = accuracy_by_position(model, test_len, seed=1000 + seed)
                seconds = time.perf_counter() - t0
                final = sum(losses[-20:]) / len(losses[-20:])
                curves[(task, name, seed)] = acc
                if models is not None:
                    models[(task, name, seed)] = model
                min_eig = token_eigenvalues(model).real.min().item()
                for lo, hi in BUCKETS:
                    if lo > test_len:
                        break
                    rows.append(dict(task=task, variant=name, c=c, seed=seed, steps=steps[task],
                                     train_len=train_len, length_lo=lo, length_hi=min(hi, test_len),
                                     accuracy=acc[lo - 1:hi].mean().item(), final_loss=final,
                                     min_eig=min_eig, seconds=seconds))
                if progress:
                    progress(f"{task:>6} {name:>20} seed {seed}: loss {final:.3f}, "
                             f"accuracy beyond train length {acc[train_len:].mean().item():.3f} ({seconds:.1f} s)")
    return rows, curves


FIELDS = ("task", "variant", "c", "seed", "steps", "train_len", "length_lo", "length_hi", "accuracy",
          "final_loss", "min_eig", "seconds")


def write_csv(path, rows: list[dict], provenance: dict) -> None:
    """Write ``rows`` with ``# key: value`` provenance lines on top."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        for k, v in provenance.items():
            f.write(f"# {k}: {v}\n")
        wr = csv.DictWriter(f, fieldnames=FIELDS)
        wr.writeheader()
        for r in rows:
            wr.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in FIELDS})


def read_csv(path) -> tuple[list[dict], dict]:
    """``(rows, provenance)`` of a file written by :func:`write_csv` (numbers parsed)."""
    import csv

    prov, lines = {}, []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("# "):
                k, _, v = line[2:].rstrip("\n").partition(": ")
                prov[k] = v
            else:
                lines.append(line)
    rows = []
    for r in csv.DictReader(lines):
        for k in ("c", "accuracy", "final_loss", "min_eig", "seconds"):
            r[k] = float(r[k])
        for k in ("seed", "steps", "train_len", "length_lo", "length_hi"):
            r[k] = int(r[k])
        rows.append(r)
    return rows, prov


def main(argv=None) -> int:
    import argparse
    import datetime
    import platform
    import sys

    ap = argparse.ArgumentParser(prog="python -m rwkvlab.tracking", description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="the full experiment (rwkvlab.tracking.FULL)")
    ap.add_argument("--out", default=None, help="CSV file to write (default: print a summary only)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = FULL if args.full else DEFAULT
    t0 = time.perf_counter()
    rows, _ = experiment(seeds=cfg["seeds"], steps=cfg["steps"], train_len=cfg["train_len"],
                         test_len=cfg["test_len"], batch=cfg["batch"], progress=print)
    wall = time.perf_counter() - t0
    if args.out:
        write_csv(args.out, rows, {
            "what": "rwkvlab.tracking.experiment: TinyRWKV7 with c = 0, 1, 2 on parity and S3 (transpositions)",
            "command": "python -m rwkvlab.tracking" + (" --full" if args.full else "") + f" --out {args.out}",
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} torch thread(s), "
                       f"shared 2-core CPU".replace("  ", " "),
            "software": f"python {sys.version.split()[0]}, torch {torch.__version__}",
            "wall_seconds": f"{wall:.0f}",
        })
        print(f"wrote {len(rows)} rows to {args.out} in {wall:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
