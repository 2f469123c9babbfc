"""rwkvlab.tracking: tasks, the tiny RWKV-7-style layer, its eigenvalue ranges, the record's format."""
from __future__ import annotations

import math

import pytest
import torch

from rwkvlab import delta, tracking, wkv7
from rwkvlab.checking import rel_err


def test_s3_labels_are_the_running_products():
    g = torch.Generator().manual_seed(0)
    x, y = tracking.task_batch("s3", 4, 25, g)
    pairs = [(0, 1), (0, 2), (1, 2)]
    for b in range(4):
        want = delta.compose([pairs[i] for i in x[b].tolist()], 3)
        assert [tracking._PERMS[i] for i in y[b].tolist()] == want


def test_parity_labels():
    x, y = tracking.task_batch("parity", 3, 17, torch.Generator().manual_seed(1))
    for b in range(3):
        assert y[b].tolist() == [sum(x[b, :t + 1].tolist()) % 2 for t in range(17)]


@pytest.mark.parametrize("c", [0.0, 1.0, 2.0])
def test_transitions_stay_in_their_ranges(c):
    model = tracking.TinyRWKV7("s3", c, seed=3)
    with torch.no_grad():                                   # push the logits wide, so the ranges' ends show
        model.proj.weight.mul_(20)
    ev = tracking.token_eigenvalues(model)
    assert ev.imag.abs().max() < 1e-6                       # iclr > 0: similar to a symmetric matrix
    lo, hi = ev.real.min().item(), ev.real.max().item()
    assert hi <= 1 + 1e-6
    if c == 0:
        assert lo > math.exp(-math.exp(-0.5)) - 1e-6         # diagonal: e^w in (0.545, 1)
    elif c == 1:
        assert lo > math.exp(-math.exp(-0.5)) - 1 - 1e-6     # chapter 8's bound, −0.455
    else:
        assert lo > math.exp(-math.exp(-0.5)) - 2 - 1e-6     # c = 2 can pass −1: min e^w − 2‖z‖²


def test_forward_is_wkv7_with_the_scaled_removal():
    model = tracking.TinyRWKV7("parity", 2.0, seed=0)
    x = torch.randint(2, (2, 9), generator=torch.Generator().manual_seed(2))
    a = model.token_args(x)
    kk = -a["a"]
    assert rel_err(torch.linalg.vector_norm(kk, dim=-1), torch.ones(2, 9, 2)) < 1e-6
    assert ((a["b"] / kk) <= 2 + 1e-6).all() and ((a["b"] / kk) >= 0).all()
    o, _ = wkv7.chunked(a["r"], a["w"], a["k"], a["v"], a["a"], a["b"])
    assert rel_err(model(x), model.dec(o.reshape(2, 9, -1))) < 1e-5
    assert model(x).shape == (2, 9, 2)


def test_training_lowers_the_loss_and_the_record_round_trips(tmp_path):
    torch.manual_seed(0)
    rows, curves = tracking.experiment(tasks=("parity",), variants={"doubled (c = 2)": 2.0}, seeds=(0,),
                                       steps={"parity": 30}, train_len=8, test_len=20)
    assert [(r["length_lo"], r["length_hi"]) for r in rows] == [(1, 16), (17, 20)]
    assert curves[("parity", "doubled (c = 2)", 0)].shape == (20,)
    losses = tracking.train(tracking.TinyRWKV7("parity", 2.0, seed=1), 40, train_len=8, seed=1)
    assert sum(losses[-5:]) < sum(losses[:5])
    path = tmp_path / "r.csv"
    tracking.write_csv(path, rows, {"command": "python -m rwkvlab.tracking", "seeds": "0"})
    back, prov = tracking.read_csv(path)
    assert prov == {"command": "python -m rwkvlab.tracking", "seeds": "0"}
    assert [r["length_hi"] for r in back] == [16, 20]
    assert abs(back[0]["accuracy"] - rows[0]["accuracy"]) < 1e-5


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="^task"):
        tracking.task_batch("mod3", 2, 3)
    with pytest.raises(ValueError, match="^c"):
        tracking.TinyRWKV7("parity", 3.0)
    with pytest.raises(ValueError, match="^T"):
        tracking.task_batch("parity", 2, 0)


def test_the_shipped_record_is_the_full_experiment():
    from rwkvlab import book

    rows, prov = tracking.read_csv(book.data_path("state_tracking.csv"))
    assert prov["command"] == "python -m rwkvlab.tracking --full --out data/state_tracking.csv"
    for key in ("date", "machine", "software", "wall_seconds", "config"):
        assert prov[key]
    full = tracking.FULL
    assert {r["seed"] for r in rows} == set(full["seeds"])
    assert {(r["task"], r["variant"]) for r in rows} == {(t, v) for t in tracking.TASKS for v in tracking.VARIANTS}
    assert all(r["steps"] == full["steps"][r["task"]] and r["train_len"] == full["train_len"] for r in rows)
    assert max(r["length_hi"] for r in rows) == full["test_len"]
    assert len(rows) == len(tracking.TASKS) * len(tracking.VARIANTS) * len(full["seeds"]) * len(tracking.BUCKETS)
