"""What a researcher sees (issue #14): progress in logs, run logs, defaults, generation's options."""
import subprocess
import sys

from conftest import TINY


def gruv(*args, **kw):
    return subprocess.run([sys.executable, "-m", "gruv_hpc.cli", *map(str, args)], capture_output=True, text=True, **kw)


# --- progress where no terminal is looking --------------------------------------------------------

def test_preprocess_progress_into_a_pipe_is_a_few_plain_lines(corpus, tmp_path):
    r = gruv("preprocess", f"aurora={corpus / 'aurora'}", f"circuit={corpus / 'circuit'}", "--out", tmp_path / "d",
             *(f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()))
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr  # no redrawn bar frames in a log file
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("preprocess:")]
    assert lines == ["preprocess: 6/6 songs, " + lines[-1].split(", ", 1)[1]]  # one line: the end (a short run)


def test_plain_progress_lines_at_an_interval_or_on_change(tmp_path):
    import io

    from gruv_hpc.progress import PlainProgress, progress
    f = io.StringIO()
    assert isinstance(progress(range(3), file=f), PlainProgress)  # a StringIO is no terminal
    bar = progress(range(1000), desc="songs", unit="song", file=f, interval_s=3600)
    assert sum(1 for _ in bar) == 1000
    bar.close()
    assert f.getvalue().splitlines() == ["songs: 1000/1000 songs, 00:00:00 elapsed"]
    f = io.StringIO()
    bar = progress(total=3, desc="runs", unit="run", file=f, interval_s=None)
    for n, running in [(0, 2), (0, 2), (1, 2), (1, 2), (2, 1), (3, 0)]:
        bar.n = n
        bar.set_postfix(running=running)
        bar.refresh()
    bar.close()
    assert [ln.split(",")[0] for ln in f.getvalue().splitlines()] == ["runs: 0/3 runs", "runs: 1/3 runs", "runs: 2/3 runs",
                                                                       "runs: 3/3 runs"]
