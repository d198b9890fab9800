"""The dataset subsystem: audio in, sharded HDF5 spectral datasets out, and their readers.

- ``audio``: decoding, resampling, int16/float WAV out;
- ``transforms``: the feature transforms (``Transform`` objects in a registry);
- ``config``: ``PreprocessConfig``;
- ``corpus``: the plan of a build (songs, split, task shares);
- ``build``: the builder (shards, tasks, staging, swap, merge);
- ``manifest``: the on-disk format, its statistics and its reader;
- ``clips``: the torch ``ClipDataset`` and the on-device ``Normalizer``; ``resident``: clips held
  in device memory;
- ``synth``: the synthetic demo corpus.

It knows nothing of training or of any scheduler.
"""
