"""A plain (non-editable) install works: the wheel built from the tracked files, installed into a
fresh virtual environment as clusters install it, holds every module, and its `gruv` preprocesses
and trains. (The venv sees this machine's torch and other dependencies through
--system-site-packages, so nothing is downloaded; the project itself comes only from the wheel.)"""
from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args, cwd, timeout=300):
    r = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def test_a_wheel_installed_without_e_preprocesses_and_trains(corpus, tmp_path):
    # the tracked files only: what a clone has (git ls-files), built outside the checkout
    src = tmp_path / "src"
    for rel in _run("git", "ls-files", cwd=ROOT).splitlines():
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", src,
         cwd=tmp_path)
    [wheel] = (tmp_path / "dist").glob("gruv_hpc-*.whl")
    env = tmp_path / "venv"
    venv.create(env, system_site_packages=True, with_pip=False)
    py, work = env / "bin" / "python", tmp_path / "work"
    work.mkdir()
    # pip of the outer interpreter installs into the venv (no pip inside it: nothing downloaded)
    _run(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
         "--prefix", env, wheel, cwd=work)
    # every module of the package imports, each from the venv, none from this checkout
    out = _run(py, "-c", (
        "import importlib, pkgutil, gruv_hpc\n"
        "mods = [m.name for m in pkgutil.walk_packages(gruv_hpc.__path__, 'gruv_hpc.')]\n"
        "for m in mods:\n"
        "    f = importlib.import_module(m).__file__\n"
        f"    assert f.startswith({str(env)!r}), (m, f)\n"
        "print(len(mods))\n"), cwd=work)
    have = {p.relative_to(ROOT).with_suffix("").as_posix() for p in (ROOT / "gruv_hpc").rglob("*.py")
            if p.name != "__init__.py"}
    assert int(out.strip()) >= len(have), f"the wheel has {out.strip()} modules, the tree {len(have)}"
    gruv = env / "bin" / "gruv"
    _run(gruv, "preprocess", f"aurora={corpus / 'aurora'}", f"circuit={corpus / 'circuit'}", "--out", work / "data",
         "--sample-rate", "8000", "--block-size", "64", "--clip-blocks", "8", cwd=work)
    log = _run(gruv, "train", "--data", work / "data", "--run-dir", work / "run", "hidden=4", "epochs=1", "batch_size=4",
               "workers=0", "gen_seconds=0", "limit_train_batches=2", cwd=work)
    assert "epoch 1/1" in log and (work / "run" / "checkpoints").is_dir() or (work / "run" / "best.pt").exists()
