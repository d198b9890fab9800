"""Issue 22's medium and low defects: each one a refusal or one-line error naming the value, or a
damaged part listed and skipped, never a silent mix-up or a traceback."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY
from gruv_hpc.dataset.build import PreprocessConfig, parse_sources, plan, preprocess
from gruv_hpc.dataset.manifest import load_manifest


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "gruv_hpc.cli", *map(str, args)], capture_output=True, text=True, **kw)


def one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for n in needles:
        assert n in r.stderr, (n, r.stderr)


# --- N3: a copy of a song within one artist --------------------------------------------------------

def test_a_copy_within_one_artist_is_excluded_not_put_in_train_and_dev(corpus, tmp_path):
    a = tmp_path / "a"
    shutil.copytree(corpus / "aurora", a)
    songs = sorted(a.iterdir())
    (a / "zz-copy.wav").write_bytes(songs[0].read_bytes())  # the same song under another name
    with pytest.warns(UserWarning, match="zz-copy.wav: the same content as"):
        p = plan(parse_sources([f"a={a}", f"c={corpus / 'circuit'}"]), PreprocessConfig(**TINY))
    assert "zz-copy.wav" not in [s["relpath"] for s in p.songs]
    assert [r["reason"] for r in p.excluded if r["relpath"] == "zz-copy.wav"] == \
        [f"the same content as {songs[0].name} (a copy)"]
    with pytest.warns(UserWarning):
        preprocess(parse_sources([f"a={a}", f"c={corpus / 'circuit'}"]), tmp_path / "ds", PreprocessConfig(**TINY),
                   progress=False)
    m = load_manifest(tmp_path / "ds")
    by_split = {}
    for s in m["songs"]:
        by_split.setdefault(s["sha256"], set()).add(s["split"])
    assert all(len(v) == 1 for v in by_split.values())  # no content in both splits
