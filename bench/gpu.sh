#!/usr/bin/env bash
# One GPU command: the host path's rows (python -m bench.host_gpu: GIN in a 2-view training step, a call from the
# host against a CUDA graph; first, issue #31), the GPU correctness tests (pytest -m gpu), the plan sweep and the
# `paper` benchmark preset,
# within 520 s (run it with the device tool's timeout_s 560: what a 15-minute lease has left after the machine's
# start still allows a short second call). Everything it writes goes to $OUT (default bench/results/), no folders:
#   env.txt        nvidia-smi, versions, git commit, how fedgin was made importable
#   gpu-tests.log  python -m pytest -m gpu <test files that use the gpu marker> (-n 8 -v where pytest-xdist is)
#   bench.log      the host path's rows (bench.host_gpu), the host cost of an explicit draw's call (bench.host_cost,
#                  opt-in), Nsight Compute's sections (opt-in), the sweep's output, the suite's
#   <date>-<device>-paper.json / .md / .png   the suite's report
#   <date>-<device>-sweep.json / .md   the kernel's tile plans side by side, and the eager reference on the same
#                  inputs (python -m bench.sweep)
# Eight files in all: the most the device tool brings back from $OUT.
#
# It installs nothing from a registry (the GPU machine has its own torch/triton and no network):
# - MONAI (imported by fedgin.bench's comparison rows) is not on that image: wheels in $FEDGIN_WHEELS (default
#   .wheels/, ignored by git: fill it first with `pip download monai nibabel --no-deps -d .wheels` and name it in the
#   device tool's `carry`) are unzipped into a temp dir on PYTHONPATH when the import fails.
# - fedgin.kernels / fedgin.bench (kernels/ and bench/ mapped in by setup.py's package_dir) must import from
#   this checkout: as they are, else `pip install --no-deps --no-index --no-build-isolation -e .` (offline),
#   else a sitecustomize.py shim in a temp dir on PYTHONPATH that maps the two names to kernels/ and bench/
#   (what the H200 image of 2026-11-27 needed).
# Knobs: GPU_SH_STEPS (default "hostpath tests sweep bench"; hostpath: python -m bench.host_gpu into bench.log, at
# most GPU_SH_HOSTPATH_S, default 120 s; host: python -m bench.host_cost into bench.log, at most GPU_SH_HOST_S,
# default 90 s; add ncu for Nsight Compute's sections and warp stall reasons on the headline stream
# kernels of GPU_SH_NCU_DIMS (default "2d 3d"), GPU_SH_NCU_S each, default 90 s, into bench.log (the second run had
# it, without the stall reasons); add ablate for tools.kernel_lab.ablate, the time each class of the plane loop's instructions
# costs, at most GPU_SH_ABLATE_S, default 150 s, into bench.log), GPU_SH_TESTS_K (a pytest -k expression that picks
# GPU tests), GPU_SH_BUDGET_S (whole script, default 520 s), GPU_SH_TESTS_S (tests, default 120 s: the fourth run's
# 150 s reached 50, and the sweep checks its plans against float64 too), GPU_SH_TEST_WORKERS (pytest-xdist workers,
# default 8), GPU_SH_SWEEP_S (the most the sweep takes, default 300 s: the 2D and 3D float32 candidates; it runs
# before the suite, which gets the rest), GPU_SH_PRESET (default paper; quick makes a CPU dry run of this script,
# where the sweep checks its stand-in plans through Triton's interpreter).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/bench/results}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
TOTAL_S=${GPU_SH_BUDGET_S:-520}
TESTS_S=${GPU_SH_TESTS_S:-120}
SWEEP_S=${GPU_SH_SWEEP_S:-300}
PRESET=${GPU_SH_PRESET:-paper}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

importable() { "$PY" -c "import $1" >/dev/null 2>&1; }

MODE="as is"
WHEELS=${FEDGIN_WHEELS:-$ROOT/.wheels}
if ! importable monai && compgen -G "$WHEELS/*.whl" >/dev/null; then
  for whl in "$WHEELS"/*.whl; do "$PY" -m zipfile -e "$whl" "$TMP/wheels"; done
  export PYTHONPATH="$PYTHONPATH:$TMP/wheels"
  WHEEL_NOTE="; wheels unzipped from $WHEELS"
fi
WHEEL_NOTE=${WHEEL_NOTE:-}
if ! importable "fedgin.kernels, fedgin.bench"; then
  if "$PY" -m pip install --no-deps --no-index --no-build-isolation -e . >"$TMP/pip.log" 2>&1 \
      && importable "fedgin.kernels, fedgin.bench"; then
    MODE="pip install --no-deps --no-index --no-build-isolation -e ."
  else
    cat >"$TMP/sitecustomize.py" <<'PYEOF'
"""Written by bench/gpu.sh: fedgin.kernels and fedgin.bench from a source checkout (setup.py's package_dir)."""
import importlib.util
import os
import sys

_DIRS = {"fedgin.kernels": "kernels", "fedgin.bench": "bench"}


class _CheckoutFinder:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name not in _DIRS:
            return None
        folder = os.path.join(os.environ["FEDGIN_SRC"], _DIRS[name])
        return importlib.util.spec_from_file_location(name, os.path.join(folder, "__init__.py"),
                                                      submodule_search_locations=[folder])


sys.meta_path.insert(0, _CheckoutFinder)
PYEOF
    export FEDGIN_SRC="$ROOT" PYTHONPATH="$TMP:$PYTHONPATH"
    MODE="sitecustomize shim (pip: $(tail -n 1 "$TMP/pip.log"))"
  fi
fi
if ! importable "fedgin.kernels, fedgin.bench"; then
  "$PY" -c "import fedgin.kernels, fedgin.bench" >"$OUT/env.txt" 2>&1
  echo "gpu.sh: fedgin.kernels / fedgin.bench do not import (see $OUT/env.txt)" >&2
  exit 1
fi

{
  echo "# bench/gpu.sh, $(date -u +%FT%TZ)"
  nvidia-smi || echo "nvidia-smi: not available"
  "$PY" - <<'PYEOF'
import importlib
import platform

import torch

print(f"python {platform.python_version()} torch {torch.__version__} CUDA {torch.version.cuda} "
      f"cuDNN {torch.backends.cudnn.version()}")
for name in ("triton", "monai", "numpy"):
    try:
        print(name, importlib.import_module(name).__version__)
    except ImportError as err:
        print(name, "not importable:", err)
print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device")
PYEOF
  echo "git commit: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo 'unknown (no git or no .git here)')"
  git -C "$ROOT" status --porcelain 2>/dev/null | head -n 30
  echo "fedgin import: $MODE$WHEEL_NOTE"
  echo "PYTHONPATH=$PYTHONPATH"
} >"$OUT/env.txt" 2>&1

STEPS=${GPU_SH_STEPS:-hostpath tests sweep bench}
: >"$OUT/bench.log"
if [[ $STEPS == *hostpath* ]]; then  # first: GIN inside a training step, and a call from the host against a graph
  echo "== python -m bench.host_gpu" >>"$OUT/bench.log"
  timeout "${GPU_SH_HOSTPATH_S:-120}" "$PY" -m bench.host_gpu >>"$OUT/bench.log" 2>&1
  echo "== host_gpu rc $?" >>"$OUT/bench.log"
fi
TESTS_RC=0
mapfile -t GPU_FILES < <(grep -l -E "mark\.gpu" tests/test_*.py 2>/dev/null)
if [[ $STEPS != *tests* ]]; then
  echo "tests: not in GPU_SH_STEPS" >"$OUT/gpu-tests.log"
elif ((${#GPU_FILES[@]})); then
  # the tests are mostly Triton compiles (CPU-bound): spread them over workers where pytest-xdist is there
  # (-v: each finished test is named, so a run stopped by the timeout still says which passed)
  XDIST=(-q)
  importable xdist && XDIST=(-v -n "${GPU_SH_TEST_WORKERS:-8}")
  SELECT=()
  [[ -n ${GPU_SH_TESTS_K:-} ]] && SELECT=(-k "$GPU_SH_TESTS_K")
  timeout "$TESTS_S" "$PY" -m pytest -m gpu -p no:cacheprovider "${XDIST[@]}" "${SELECT[@]}" "${GPU_FILES[@]}" \
    >"$OUT/gpu-tests.log" 2>&1
  TESTS_RC=$?
  ((TESTS_RC == 124)) && echo "gpu.sh: the GPU tests ran past ${TESTS_S} s and were stopped" >>"$OUT/gpu-tests.log"
else
  echo "no test file uses the gpu marker" >"$OUT/gpu-tests.log"
fi

if [[ $STEPS =~ (^| )host( |$) ]]; then  # the host time of an explicit draw's call (draw, launches)
  echo "== python -m bench.host_cost" >>"$OUT/bench.log"
  timeout "${GPU_SH_HOST_S:-90}" "$PY" -m bench.host_cost >>"$OUT/bench.log" 2>&1
  echo "== host_cost rc $?" >>"$OUT/bench.log"
fi
if [[ $STEPS == *ncu* ]]; then
  # Nsight Compute on the headline stream kernels, the default plan and a candidate (tools.kernel_lab.ncu_target): each second
  # call's launches (--profile-from-start off), with the warp stall reasons per issued instruction (NOTES, v1.15)
  NCU=$(command -v ncu || ls -d /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | tail -n 1)
  for dims in ${GPU_SH_NCU_DIMS:-2d 3d}; do
    echo "== ncu: tools.kernel_lab.ncu_target $dims" >>"$OUT/bench.log"
    if [[ -z "$NCU" ]]; then
      echo "ncu: not found" >>"$OUT/bench.log"
      continue
    fi
    STALLS=(--metrics 'regex:^smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio$')
    for attempt in with-stalls sections-only; do  # an ncu that refuses the metric names still gives the sections
      timeout "${GPU_SH_NCU_S:-90}" "$NCU" --clock-control none --profile-from-start off \
        -k regex:gin_stream_kernel --launch-count 4 --section SpeedOfLight --section Occupancy --section LaunchStats \
        --section WarpStateStats --section SchedulerStats --section InstructionStats \
        --section MemoryWorkloadAnalysis "${STALLS[@]}" "$PY" -m tools.kernel_lab.ncu_target "$dims" >>"$OUT/bench.log" 2>&1
      NCU_RC=$?
      echo "== ncu rc $NCU_RC ($attempt)" >>"$OUT/bench.log"
      ((NCU_RC == 0 || NCU_RC == 124)) && break
      STALLS=()
    done
  done
fi
if [[ $STEPS == *ablate* ]]; then  # what the loop's barriers, weight ULDCs, loads and stores cost (NOTES, v1.15)
  echo "== python -m tools.kernel_lab.ablate" >>"$OUT/bench.log"
  timeout "${GPU_SH_ABLATE_S:-150}" "$PY" -m tools.kernel_lab.ablate >>"$OUT/bench.log" 2>&1
  echo "== ablate rc $?" >>"$OUT/bench.log"
fi
BENCH_RC=0
SWEEP_RC=0
if [[ $STEPS == *sweep* ]]; then  # before the suite: the plans the next defaults are chosen from
LEFT=$((TOTAL_S - SECONDS))
LEFT=$((LEFT < SWEEP_S ? LEFT : SWEEP_S))
# the sweep starts no new case after --budget-s; a case (its compiles and timings) takes up to ~40 s
echo "== python -m bench.sweep" >>"$OUT/bench.log"
timeout "$((LEFT > 30 ? LEFT : 30))" "$PY" -m bench.sweep --out "$OUT" --budget-s "$((LEFT > 60 ? LEFT - 40 : 10))" \
  >>"$OUT/bench.log" 2>&1
SWEEP_RC=$?
fi

if [[ $STEPS == *bench* ]]; then
LEFT=$((TOTAL_S - SECONDS))
# the suite stops starting new work at --budget-s; one item (a torch.compile) can take ~60 s more
echo "== python -m bench --preset $PRESET" >>"$OUT/bench.log"
timeout "$((LEFT > 30 ? LEFT : 30))" "$PY" -m bench --preset "$PRESET" --out "$OUT" --budget-s "$((LEFT > 90 ? LEFT - 75 : 15))" \
  >>"$OUT/bench.log" 2>&1
BENCH_RC=$?
fi

sed -n '/^== python -m bench.host_gpu/,/^== host_gpu rc/p' "$OUT/bench.log"
MD=$(ls -t "$OUT"/*-"$PRESET".md 2>/dev/null | head -n 1)
[[ -n "$MD" ]] && cat "$MD"
echo
echo "== GPU tests (rc $TESTS_RC): $(tail -n 1 "$OUT/gpu-tests.log")"
grep -E "^(FAILED|ERROR)" "$OUT/gpu-tests.log" | head -n 20
echo "== bench (rc $BENCH_RC), sweep (rc $SWEEP_RC): $(grep -E '^wrote ' "$OUT/bench.log" || tail -n 3 "$OUT/bench.log")"
grep -E "^== ncu|Duration|Registers Per|Achieved Occupancy|Issue Slots Busy|Compute \(SM\) Throughput|Stall|stalled" \
  "$OUT/bench.log" | head -n 80
grep -E "^\| .* \| (none|bar|uldc|ldg|stg|all|failed.*) \|" "$OUT/bench.log" | head -n 40
SWEEP_MD=$(ls -t "$OUT"/*-sweep.md 2>/dev/null | head -n 1)
[[ -n "$SWEEP_MD" ]] && cat "$SWEEP_MD"
echo "== gpu.sh: ${SECONDS} s, files in $OUT"
((TESTS_RC == 0 && BENCH_RC == 0 && SWEEP_RC == 0))
