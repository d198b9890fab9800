"""The floors every run must beat: the dev loss of three predictors that learn nothing about music.

- **mean**: always predict the train mean. Features are normalized by the train split's mean and
  std, so the train mean is 0 in the model's units and its loss is the mean square of the
  normalized dev targets: about 1.0 when dev resembles train.
- **persistence**: the next frame is the current one.
- **linear**: per frequency bin, the next frame's value from the current frame's by a linear map
  fitted on train (least squares): a 2x2 map with intercept on (Re, Im) for a complex layout, a
  scalar with intercept for a real one (``bin_features``: the transform says which).

Each is fitted on the train clips only and scored on dev the way training's evaluate() scores a
run (the mean over dev clips of each clip's MSE), with the statistics of the run's own artists, so
a run's dev loss and its artists' floors compare directly. A run at or above the best of the three
has learned nothing about unseen songs that these trivial predictors do not already know.

Whether a run beats a floor is judged on the paired per-clip difference (the run's best checkpoint
minus the floor, clip by clip), with a bootstrap over dev songs and the clips within them
(``paired_interval``): the dev set is a handful of songs, and clips of one song are not
independent evidence.
"""
from __future__ import annotations

import numpy as np

from gruv_hpc.analysis.common import RunInfo
from gruv_hpc.dataset.manifest import STD_FLOOR


# When fewer than this share of the stored values carry half of the floor, the report names them.
FEW = 0.01


def dominant_values(per_value: np.ndarray, transform, sample_rate: int, top: int = 10) -> dict | None:
    """The smallest set of stored values that holds half of the floor's loss, when it is a few
    (at most FEW of them): {"n", "of", "share", "values": [{"part", "hz", "share"}] (the ``top``
    largest)}; None when the loss is spread out."""
    total = float(per_value.sum())
    if total <= 0:
        return None
    order = np.argsort(per_value)[::-1]
    n = int(np.searchsorted(np.cumsum(per_value[order]) / total, 0.5)) + 1
    if n > max(1, FEW * len(per_value)):
        return None
    vals = []
    for j in order[:min(n, top)]:
        part, hz = transform.stored_value_name(int(j), sample_rate)
        vals.append({"part": part, "hz": hz, "share": float(per_value[j] / total)})
    return {"n": n, "of": len(per_value), "share": float(per_value[order[:n]].sum() / total), "values": vals}


FLOORS = ("mean", "persistence", "linear")


def bin_features(transform, dim: int) -> np.ndarray:
    """(bins, parts) feature indices: row b holds the features that describe bin b (its (Re, Im)
    for a complex layout, its one value for a real one), from the transform's ``parts``."""
    parts = int(getattr(transform, "parts", 2))
    if dim % parts:
        raise ValueError(f"feature_dim {dim} is not {parts} equal parts (transform {transform.name!r})")
    n = dim // parts
    return np.arange(dim).reshape(parts, n).T


def _design(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """(T, D) frames -> (T, bins, parts + 1): each bin's values and a 1 for the intercept."""
    z = x[:, idx]
    return np.concatenate([z, np.ones(z.shape[:2] + (1,), z.dtype)], axis=-1)


def fit_linear(pairs, idx: np.ndarray) -> np.ndarray:
    """Least squares per bin over (x, y) clips (float64 sums of Z'Z and Z'Y): (bins, parts + 1,
    parts), y[:, bin] = [x[:, bin], 1] @ W[bin]. Features that are always zero get weight 0
    (the pseudo-inverse)."""
    k = idx.shape[1] + 1
    zz = np.zeros((len(idx), k, k))
    zy = np.zeros((len(idx), k, k - 1))
    for x, y in pairs:
        z = _design(np.asarray(x, np.float64), idx)
        zz += np.einsum("tbi,tbj->bij", z, z)
        zy += np.einsum("tbi,tbj->bij", z, np.asarray(y, np.float64)[:, idx])
    return np.linalg.pinv(zz, hermitian=True) @ zy


def predict_linear(w: np.ndarray, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    out = np.empty(x.shape, np.float64)
    out[:, idx] = np.einsum("tbi,bij->tbj", _design(np.asarray(x, np.float64), idx), w)
    return out


def floor_losses(data, artists: list[str] | None, std_floor: float = STD_FLOOR, detail: dict | None = None) -> dict:
    """Each floor's per-clip dev losses, in the model's normalized units: {"mean", "persistence",
    "linear": float64 arrays (one per dev clip, the order of ``ClipDataset(data, "dev", artists)``),
    "songs": each dev clip's song id}; the arrays are empty when dev has no clips. The linear
    predictor is fitted on train. ``detail``, when given, gets "dominant": the few stored values
    (frequency bins) that carry half of the mean floor, if a few do."""
    from gruv_hpc.dataset.clips import DatasetHandle
    handle = data if isinstance(data, DatasetHandle) else DatasetHandle(data, artists, std_floor=std_floor)
    train, dev = handle.split("train"), handle.split("dev")
    idx = bin_features(handle.transform, len(handle.expand_index))
    w = fit_linear((train[i] for i in range(len(train))), idx) if len(train) else None
    per = {k: np.zeros(len(dev)) for k in FLOORS}
    per_feature = np.zeros(handle.mean.shape)
    for i in range(len(dev)):
        x, y = (t.double().numpy() for t in dev[i])
        per["mean"][i] = np.square(y).mean()
        per["persistence"][i] = np.square(y - x).mean()
        per["linear"][i] = np.square(y - predict_linear(w, x, idx)).mean() if w is not None else np.nan
        per_feature += np.square(y).mean(0)
    if detail is not None and len(dev):
        per_value = np.bincount(handle.expand_index, weights=per_feature * (handle.sign != 0),
                                minlength=handle.params["storage_dim"])
        detail["dominant"] = dominant_values(per_value, handle.transform, handle.params["sample_rate"])
    per["songs"] = dev.index.song_of_clip.copy()
    return per


def mean_prediction_loss(data, artists: list[str] | None, split: str = "dev", std_floor: float = STD_FLOOR,
                         detail: dict | None = None) -> tuple[float | None, int]:
    """(loss of predicting the train mean on ``split``, clips): (None, 0) when it has no clips."""
    from gruv_hpc.dataset.clips import ClipDataset
    if split == "dev":
        per = floor_losses(data, artists, std_floor, detail)["mean"]
        return (float(per.mean()), len(per)) if len(per) else (None, 0)
    ds = ClipDataset(data, split, artists or None, std_floor=std_floor)
    total = sum(float(ds[i][1].double().square().mean()) for i in range(len(ds)))
    return (total / len(ds), len(ds)) if len(ds) else (None, 0)


BOOTSTRAP = 2000  # resamples: the interval's ends move by about 1% of its width between seeds of the resampling


def paired_interval(diff: np.ndarray, songs: np.ndarray, level: float = 0.95, n_boot: int = BOOTSTRAP,
                    seed: int = 0) -> dict:
    """The mean per-clip difference (model minus floor) and its bootstrap interval, resampling
    dev songs with replacement and then the clips within each drawn song: {"diff", "low",
    "high", "songs", "clips"}. Fixed resampling seed: the same losses give the same interval."""
    diff, songs = np.asarray(diff, np.float64), np.asarray(songs)
    ok = np.isfinite(diff)
    diff, songs = diff[ok], songs[ok]
    uniq = np.unique(songs)
    out = {"diff": float(diff.mean()) if len(diff) else None, "low": None, "high": None, "songs": len(uniq),
           "clips": len(diff)}
    if not len(diff):
        return out
    rng = np.random.default_rng(seed)
    groups = [diff[songs == s] for s in uniq]
    means = np.empty(n_boot)
    for b in range(n_boot):
        drawn = rng.integers(len(groups), size=len(groups))
        tot = cnt = 0.0
        for g in drawn:
            c = groups[g][rng.integers(len(groups[g]), size=len(groups[g]))]
            tot, cnt = tot + c.sum(), cnt + len(c)
        means[b] = tot / cnt
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    out.update(low=float(lo), high=float(hi))
    return out


def best_floor(b: dict) -> tuple[str | None, float | None]:
    """(name, dev loss) of an artist's lowest floor."""
    known = [(b[f"{k}_dev_loss"], k) for k in FLOORS if b.get(f"{k}_dev_loss") is not None]
    if not known:
        return None, None
    v, k = min(known)
    return k, v


FLOOR_LABELS = {"mean": "predicting the train mean", "persistence": "persistence (next = current)",
                "linear": "linear per bin"}
FLOOR_STYLES = {"mean": ":", "persistence": "--", "linear": "-."}


def draw_floors(ax, b: dict | None, data: dict, artist: str, prefix: str = "") -> list[float]:
    """The artist's floors as horizontal grey lines on ``ax`` (Figures 1 and 2), recorded in the
    figure's data ("baseline": the mean floor, "floors": all three); returns the values drawn."""
    drawn = []
    for k in FLOORS:
        v = (b or {}).get(f"{k}_dev_loss", (b or {}).get("dev_loss") if k == "mean" else None)
        if v is None or not np.isfinite(v):
            continue
        ax.axhline(v, color="0.4", ls=FLOOR_STYLES[k], lw=1, label=prefix + FLOOR_LABELS[k])
        data.setdefault("floors", {}).setdefault(artist, {})[k] = v
        if k == "mean":
            data.setdefault("baseline", {})[artist] = v
        drawn.append(v)
    return drawn


def model_clip_losses(model, dev) -> np.ndarray:
    """The model's loss on each dev clip (float64, the order of ``dev``, a normalized
    ClipDataset), computed as training's evaluate() computes a dev loss."""
    import torch
    out = np.zeros(len(dev))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(len(dev)):
            x, y = dev[i]
            pred, _ = model(x.unsqueeze(0))
            out[i] = float((pred[0].float() - y).double().square().mean())
    model.train(was_training)
    return out


def against_floors(model_losses: np.ndarray, per: dict, recorded_best: float | None = None) -> dict:
    """A run's results columns against its artist's floors (``floor_losses``): for each floor
    the paired interval of model minus floor (``<floor>_diff``, ``_low``, ``_high``), the best
    floor's as ``floor_diff*`` with ``beats_floor`` (its whole interval below 0), the dev songs
    and clips they rest on, and ``eval_dev_loss``: the checkpoint's dev loss as measured here.
    ``eval_noise``: how far that is from the dev loss training recorded for it (the numerical
    noise of evaluating on another machine, thread count or batch size)."""
    row: dict = {"eval_dev_loss": float(model_losses.mean()) if len(model_losses) else None}
    row["eval_noise"] = (abs(row["eval_dev_loss"] - recorded_best)
                         if row["eval_dev_loss"] is not None and recorded_best is not None else None)
    if not len(model_losses) or len(model_losses) != len(per["mean"]):
        return row
    best, best_v = None, None
    for k in FLOORS:
        iv = paired_interval(model_losses - per[k], per["songs"])
        row[f"{k}_diff"], row[f"{k}_diff_low"], row[f"{k}_diff_high"] = iv["diff"], iv["low"], iv["high"]
        v = float(np.mean(per[k]))
        if np.isfinite(v) and (best_v is None or v < best_v):
            best, best_v = k, v
        row["floor_songs"], row["floor_clips"] = iv["songs"], iv["clips"]
    if best is not None:
        row["best_floor"] = best
        row["floor_diff"], row["floor_diff_low"], row["floor_diff_high"] = (row[f"{best}_diff{s}"] for s in ("", "_low", "_high"))
        row["beats_floor"] = row["floor_diff_high"] is not None and row["floor_diff_high"] < 0
    return row


def baselines(runs: list[RunInfo], per_clip: dict | None = None, datasets=None) -> dict:
    """{artist label: {"dev_loss" (the mean floor, as before), "<floor>_dev_loss" for each of
    FLOORS, "best_floor", "best_floor_dev_loss", "dev_clips", "dev_songs", "std_floor",
    "dominant"} or {"error"}}, from the first run of each artist (the runs of one artist share
    its data and statistics; their normalization is the first run's std_floor). ``per_clip``,
    when given, gets each artist's per-clip losses (``floor_losses``) for the paired
    comparisons; ``datasets``: the analysis' open datasets (``common.Datasets``). A dataset that
    cannot be read gives its error, not an exception: the rest of the report is still drawn."""
    from gruv_hpc.errors import GruvError
    from gruv_hpc.training.config import run_config
    out: dict = {}
    for r in runs:
        if r.artist in out:
            continue
        try:
            detail: dict = {}
            floor = float(run_config(r.config)["std_floor"])
            data = datasets(r.config["data"], r.config.get("artists"), floor) if datasets else r.config["data"]
            per = floor_losses(data, r.config.get("artists"), std_floor=floor, detail=detail)
            n = len(per["mean"])
            b = {f"{k}_dev_loss": (float(np.mean(per[k])) if n else None) for k in FLOORS}
            b["best_floor"], b["best_floor_dev_loss"] = best_floor(b)
            out[r.artist] = {"dev_loss": b["mean_dev_loss"], **b, "dev_clips": n,
                             "dev_songs": len(np.unique(per["songs"])), "std_floor": floor,
                             "dominant": detail.get("dominant")}
            if per_clip is not None:
                per_clip[r.artist] = per
        except (GruvError, OSError) as e:
            out[r.artist] = {"error": str(e)}
    return out
