"""benchmarks/cell_profile.py: it runs the code cells it is given, in order, in one namespace."""
import importlib.util

from rwkvlab import book


def _script():
    path = book.root() / "benchmarks" / "cell_profile.py"
    spec = importlib.util.spec_from_file_location("cell_profile", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cells_run_in_order_and_the_last_is_profiled(tmp_path, capsys):
    chapter = tmp_path / "ch.py"
    chapter.write_text("# %% [markdown]\n# text\n\n# %%\nx = 2\n\n# %%\nraise SystemExit('skipped')\n\n"
                       "# %%\nprint('twice', x * 21)\n")
    assert _script().main([str(chapter), "0,2", "--top", "5"]) == 0
    out = capsys.readouterr().out
    assert out.count("twice 42") == 2                   # cell 2 sees cell 0's x; cell 1 never ran
    assert "== cell 0:" in out and "== cell 2:" in out and "== cell 2 again, profiled" in out
    assert "Ordered by: cumulative time" in out
