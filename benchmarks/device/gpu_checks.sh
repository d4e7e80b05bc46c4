#!/usr/bin/env bash
# Everything a lent GPU machine is needed for, in one call (an estimated 7-8 minutes on an H100/H200):
# build the CUDA kernels, run every gpu-marked test (`grep -rl "mark.gpu" tests` lists their
# files), then the GPU benchmarks of issues #7 (DP step) and #4 (quantize + mask bandwidth), then
# the 10-agent secure round on the machine's 16 cores (#4's round target, which needs more cores
# than agents). Each step has its own time limit, so one that hangs does not cost the others.
# $OUT gets summary.txt, logs.txt (every step's output) and the benchmarks' JSON: six files, under
# the device tool's limit of eight. Prepare the wheels here first with
# benchmarks/device/wheels.sh, then:
#
#   run(command="bash benchmarks/device/gpu_checks.sh", carry=[".whl"], timeout_s=600)
#
# STEPS="build tests dp secagg round" (the default) picks steps and PYTHON the interpreter
# (python3); a rerun on a warm machine can skip "build" if the extension is still there.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/medfl-gpu-out}
mkdir -p "$OUT"
STEPS=${STEPS:-"build tests dp secagg round"}
export PYTHONUNBUFFERED=1 MEDFL_TORCH_THREADS=1
summary="$OUT/summary.txt" logs="$OUT/logs.txt"
: > "$summary"; : > "$logs"

step() {  # step NAME SECONDS COMMAND...: run with a limit, append its output to $logs, record the outcome
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  local log
  log=$(mktemp)
  timeout "$limit" "$@" > "$log" 2>&1
  local rc=$?
  echo "$name: rc=$rc in $((SECONDS - t0)) s (limit $limit s)" | tee -a "$summary"
  { echo "===== $name (rc=$rc): $*"; cat "$log"; } >> "$logs"
  tail -n 3 "$log"
  rm -f "$log"
}

PY=${PYTHON:-python3}
{ nvidia-smi -L; nproc; "$PY" --version; } 2>&1 | tee -a "$summary"
if [ "$("$PY" -c 'import sys; print(sys.version_info[:2] == (3, 12))')" != True ]; then
  echo "$PY is not Python 3.12: the .whl/ wheels (cp312) are not installed" | tee -a "$summary"
elif compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed" | tee -a "$summary"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
else
  echo "no .whl/ wheels carried: run benchmarks/device/wheels.sh here and carry .whl" | tee -a "$summary"
fi

case " $STEPS " in *" build "*)
  step build 240 env MEDFL_CUDA=1 CUDAARCHS=90 "$PY" -m pip install -q --no-deps --no-build-isolation -e . ;;
esac
"$PY" -c "import medfl._native as n; print('native:', n.build_info())" 2>&1 | tee -a "$summary"
case " $STEPS " in *" tests "*)
  # the files holding gpu-marked tests (the integration tests need Orthanc, DCMTK and PACS wheels)
  step tests 240 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/unit/native/test_fixed_point.py \
    tests/unit/native/test_clipping.py tests/unit/privacy/test_noise.py tests/unit/secagg/test_secagg_cuda.py \
    tests/unit/smpc/test_dealer_cuda.py tests/unit/smpc/test_engine_cuda.py tests/unit/smpc/test_smpc_cuda.py ;;
esac
case " $STEPS " in *" dp "*)
  step dp_resnet18 200 "$PY" benchmarks/dp_step.py --model resnet18 --batch 16 --image 224 --device cuda --repeats 2 \
    --steps 20 --json "$OUT/dp_step_resnet18_gpu.json"
  step dp_cnn 120 "$PY" benchmarks/dp_step.py --model cnn --batch 32 --image 128 --device cuda --repeats 1 --steps 20 \
    --json "$OUT/dp_step_cnn_gpu.json" ;;
esac
case " $STEPS " in *" secagg "*)
  step secagg_gpu 120 "$PY" benchmarks/secagg.py --gpu-only --repeats 10 --json "$OUT/secagg_gpu.json" ;;
esac
case " $STEPS " in *" round "*)
  step secagg_round 240 "$PY" benchmarks/secagg_round.py --agents 10 --rounds 3 --json "$OUT/secagg_round_16core.json" ;;
esac
cat "$summary"
