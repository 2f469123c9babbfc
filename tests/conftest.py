"""Shared guards for the test suite."""
import pytest

from rwkvlab.bench_generate import set_torch_precision_flags, torch_precision_flags


@pytest.fixture(autouse=True)
def float32_stays_float32():
    """No test may leave torch's TF32 switches changed for the tests after it: on a GPU they turn
    float32 matrix products into TF32 ones for the whole process (the official ``rwkv`` package sets
    them when it is imported), and every 1e-5 comparison after that fails far from its cause."""
    before = torch_precision_flags()
    yield
    after = torch_precision_flags()
    set_torch_precision_flags(before)
    assert after == before, f"this test changed torch's precision switches: {before} -> {after}"
