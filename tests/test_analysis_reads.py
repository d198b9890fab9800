"""The analysis reads each input once: one manifest read per dataset (shared by the floor,
Figure 3 and every run's loading, whatever the artists) and one config.json read per run. (No
job-state query while the report is built: the listing is handed in, and tests/test_imports.py
keeps the analysis below the cluster layer.)"""
from __future__ import annotations

import json
from pathlib import Path

from conftest import tiny_config


def test_one_manifest_read_per_dataset_and_one_config_read_per_run(data, tmp_path, monkeypatch):
    import gruv_hpc.dataset.clips as clips
    import gruv_hpc.dataset.manifest as manifest
    from gruv_hpc.analysis.report import analyze
    from gruv_hpc.training.trainer import main
    listing = []
    for artist in ("aurora", "circuit"):
        for cell in ("lstm", "gru"):
            run = tmp_path / "runs" / f"{artist}-{cell}"
            main(tiny_config(data, epochs=1, limit_train_batches=2, artists=[artist], cell=cell), run)
            listing.append({"name": run.name, "state": "COMPLETED", "error": None, "run_dir": str(run),
                            "config": json.loads((run / "config.json").read_text())["config"],
                            "grid": {"artists": [artist], "cell": cell}})
    reads: list[str] = []
    real = manifest.load_manifest

    def counting(path, *a, **kw):
        reads.append(str(Path(path).resolve()))
        return real(path, *a, **kw)
    monkeypatch.setattr(manifest, "load_manifest", counting)
    monkeypatch.setattr(clips, "load_manifest", counting)
    configs: list[str] = []
    real_read = Path.read_text

    def read_text(self, *a, **kw):
        if self.name == "config.json":
            configs.append(str(self))
        return real_read(self, *a, **kw)
    monkeypatch.setattr(Path, "read_text", read_text)
    summary = analyze("sweep", tmp_path / "rep", listing, n_seed_clips=1, seed_seconds=0.16, max_clips=4,
                      log=lambda *a: None)
    assert len(summary["runs"]) == 4 and not summary["skipped_runs"]
    assert reads == [str(Path(data).resolve())], reads
    assert sorted(configs) == sorted(str(Path(r["run_dir"]) / "config.json") for r in listing), configs
