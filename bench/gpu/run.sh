#!/usr/bin/env bash
# Issue #8's GPU measurements, run on the GPU machine from the repository root (a copy of the
# checkout). The wheels arrive beforehand in ~/stash, one piece per device call
# (bench/gpu/stage.sh makes them here; each call does `mv .gpu/stage/pNNN/* ~/stash/`).
#
#   bash bench/gpu/run.sh daemon STEP...   run the steps in the background (setsid), logs in ~/gpu
#   bash bench/gpu/run.sh wait SECONDS     follow the daemon until it ends or SECONDS pass; copy
#                                          results and logs to $OUT
#   bash bench/gpu/run.sh STEP...          run steps in the foreground
#   bash bench/gpu/run.sh stash            move the carried pieces (.gpu/stage/pNNN, .gpu/extra2) to ~/stash
#
# Steps (each leaves ~/gpu/state/STEP.ok or .fail and ~/gpu/logs/STEP.log):
#   install_a        vLLM 0.26.0 and its needs into ~/gpu/site_a (needs set A's pieces)
#   models           the Qwen2.5-3B/0.5B-shaped model folders (random weights) in /tmp/tts-ray-models
#   profile_3b       tts-ray profile, bench/gpu/qwen2.5-3b-dummy.yaml, concurrency 1..256, k 0/2/4
#   profile_testbed  tts-ray profile, deployments/testbed-gpu.yaml, the same grid
#   install_b        Ray 2.60.0 and the rest into ~/gpu/site_b (waits for set B's pieces)
#   steps_3b         step time at B = 1/4/16/64: plain vLLM, then through the service
#   bench_testbed    tts-ray bench on the testbed through the service (planner on the GPU profile:
#                    this machine's if measured, else the committed bench/results/gpu one, else
#                    the CPU one); TTS_GPU_NUM_GPUS=1 gives every engine a whole GPU (vLLM 0.26's
#                    Ray executor takes one per engine whatever the share: 3 GPUs for the testbed)
# Results: ~/gpu/results (profile-*.json, steps-*.json, bench-testbed/), named with the GPU.
set -uo pipefail
G=${TTS_GPU_HOME:-$HOME/gpu}
R=$G/results
mkdir -p "$G/state" "$G/logs" "$R" "$HOME/stash"
# site_c: wheels that must win over sets A and B (FastAPI 0.136.3: under set A's 0.165.0 the
# router's `request: Request` parameters are read as a query field, every request 422)
export PYTHONPATH=$G/site_c:$G/site_b:$G/site_a:$G/repo
export VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 \
  DO_NOT_TRACK=1 RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# keep NVLink multicast off wherever a program starts (the device notes ask for it)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# the machines' MemTotal starts small and grows with use: Ray's memory monitor would kill workers
export RAY_memory_monitor_refresh_ms=0
PY=${TTS_GPU_PY:-python3}
CONCURRENCY=${TTS_GPU_CONCURRENCY:-1,2,4,8,16,32,64,128,256}
BENCH_LIMIT=${TTS_GPU_BENCH_LIMIT:-50}
MODELS=/tmp/tts-ray-models

slug() { $PY -m tts_ray.eval.gpu slug 2>/dev/null | tail -1; }
accel() {  # Ray's accelerator type of GPU 0 (H100, H200, ...)
  $PY - <<'EOF' 2>/dev/null | tail -1
import torch, re
name = torch.cuda.get_device_name(0)
m = re.search(r"\b([A-Z]\d{2,3}[A-Z]?)\b", name.replace("NVIDIA ", ""))
print(m.group(1) if m else "H100")
EOF
}

extract() {  # every piece so far, back-to-back tar archives; a cut-off last wheel is fine
  mkdir -p "$G/wheels"
  cat "$HOME"/stash/bundle.tar.* | tar -x -i -C "$G/wheels" 2>/dev/null || true
}

complete_set() {  # are all wheels of manifest $1 there and whole?
  $PY - "$1" "$G/wheels" <<'EOF'
import sys, zipfile, pathlib
names = pathlib.Path(sys.argv[1]).read_text().split()
bad = []
for n in names:
    try:
        zipfile.ZipFile(pathlib.Path(sys.argv[2]) / n).close()
    except Exception:
        bad.append(n)
print(f"{len(names) - len(bad)}/{len(names)} wheels whole" + (f"; missing {bad[:3]}" if bad else ""))
sys.exit(1 if bad else 0)
EOF
}

install_set() {  # $1: A or B
  local set=$1 target=$G/site_$(echo "$1" | tr AB ab)
  extract
  complete_set "$HOME/stash/MANIFEST_$set" || return 1
  rm -rf "$target"
  (cd "$G/wheels" && $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --target "$target" $(cat "$HOME/stash/MANIFEST_$set")) || return 1
  echo "installed $(ls "$target" | grep -c dist-info) packages into $target"
}

step_install_a() {
  install_set A || return 1
  ls "$HOME"/stash/pycountry-*.whl >/dev/null 2>&1 && (cd "$HOME/stash" && $PY -m pip install -q --no-index \
      --no-deps --no-compile --target "$G/site_a" pycountry-*.whl)  # carried on its own (.gpu/extra)
  $PY -c "import torch, vllm; print('vllm', vllm.__version__, 'torch', torch.__version__, torch.cuda.get_device_name(0))"
}

step_models() {
  $PY -m tts_ray.eval.gpu models --out "$MODELS"
}

profile() {  # $1 config, $2 name
  local s; s=$(slug)
  $PY -m tts_ray.eval.gpu override --config "$1" --out "$G/configs/$2.yaml" --accelerator-type "$(accel)" &&
  timeout 1500 $PY -m tts_ray.cli profile --config "$G/configs/$2.yaml" --out "$R/profile-$2-$s.json" \
    --concurrency "$CONCURRENCY" --draft-lengths 0,2,4 --tokens 64
}

step_profile_3b() { [ -d "$MODELS/qwen2.5-3b-dummy" ] || step_models; profile bench/gpu/qwen2.5-3b-dummy.yaml qwen2.5-3b-dummy; }
step_profile_testbed() { profile deployments/testbed-gpu.yaml testbed; }

step_install_b() {
  local waited=0
  until [ -f "$HOME/stash/MANIFEST_B" ] && { extract; complete_set "$HOME/stash/MANIFEST_B" >/dev/null; }; do
    sleep 10; waited=$((waited + 10))
    [ $waited -ge 1200 ] && { echo "set B incomplete after ${waited}s"; return 1; }
  done
  install_set B || return 1
  $PY bench/gpu/vllm_compat.py "$G/site_a" || return 1
  if ls "$HOME"/stash/fastapi-*.whl >/dev/null 2>&1; then
    rm -rf "$G/site_c"
    (cd "$HOME/stash" && $PY -m pip install -q --no-index --no-deps --no-compile --target "$G/site_c" fastapi-*.whl)
  fi
  $PY -c "import fastapi; print('fastapi', fastapi.__version__)"
  $PY -c "import ray, ray.serve.llm, math_verify; print('ray', ray.__version__)"
}

step_steps_3b() {
  local s; s=$(slug)
  [ -d "$MODELS/qwen2.5-3b-dummy" ] || step_models
  $PY -m tts_ray.eval.gpu override --config bench/gpu/qwen2.5-3b-dummy.yaml \
    --out "$G/configs/qwen2.5-3b-dummy.yaml" --accelerator-type "$(accel)" &&
  timeout 1200 $PY -m tts_ray.eval.gpu steps --config "$G/configs/qwen2.5-3b-dummy.yaml" \
    --out "$R/steps-qwen2.5-3b-dummy-$s.json" --branches 1,4,16,64 --lengths 64,320 --repeats 5
}

step_bench_testbed() {
  local s profile num_gpus=(); s=$(slug)
  profile="$R/profile-testbed-$s.json"                                   # measured on this machine
  [ -f "$profile" ] || profile=$(ls "$PWD"/bench/results/gpu/profile-testbed-*.json 2>/dev/null | head -1)
  [ -f "$profile" ] || profile=testbed:profile-cpu
  echo "planner profile: $profile"
  [ -n "${TTS_GPU_NUM_GPUS:-}" ] && num_gpus=(--num-gpus "$TTS_GPU_NUM_GPUS")
  $PY -m tts_ray.eval.gpu override --config deployments/testbed-gpu.yaml --out "$G/configs/testbed-bench.yaml" \
    --accelerator-type "$(accel)" --profile-source "$profile" "${num_gpus[@]}" &&
  cat "$G/configs/testbed-bench.yaml" &&
  timeout 2400 $PY -m tts_ray.cli bench --config "$G/configs/testbed-bench.yaml" --out-dir "$R/bench-testbed-$s" \
    --limit "$BENCH_LIMIT" --branches 1,4,16 --no-progress
}

run_step() {
  local name=$1 rc
  rm -f "$G/state/$name.ok" "$G/state/$name.fail"
  echo "=== $(date -u +%T) $name" | tee -a "$G/logs/steps.log"
  local t0=$SECONDS
  ( cd "$G/repo" && "step_$name" ) > "$G/logs/$name.log" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then touch "$G/state/$name.ok"; else echo "$rc" > "$G/state/$name.fail"; fi
  echo "=== $(date -u +%T) $name rc=$rc in $((SECONDS - t0))s; GPU memory used: $(nvidia-smi --query-gpu=memory.used --format=csv,noheader 2>/dev/null)" \
    | tee -a "$G/logs/steps.log"
  return $rc
}

run_steps() {
  for name in "$@"; do
    run_step "$name" && continue
    case $name in install_a|install_b) echo "stopping: $name failed" | tee -a "$G/logs/steps.log"; return 1 ;; esac
  done
}

copy_repo() {  # the daemon runs from its own copy: the next call replaces the working tree
  mkdir -p "$G/repo"
  tar --exclude=./.gpu --exclude=./.git -cf - . | tar -xf - -C "$G/repo"
  # the source to measure, if one was staged and asked for (TTS_GPU_SRC_TAR=1: a commit plus this
  # issue's files, without work in progress that the checkout may hold; the first pass left it as
  # src.tar in the first piece): otherwise the checkout as it travelled
  if [ "${TTS_GPU_SRC_TAR:-0}" = 1 ] && [ -f "$HOME/stash/src.tar" ]; then tar -xf "$HOME/stash/src.tar" -C "$G/repo" && cat "$G/repo/GPU_SOURCE"; fi
}

collect() {
  [ -n "${OUT:-}" ] || return 0
  tar -czf "$OUT/results.tgz" -C "$G" results logs state configs 2>/dev/null
  cp "$G/logs/steps.log" "$OUT/" 2>/dev/null || true
}

case ${1:-} in
  stash)
    # extra2 last: the src.tar it may hold replaces the first pass's, left in p000
    for d in .gpu/stage/p[0-9]* .gpu/extra2; do [ -d "$d" ] && mv "$d"/* "$HOME/stash/" 2>/dev/null; done
    # a src.tar stays in ~/stash: copy_repo uses it only with TTS_GPU_SRC_TAR=1 (removing it here
    # whenever that was unset made the second pass's later calls throw the staged source away)
    ls -l "$HOME/stash" | tail -n +2 | awk '{print $5, $9}' | tr '\n' ' '; echo
    ;;
  daemon)
    shift
    copy_repo
    rm -f "$G/state/daemon.done"
    setsid nohup env -u OUT bash -c "cd '$G/repo' && bash bench/gpu/run.sh $* ; touch '$G/state/daemon.done'" \
      > "$G/logs/daemon.log" 2>&1 < /dev/null &
    echo "daemon started: $*"
    ;;
  wait)
    limit=${2:-540}; t0=$SECONDS
    while [ ! -f "$G/state/daemon.done" ] && [ $((SECONDS - t0)) -lt "$limit" ]; do sleep 15; done
    cat "$G/logs/steps.log" 2>/dev/null
    current=$(ls -t "$G"/logs/*.log 2>/dev/null | grep -v -e steps.log -e daemon.log | head -1)
    [ -n "$current" ] && { echo "--- tail of $current"; tail -n 25 "$current"; }
    [ -f "$G/state/daemon.done" ] && echo "DAEMON DONE" || echo "daemon still running"
    collect
    ;;
  ""|-h|--help) sed -n "2,/^set -uo/p" "$0" | sed '$d' ;;
  *)
    [ -d "$G/repo" ] || copy_repo
    run_steps "$@"
    collect
    ;;
esac
