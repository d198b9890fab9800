"""The floor every run must beat: the dev loss of always predicting the train mean.

Features are normalized by the train split's mean and std, so the train mean is 0 in the model's
units and its loss is the mean square of the normalized dev targets. It is computed the way
training's evaluate() computes a dev loss (the mean over dev clips of each clip's MSE), with the
statistics of the run's own artists, so a run's dev loss and its artists' floor compare directly.
About 1.0 when dev resembles train; a run at or above it has learned nothing that carries to dev.
"""
from __future__ import annotations

from gruv_hpc.analysis.common import RunInfo, load_runs


def mean_prediction_loss(data, artists: list[str] | None, split: str = "dev") -> tuple[float | None, int]:
    """(loss of predicting the train mean on ``split``, clips): (None, 0) when it has no clips."""
    import torch

    from gruv_hpc.dataset.clips import ClipDataset
    ds = ClipDataset(data, split, artists or None)
    total = torch.zeros((), dtype=torch.float64)
    for i in range(len(ds)):
        _, y = ds[i]
        total += y.double().square().mean()
    return (float(total) / len(ds), len(ds)) if len(ds) else (None, 0)


def baselines(runs: list[RunInfo]) -> dict:
    """{artist label: {"dev_loss", "dev_clips"} or {"error"}}, from the first run of each artist
    (the runs of one artist share its data and statistics). A dataset that cannot be read gives
    its error, not an exception: the rest of the report is still drawn."""
    from gruv_hpc.errors import GruvError
    out: dict = {}
    for r in runs:
        if r.artist in out:
            continue
        try:
            loss, n = mean_prediction_loss(r.config["data"], r.config.get("artists"))
            out[r.artist] = {"dev_loss": loss, "dev_clips": n}
        except (GruvError, OSError) as e:
            out[r.artist] = {"error": str(e)}
    return out


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("sweep_dir")
    a = ap.parse_args()
    for artist, b in baselines(load_runs(a.sweep_dir)).items():
        print(f"{artist}: " + (f"dev loss of predicting the train mean {b['dev_loss']:.4f} over {b['dev_clips']} clips"
                               if b.get("dev_loss") is not None else b.get("error") or "the dev split has no clips"))
