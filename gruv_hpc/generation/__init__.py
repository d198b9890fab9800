"""Generation from a trained run, and the numbers that describe the result.

- ``run``: a trained run loaded once (model, config, dataset);
- ``algorithms``: stateful and refeed continuation, feedback noise and sampling;
- ``synthesis``: seeds as normalized features, and features back to audio;
- ``measures``: loops, level, flatness, clicks, copying, as plain functions;
- ``diagnostics``: the one registry of what a continuation reports, read by every output;
- ``command``: ``gruv generate`` (OUT.wav and its sidecar);
- ``tensorboard``: the epoch-end hook that logs a sample during training.
"""
from gruv_hpc.generation.algorithms import feedback_noise, generate_refeed, generate_stateful
from gruv_hpc.generation.command import generate
from gruv_hpc.generation.diagnostics import REGISTRY, Diagnostic, describe, register, unregister
from gruv_hpc.generation.measures import click_ratio, loop_stats, music_band, nearest_train, rms_db, spectral_flatness
from gruv_hpc.generation.run import LoadedRun, check_device, load_run, open_dataset
from gruv_hpc.generation.synthesis import seed_and_continuation_audio, seed_features, to_audio

__all__ = ["Diagnostic", "LoadedRun", "REGISTRY", "check_device", "click_ratio", "describe",
           "feedback_noise", "generate", "generate_refeed", "generate_stateful", "load_run", "loop_stats",
           "music_band", "nearest_train", "open_dataset", "register", "rms_db", "seed_and_continuation_audio",
           "seed_features", "spectral_flatness", "to_audio", "unregister"]
