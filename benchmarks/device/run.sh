#!/usr/bin/env bash
# benchmarks/device/run.sh -- what a machine with one GPU and only this repository (plus the pack) runs, in under
# 9 minutes, as time-boxed stages; a stage that fails is recorded and the next one runs.
#
#   bash benchmarks/device/run.sh [OUT]          GPU machine; OUT defaults to $OUT (the device tool's folder)
#   bash benchmarks/device/run.sh --smoke OUT    the same stages on the CPU in a few minutes (tests/test_device_script.py)
#
# Options: --pack DIR    the pack of make_pack.py (default cache/device_pack: crops, dlib weights, wheels)
#          --work DIR    scratch folder, new or empty (default: a new folder under /tmp)
#          --budget S    seconds for the whole script (default 540 on the GPU); the stages' time boxes fit into it
# Environment: PYTHON (default python3).
#
# Stages: install (the pack's wheels with pip --no-deps --no-index, then meer with -e), unpack, cuda_tests, training
# step img/s + peak memory at the recipe's batch in fp32 / fp16+GradScaler / bf16, a 1-process DDP step on NCCL
# (torchrun), meer-restore faces/s at batch 256 per precision, a short real run of configs/meer_v2_gpu.yaml (bf16),
# export. OUT gets results.json (every stage: status, seconds, figures), figures.png, the run's fp16 weights, the
# last grid, grids.tar.gz and logs.tar.gz (at most 8 files, each under 16 MiB). Exit status 0 when every stage
# ended ok or skipped, 1 when one failed or timed out, 2 for bad arguments.
set -u -o pipefail

die() { echo "run.sh: $*" >&2; exit 2; }
usage() { sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STAGES=$REPO/benchmarks/device/stages.py
SMOKE=0 PACK="" WORK="" BUDGET="" OUTDIR=""
while (($#)); do
  case $1 in
    --smoke) SMOKE=1 ;;
    --pack|--work|--budget)
      [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"
      case $1 in --pack) PACK=$2 ;; --work) WORK=$2 ;; --budget) BUDGET=$2 ;; esac
      shift ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [[ -z $OUTDIR ]] || die "one output folder, got '$OUTDIR' and '$1'"; OUTDIR=$1 ;;
  esac
  shift
done
[[ -z $BUDGET || $BUDGET =~ ^[0-9]+$ ]] || die "--budget must be whole seconds, got '$BUDGET'"
OUTDIR=${OUTDIR:-${OUT:-}}
[[ -n $OUTDIR ]] || die "give an output folder (or set OUT)"
[[ -e $OUTDIR && ! -d $OUTDIR ]] && die "output $OUTDIR is a file"
mkdir -p "$OUTDIR" 2>/dev/null || die "cannot create the output folder $OUTDIR"
[[ -z $(ls -A "$OUTDIR") ]] || die "output folder $OUTDIR is not empty"
OUTDIR=$(cd "$OUTDIR" && pwd)
PACK=${PACK:-$REPO/cache/device_pack}
[[ -f $PACK/data.npz && -f $PACK/manifest.json ]] || die "no pack at $PACK (build it: python benchmarks/device/make_pack.py)"
PACK=$(cd "$PACK" && pwd)
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || die "no python '$PY' (set PYTHON)"
command -v timeout >/dev/null 2>&1 || die "needs coreutils' timeout"
if [[ -n $WORK ]]; then
  mkdir -p "$WORK" 2>/dev/null || die "cannot create the work folder $WORK"
  [[ -z $(ls -A "$WORK") ]] || die "work folder $WORK is not empty"
else
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/meer_device.XXXXXX") || die "cannot create a work folder"
fi
WORK=$(cd "$WORK" && pwd)
mkdir -p "$WORK"/{logs,figures,stages,raw}
cd "$REPO" || die "cannot enter $REPO"

if ((SMOKE)); then
  MODE=smoke DEVICE=cpu BACKEND=gloo CONFIG=benchmarks/device/smoke.yaml AMP_RUN=none THREADS=1
  BENCH_STEPS=2 BENCH_WARMUP=1 DDP_STEPS=1 DDP_WARMUP=1 RESTORE_PHOTOS=2 RESTORE_BATCH=2 EXPORT_FORMATS="torchscript"
  # generous limits: on 2 idle cores the whole smoke run takes about a minute, on a loaded machine many more
  BUDGET=${BUDGET:-1800}
  T_INSTALL=300 T_UNPACK=120 T_TESTS=120 T_BENCH=300 T_DDP=300 T_RESTORE=300 T_EXPORT=300 T_FINISH=120
  TRAIN_MIN=30 TRAIN_STARTUP=0 EXPORT_MIN=20
else
  MODE=gpu DEVICE=cuda BACKEND=nccl CONFIG=configs/meer_v2_gpu.yaml AMP_RUN=bf16 THREADS=0
  BENCH_STEPS=10 BENCH_WARMUP=3 DDP_STEPS=5 DDP_WARMUP=2 RESTORE_PHOTOS=256 RESTORE_BATCH=256
  EXPORT_FORMATS="onnx torchscript"
  BUDGET=${BUDGET:-540}
  T_INSTALL=90 T_UNPACK=60 T_TESTS=120 T_BENCH=75 T_DDP=75 T_RESTORE=75 T_EXPORT=60 T_FINISH=40
  # the training run keeps at least TRAIN_MIN s; TRAIN_STARTUP s of it are outside its time limit (imports, data,
  # dlib weights, template mean, validation set; final validation, checkpoint and export)
  TRAIN_MIN=150 TRAIN_STARTUP=60 EXPORT_MIN=40
fi
RESERVE_PRE=$((TRAIN_MIN + EXPORT_MIN + T_FINISH))
T0=$(date +%s)
export MEER_CACHE_DIR=$PACK/weights PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}

"$PY" - "$WORK/meta.json" <<EOF
import json, platform, sys, time
json.dump({"mode": "$MODE", "device": "$DEVICE", "backend": "$BACKEND", "config": "$CONFIG", "budget_s": $BUDGET,
           "started": time.strftime("%Y-%m-%d %H:%M:%S"), "started_epoch": $T0, "host": platform.node(),
           "commit": "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)",
           "pack": json.load(open("$PACK/manifest.json")).get("faces", {}).get("roots"),
           "pack_total_mib": round(json.load(open("$PACK/manifest.json")).get("total_bytes", 0) / 2**20, 1)},
          open(sys.argv[1], "w"), indent=2)
EOF
echo "meer device run ($MODE): pack $PACK, work $WORK, out $OUTDIR, budget ${BUDGET}s"

FAILED=0
# CPU_NOW = CPU seconds (user + system) of this shell's finished children so far (bash's `times`, run in this shell)
cpu_now() {
  times >"$WORK/.times"
  CPU_NOW=$(awk 'NR==2{for(i=1;i<=2;i++){split($i,a,"m"); s+=a[1]*60+a[2]}; printf "%.2f", s}' "$WORK/.times")
}
train_post() { "$PY" "$STAGES" train-summary "$WORK/runs" --json "$WORK/figures/train_run.json"; }
record() { "$PY" "$STAGES" record "$WORK" "$@"; }
skip() { record "$1" --skip "$2"; }

# stage NAME LIMIT RESERVE CMD...: runs CMD under `timeout`, at most LIMIT s and never into the last RESERVE s of
# the budget; its output goes to logs/NAME.log, its figures (if it writes them) to figures/NAME.json
stage() {
  local name=$1 limit=$2 reserve=$3
  shift 3
  local left=$((BUDGET - ($(date +%s) - T0) - reserve))
  ((limit > left)) && limit=$left
  if ((limit < 10)); then
    skip "$name" "no time left in the ${BUDGET} s budget"
    return 1
  fi
  local t rc c0
  t=$(date +%s.%N)
  cpu_now
  c0=$CPU_NOW
  timeout -k 10 "$limit" "$@" >"$WORK/logs/$name.log" 2>&1
  rc=$?
  if [[ -n ${STAGE_POST:-} ]]; then $STAGE_POST >>"$WORK/logs/$name.log" 2>&1; fi
  cpu_now
  record "$name" --rc "$rc" --seconds "$(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN{print b-a}')" \
    --cpu "$(awk -v a="$c0" -v b="$CPU_NOW" 'BEGIN{printf "%.1f", b-a}')" --timeout "$limit" --log "$WORK/logs/$name.log"
  if ((rc != 0)); then
    FAILED=1
    tail -n 4 "$WORK/logs/$name.log" | cut -c1-300 | sed 's/^/    /'
  fi
  return $rc
}

# ---- install: the carried wheels (no index, no dependencies), then meer itself, editable
install_meer() {
  local wheels=("$PACK"/wheels/*.whl)
  if [[ -e ${wheels[0]} ]]; then
    if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "${wheels[@]}"; then
      echo "pip could not install into the environment; installing into $WORK/site instead"
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "${wheels[@]}" || return 1
      echo "$WORK/site" >"$WORK/site.path"
    fi
  else
    echo "the pack holds no wheels"
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e "$REPO" ||
    echo "editable install of meer failed: it runs from PYTHONPATH=$REPO"
  PYTHONPATH=$(cat "$WORK/site.path" 2>/dev/null)${PYTHONPATH:+:$PYTHONPATH} "$PY" "$STAGES" env --json "$WORK/figures/install.json"
}
if ((SMOKE)); then
  timeout "$T_INSTALL" "$PY" "$STAGES" env --json "$WORK/figures/install.json" >"$WORK/logs/install.log" 2>&1
  skip install "--smoke: the running environment is used, nothing is installed"
else
  export -f install_meer
  export PY STAGES REPO WORK PACK
  stage install "$T_INSTALL" "$RESERVE_PRE" bash -c install_meer
  [[ -f $WORK/site.path ]] && export PYTHONPATH=$(cat "$WORK/site.path"):$PYTHONPATH
fi

# ---- unpack: the crops, evaluation lists and mask templates; overrides.txt points the recipe at them
DATA_OVR=()
if stage unpack "$T_UNPACK" "$RESERVE_PRE" "$PY" "$STAGES" unpack "$PACK" "$WORK/data" --json "$WORK/figures/unpack.json"; then
  mapfile -t DATA_OVR <"$WORK/data/overrides.txt"
fi

# ---- tests that take another path with CUDA
stage cuda_tests "$T_TESTS" "$RESERVE_PRE" "$PY" "$STAGES" cuda-tests --json "$WORK/figures/cuda_tests.json" \
  --log-dir "$WORK/logs" $( ((SMOKE)) && echo --list-only)

# ---- training step: img/s and peak memory per precision at the recipe's batch (synthetic batch, no loader)
for amp in none fp16 bf16; do
  name=train_bench_$([[ $amp == none ]] && echo fp32 || echo $amp)
  if ((SMOKE)) && [[ $amp == fp16 ]]; then skip "$name" "fp16 autocast needs CUDA (meer allows it on CUDA only)"; continue; fi
  if ((SMOKE)) && [[ $amp == bf16 ]]; then skip "$name" "--smoke on the CPU: bf16 autocast would run, slowly, and says nothing about the GPU"; continue; fi
  stage "$name" "$T_BENCH" "$RESERVE_PRE" "$PY" "$STAGES" train-bench --config "$CONFIG" --amp "$amp" --device "$DEVICE" \
    --steps "$BENCH_STEPS" --warmup "$BENCH_WARMUP" --threads "$THREADS" --json "$WORK/figures/$name.json"
done

# ---- one process group on NCCL (gloo on the CPU) under torchrun, the MEER step with its all-reduce
stage ddp_step "$T_DDP" "$RESERVE_PRE" "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 "$STAGES" ddp \
  --config "$CONFIG" --device "$DEVICE" --backend "$BACKEND" --amp "$AMP_RUN" --steps "$DDP_STEPS" --warmup "$DDP_WARMUP" \
  --threads "$THREADS" --json "$WORK/figures/ddp_step.json"

# ---- meer-restore end to end (MTCNN detection, alignment, model, paste-back) per precision
restore_one() {
  "$PY" "$REPO/benchmarks/bench_restore.py" --photos "$RESTORE_PHOTOS" --batch-size "$RESTORE_BATCH" --device "$DEVICE" \
    --model-config "$REPO/$CONFIG" --precisions "$1" --json "$WORK/raw/restore_$1.json" &&
    "$PY" "$STAGES" restore-figures "$WORK/raw/restore_$1.json" "$1" --json "$WORK/figures/restore_bench_$1.json"
}
export -f restore_one
export PY STAGES REPO WORK DEVICE CONFIG RESTORE_PHOTOS RESTORE_BATCH
for prec in fp32 fp16 bf16; do
  if ((SMOKE)) && [[ $prec != fp32 ]]; then
    skip "restore_bench_$prec" "--smoke on the CPU: $prec restore is $([[ $prec == fp16 ]] && echo 'not supported on the CPU' || echo 'slow there and says nothing about the GPU')"
    continue
  fi
  stage "restore_bench_$prec" "$T_RESTORE" "$RESERVE_PRE" bash -c 'restore_one "$1"' _ "$prec"
done

# ---- a short real training run of the recipe, then export
TRAIN_OVR=("runs_dir=$WORK/runs")
if ((!SMOKE)); then
  secs=$((BUDGET - ($(date +%s) - T0) - EXPORT_MIN - T_FINISH - TRAIN_STARTUP))
  ((secs < 30)) && secs=30
  TRAIN_OVR+=("time_limit_min=$(awk -v s="$secs" 'BEGIN{printf "%.2f", s/60}')")
  bench=$WORK/figures/train_bench_$([[ $AMP_RUN == none ]] && echo fp32 || echo "$AMP_RUN").json
  steps=$("$PY" "$STAGES" train-plan --bench "$bench" --seconds "$secs" 2>/dev/null)
  [[ -n $steps ]] && TRAIN_OVR+=("$steps")
fi
if ((${#DATA_OVR[@]})); then
  echo "training overrides: ${TRAIN_OVR[*]}"
  STAGE_POST=train_post stage train_run 100000 "$((EXPORT_MIN + T_FINISH))" "$PY" -m meer.cli.train --config "$CONFIG" "${DATA_OVR[@]}" "${TRAIN_OVR[@]}"
  # shellcheck disable=SC2086
  stage export "$T_EXPORT" "$T_FINISH" "$PY" "$STAGES" export "$WORK/runs" "$WORK/export" --formats $EXPORT_FORMATS \
    --json "$WORK/figures/export.json"
else
  skip train_run "no training data: the unpack stage failed"
  skip export "no training run"
  FAILED=1
fi

# ---- report
timeout -k 5 "$T_FINISH" "$PY" "$STAGES" finish "$WORK" "$OUTDIR" --meta "$WORK/meta.json" || FAILED=1
echo "total $(($(date +%s) - T0)) s of the ${BUDGET} s budget; work folder $WORK"
exit $FAILED
