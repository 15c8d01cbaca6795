#!/usr/bin/env bash
# Second pass on the GPU machine after the first run showed two vLLM 0.26 gaps (bench/gpu/run.sh
# steps, same environment): ray.serve.llm refuses `per_request_spec_decode_metrics` (a vLLM
# 0.29 engine argument that tts_ray.serve.generator sets for speculating pools), so the measured
# copy of the source drops it (no per-request acceptance in responses); the 3B step time through
# the service runs on the plain pool alone (the speculating pool is the profile's business).
set -uo pipefail
G=$HOME/gpu
sed -i '/engine_kwargs\["per_request_spec_decode_metrics"\]/d' "$G/repo/tts_ray/serve/generator.py"
grep -c per_request_spec_decode_metrics "$G/repo/tts_ray/serve/generator.py"
python3 - <<'PY'
import yaml, os
g = os.path.expanduser("~/gpu/configs")
data = yaml.safe_load(open(f"{g}/qwen2.5-3b-dummy.yaml"))
args = data["applications"][0]["args"]
args["generators"] = [p for p in args["generators"] if not p.get("speculative")]
open(f"{g}/qwen2.5-3b-dummy-k0.yaml", "w").write(yaml.safe_dump(data, sort_keys=False))
PY
cd "$G/repo" && source <(sed -n '/^G=/,/^MODELS=/p' bench/gpu/run.sh)
s=$(python3 -m tts_ray.eval.gpu slug | tail -1)
echo "=== $(date -u +%T) steps_3b_service" >> "$G/logs/steps.log"
timeout 900 python3 -m tts_ray.eval.gpu steps --config "$G/configs/qwen2.5-3b-dummy-k0.yaml" --skip-plain \
  --out "$R/steps-qwen2.5-3b-dummy-service-$s.json" --branches 1,4,16,64 --lengths 64,320 --repeats 5 \
  > "$G/logs/steps_3b_service.log" 2>&1
echo "=== $(date -u +%T) steps_3b_service rc=$?" >> "$G/logs/steps.log"
bash bench/gpu/run.sh bench_testbed
