"""``python -m rwkvlab bench generate`` at toy settings: the rows it writes, and the official
``rwkv`` runtime as an independent reference for the model (same checkpoint, same logits)."""
from __future__ import annotations

import math

import pytest
import torch

from rwkvlab import bench_generate as BG


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_bench_generate_rows_and_agreement_with_the_official_runtime(tmp_path, capsys):
    pytest.importorskip("rwkv")
    out = tmp_path / "g.csv"
    # float32 on any device (a GPU's default is bf16, whose rounding is far above the 1e-5 below)
    rc = BG.main(["--sizes", "ch14", "--tokens", "4", "--prompt", "16", "--batch", "1,2", "--contexts", "8,32",
                  "--reps", "1", "--threads", "1", "--no-startup", "--dtype", "fp32", "--out", str(out)])
    assert rc == 0
    text = out.read_text()
    assert text.startswith("# rwkvlab bench generate") and "# command: python -m rwkvlab bench generate --sizes ch14" in text
    rows = BG.read_csv(out)
    got = {(r["impl"], r["phase"], r["batch"], r["context"]) for r in rows}
    for key in [("rwkvlab", "decode", 1, None), ("rwkvlab", "decode", 2, None), ("official", "decode", 1, None),
                ("rwkvlab_reference", "decode", 1, None), ("rwkvlab", "prefill", 1, 16), ("official", "prefill", 1, 16),
                ("softmax_kv", "step", 1, 8), ("softmax_kv", "step", 1, 32), ("rwkvlab_step", "step", 1, 32)]:
        assert key in got, key
    assert all(r["status"] == "ok" for r in rows), [r for r in rows if r["status"] != "ok"]
    ours = next(r for r in rows if r["impl"] == "rwkvlab" and r["phase"] == "decode" and r["batch"] == 1)
    assert ours["rel_diff_official"] < 1e-5                  # the same model as BlinkDL's runtime computes
    assert ours["tok_per_s"] > 0 and not math.isnan(ours["vs_official"])
    assert "official" in capsys.readouterr().out


def test_bench_generate_refuses_unknown_sizes():
    with pytest.raises(SystemExit):
        BG.main(["--sizes", "7b", "--no-official"])


def test_importing_the_official_runtime_leaves_float32_alone():
    """rwkv 0.8.32 turns on TF32 for the whole process when it is imported (rwkv/model.py lines
    10-12); import_official puts torch's switches back, whatever they were before."""
    pytest.importorskip("rwkv")
    for setting in (False, True):
        before = BG.torch_precision_flags()
        try:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = setting
            torch.backends.cudnn.benchmark = setting
            want = BG.torch_precision_flags()
            cls, note = BG.import_official(False)
            assert cls is not None, note
            assert BG.torch_precision_flags() == want
        finally:
            BG.set_torch_precision_flags(before)
