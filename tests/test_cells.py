"""The cell registry (gruv_hpc.training.cells): a cell registered from outside the package, a
plain tanh RNN, trains, generates, and goes through every figure and the report, ordered and
coloured as its registry entry says. No file outside the package names a cell."""
import ast
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import tiny_config
from gruv_hpc.errors import ConfigError
from gruv_hpc.training import cells

ROOT = Path(__file__).resolve().parent.parent


class TanhRNN(nn.Module):
    """h = tanh(W x + U h'): the throwaway cell."""

    def __init__(self, input_size, hidden, recurrence="auto"):
        super().__init__()
        self.w = nn.Linear(input_size, hidden)
        self.u = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x, state=None):
        h = x.new_zeros(x.shape[0], self.u.in_features) if state is None else state
        out = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.w(x[:, t]) + self.u(h))
            out.append(h)
        return torch.stack(out, 1), h


@pytest.fixture
def tanh_cell():
    # order -1: drawn before the paper's cells, which neither sorting by name nor a fixed list would do
    spec = cells.register(cells.CellSpec("tanh-rnn", TanhRNN, label="TANH-RNN", color="tab:purple", order=-1,
                                         matmuls=1, help="a throwaway cell"))
    yield spec
    cells.unregister("tanh-rnn")


def test_registry_metadata_needs_no_torch():
    code = ("import sys; from gruv_hpc.training import cells; from gruv_hpc.training.config import TrainConfig\n"
            "TrainConfig(cell='gru').validate(); print(cells.names())\n"
            "assert 'torch' not in sys.modules, 'the registry imported torch'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "('lstm', 'gru', 'lstm-fused')"


def test_unknown_cell_names_the_registered_ones(tanh_cell):
    with pytest.raises(ConfigError, match=r"cell: 'transformer' is not one of tanh-rnn, lstm, gru, lstm-fused"):
        tiny_config(Path("."), cell="transformer")
    with pytest.raises(ValueError, match="already registered"):
        cells.register(tanh_cell)
    assert cells.get("gru").flops_per_frame(10, 4) == cells.affine_flops_per_frame(10, 4) + 2 * 3 * 2 * 3 * 16
    assert cells.order_key("gone") > cells.order_key("lstm-fused")  # an unregistered name sorts last, never fails


def test_no_file_outside_the_package_names_a_cell():
    """No string literal that is a cell's name outside cells/ (tests, docs and job files may)."""
    names = set(cells.names())
    hits = []
    for d in ("gruv_hpc", "analysis", "bench"):
        for f in (ROOT / d).rglob("*.py"):
            if "cells" in f.relative_to(ROOT).parts:
                continue
            with open(f, "rb") as fh:
                for tok in tokenize.tokenize(fh.readline):
                    if tok.type == tokenize.STRING and "f" not in tok.string.split(tok.string[-1])[0].lower() \
                            and ast.literal_eval(tok.string) in names:
                        hits.append(f"{f.relative_to(ROOT)}:{tok.start[0]}: {tok.string}")
    assert not hits, hits


def test_a_registered_cell_trains_generates_and_goes_through_the_report(tanh_cell, data, tmp_path):
    from gruv_hpc.analysis.audio import generate_audio
    from gruv_hpc.analysis.claims import claims
    from gruv_hpc.analysis.collect import collect, group_rows
    from gruv_hpc.analysis.common import RunInfo
    from gruv_hpc.analysis.fig1_loss import fig1
    from gruv_hpc.analysis.fig2_hidden import fig2
    from gruv_hpc.analysis.fig3_spectrogram import fig3
    from gruv_hpc.analysis.report import write_html
    from gruv_hpc.paths import RunPaths, read_jsonl
    from gruv_hpc.training.checkpoint import load_checkpoint
    from gruv_hpc.training.trainer import main
    assert cells.names() == ("tanh-rnn", "lstm", "gru", "lstm-fused")
    runs = []
    for cell in ("gru", "tanh-rnn", "lstm"):
        root = tmp_path / "runs" / cell
        res = main(tiny_config(data, cell=cell, epochs=2, limit_train_batches=3, artists=["aurora"]), root)
        assert res["status"] == "done"
        paths = RunPaths(root)
        cfg = load_checkpoint(paths.best)["config"]
        assert cfg["cell"] == cell
        runs.append(RunInfo(cell, "COMPLETED", cfg, {"cell": cell}, paths, read_jsonl(paths.metrics)))
    assert [h["epoch"] for h in runs[1].history] == [1, 2]
    out = tmp_path / "report"
    f1, f2, f3 = fig1(runs, out), fig2(runs, out), fig3(runs, out, max_clips=2)
    assert [c["cell"] for c in f1["curves"].values()] == ["tanh-rnn", "lstm", "gru"]  # registry order
    assert f1["curves"]["tanh-rnn"]["color"] == "tab:purple" and f1["curves"]["tanh-rnn"]["label"] == "TANH-RNN"
    assert list(f2["points"]) == ["aurora/tanh-rnn", "aurora/lstm", "aurora/gru"]
    assert list(f3["band"]) == ["aurora/tanh-rnn", "aurora/lstm", "aurora/gru"]
    assert set(f3["band_runs"]) == {"tanh-rnn", "lstm", "gru"}
    audio = generate_audio(runs, out, n_seed_clips=1, seed_seconds=0.32, length_ratio=1.0)
    assert not audio["tanh-rnn"].get("error"), audio["tanh-rnn"]
    rows = collect(runs, out, audio, f3.get("band_runs"))
    assert {r["cell"]: r["params"] for r in rows}["tanh-rnn"] == sum(p.numel() for p in TanhRNN(8, 8).parameters()) \
        + 2 * (runs[0].config["feature_dim"] * 8) + 8 + runs[0].config["feature_dim"]
    groups = group_rows(rows)
    assert sorted(g["cell"] for g in groups) == ["gru", "lstm", "tanh-rnn"]
    table = claims(rows)
    first = table[0]  # the paper's LSTM against its GRU: the throwaway cell is in neither side
    assert first["claim"].startswith("The LSTM's dev loss") and len(first["comparisons"]) == 1
    page = write_html(out, runs, rows, table, f1, f2, f3, audio, groups, {})
    assert "TANH-RNN" in page.read_text() or "tanh-rnn" in page.read_text()
