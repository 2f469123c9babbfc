"""``python -m rwkvlab bench`` on a tiny CPU configuration: it runs, writes a well-formed CSV and
rejects bad options. Nothing here is a timing criterion: only that the numbers exist."""
from __future__ import annotations

import math

import pytest
import torch

import rwkvlab
from rwkvlab import bench


def _run(tmp_path, *extra):
    argv = ["--T", "64", "--H", "2", "--D", "16", "--reps", "3", "--out-dir", str(tmp_path),
            "--out", "tiny.csv", "--no-plot", *extra]
    assert bench.main(argv) == 0
    return bench.read_csv(tmp_path / "tiny.csv")


@pytest.mark.skipif(rwkvlab.device.has_gpu(), reason="the CPU configuration (on a GPU the Triton rows run)")
def test_bench_cpu_tiny_writes_the_csv(tmp_path, capsys):
    rows = _run(tmp_path, "--impls", "=naive,=chunked,=chunked+varlen,sdpa")
    out = capsys.readouterr().out
    assert "fwd ms" in out and "sdpa_causal" in out.split("fwd ms", 1)[1]  # the table is printed
    assert list(rows[0].keys()) == bench.COLUMNS
    got = {(r["kind"], r["impl"], r["layout"].split()[0]) for r in rows}
    for kind in ("wkv6", "wkv7"):
        for impl, layout in (("naive", "dense"), ("chunked", "dense"), ("chunked", "varlen")):
            assert (kind, impl, layout) in got
    assert ("softmax", "sdpa_causal", "dense") in got
    assert not any(r["impl"].startswith("triton") for r in rows)  # the interpreter is never timed unasked
    for r in rows:
        assert r["status"] == "ok", r
        assert (r["B"], r["T"], r["H"], r["K"], r["V"], r["dtype"]) == (1, 64, 2, 16, 16, "fp32")
        for c in ("fwd_ms", "fwdbwd_ms", "floor_ms", "x_floor"):
            assert math.isfinite(r[c]) and r[c] > 0, (r["impl"], c, r[c])
        if r["kind"] != "softmax":
            assert 0 <= r["rel_diff_ref"] < 1e-4, r
    meta = rows.meta
    assert meta["command"].startswith("python -m rwkvlab bench --T 64")
    for key in ("date", "device", "versions", "copy_bandwidth", "timing"):
        assert meta.get(key), key
    assert "torch" in meta["versions"] and "triton" in meta["versions"]


def test_bench_rejects_an_unknown_kind(capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--kinds", "wkv6,wkv5"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--kinds" in err and "'wkv5'" in err and "wkv6, wkv7" in err


def test_make_inputs_statistics():
    x = bench.make_inputs("wkv7", 2, 32, 2, 16, "fp32", "cpu")
    assert list(x) == ["r", "w", "k", "v", "a", "b"]
    assert (x["w"] < 0).all() and (x["w"] > bench.RWKV7_LOWER_BOUND).all()
    assert torch.allclose(x["a"].norm(dim=-1), torch.ones(2, 32, 2))
    y = bench.make_inputs("wkv6", 2, 32, 2, 16, torch.bfloat16, "cpu", varlen=True)
    assert list(y)[:5] == ["r", "k", "v", "w", "u"] and y["r"].shape == (1, 64, 2, 16)
    cu = y["cu_seqlens"].tolist()
    assert cu[0] == 0 and cu[-1] == 64 and len(cu) - 1 == y["initial_state"].shape[0] == 6
    assert len(set(torch.diff(y["cu_seqlens"]).tolist())) > 1  # mixed lengths
    with pytest.raises(ValueError, match=r"^kind:"):
        bench.make_inputs("wkv5", 1, 4, 1, 4)


def test_bench_block_times_the_model_layer_and_writes_its_csv(tmp_path, capsys):
    """``python -m rwkvlab bench block``: the x070 time mix as the model calls it, forward and
    forward + backward; one small row, ours (FLA's layer needs CUDA, and on an H200 the
    test did not finish in eight minutes with it: its kernels autotune on their first call; ``--no-fla``), with its provenance."""
    from rwkvlab import bench_block

    out = tmp_path / "block.csv"
    assert bench_block.main(["--C", "64", "--T", "20", "--reps", "3", "--no-fla", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert any(line.startswith("# command: python -m rwkvlab bench block") and "--no-fla" in line for line in lines)
    rows = [line for line in lines if not line.startswith("#")]
    assert rows[0].split(",") == bench_block.COLUMNS and len(rows) == 2
    impl, C, heads, B, T, dtype, fwd, fwdbwd, *_ = rows[1].split(",")
    assert (impl, C, heads, T) == ("rwkvlab x070.TimeMix", "64", "1", "20")
    assert float(fwd) > 0 and float(fwdbwd) > 0
