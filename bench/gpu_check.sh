#!/usr/bin/env bash
# The GPU check (README, "GPU check"): every CUDA path tested and measured, in about 4 minutes on
# one GPU. Runs from a source tree, with no install: PYTHONPATH is the tree.
#
#   bash bench/gpu_check.sh [--cpu] [--budget SECONDS] [--only STEP,STEP] [--work DIR]
#   bash bench/gpu_check.sh --wheels-only      # only the offline-wheel step below, and a soundfile check
#
# A machine without soundfile (and cffi) and without a package index gets them from .whl/ (wheels
# downloaded beforehand; README): only the modules that do not import are installed, into .pydeps/.
# Exit code 0 only when every step passed; the last line is GPU_CHECK_JSON {...}.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

[ -d .pydeps ] && export PYTHONPATH="$PWD/.pydeps:$PYTHONPATH"  # installed by an earlier run
missing=()
for m in soundfile cffi pycparser typing_extensions; do
  "$PY" -c "import $m" >/dev/null 2>&1 || missing+=("$m")
done
if [ ${#missing[@]} -gt 0 ]; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    echo "gpu_check: ${missing[*]} missing: installing from .whl/ into .pydeps/"
    mkdir -p .pydeps
    if ! "$PY" -m pip install --quiet --no-index --find-links .whl --no-deps --target .pydeps "${missing[@]}" 2>/dev/null; then
      echo "gpu_check: no pip here: unpacking the wheels instead"
      "$PY" - "${missing[@]}" <<'PYEOF'
import glob, sys, zipfile
for name in sys.argv[1:]:
    wheels = sorted(glob.glob(f".whl/{name}-*.whl"))
    if not wheels:
        print(f"gpu_check: no wheel for {name} in .whl/")
        continue
    zipfile.ZipFile(wheels[-1]).extractall(".pydeps")
    print(f"gpu_check: unpacked {wheels[-1]}")
PYEOF
    fi
    case ":$PYTHONPATH:" in *":$PWD/.pydeps:"*) ;; *) export PYTHONPATH="$PWD/.pydeps:$PYTHONPATH" ;; esac
  else
    echo "gpu_check: WARNING: ${missing[*]} missing and no wheels in .whl/ (carry it): the steps that read or write audio will fail"
  fi
fi
"$PY" -c "import soundfile, cffi; print('gpu_check: soundfile', soundfile.__version__, '(libsndfile', soundfile.__libsndfile_version__ + '), cffi', cffi.__version__, 'from', soundfile.__file__)" \
  || echo "gpu_check: WARNING: soundfile does not import"

if [ "${1:-}" = "--wheels-only" ]; then
  exec "$PY" -c "
import numpy as np, soundfile as sf, tempfile, os
p = os.path.join(tempfile.mkdtemp(), 't.flac')
sf.write(p, (0.5 * np.sin(np.arange(8000) / 8.0)).astype('float32'), 8000, subtype='PCM_16')
a, sr = sf.read(p)
assert sr == 8000 and len(a) == 8000 and abs(a.max() - 0.5) < 1e-3
print('gpu_check: soundfile writes and reads FLAC: ok')"
fi
exec "$PY" bench/gpu_check.py "$@"
