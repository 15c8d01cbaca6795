#!/usr/bin/env bash
# Third machine of issue #8's run (bench/gpu/run.sh, then this): after the profiles, install both
# wheel sets, then measure the 3B shape's step time through the service on the plain pool alone,
# holding the whole GPU (vLLM 0.26's Ray executor asks for a whole GPU per worker, so the two
# pools of bench/gpu/qwen2.5-3b-dummy.yaml cannot share one), with FastAPI 0.136.3 (the CPU
# venv's) in front of the vLLM list's 0.165.0, under which the router's `request: Request`
# parameters are read as a query field (every request 422). Plain vLLM was measured on the
# previous machine (steps-qwen2.5-3b-dummy-*.json); results go to ~/gpu/results and $OUT.
set -uo pipefail
G=$HOME/gpu
cp .gpu/extra/* "$HOME/stash/"
bash bench/gpu/run.sh install_a install_b models
source <(sed -n '/^G=/,/^MODELS=/p' bench/gpu/run.sh)
python3 -m pip install -q --no-index --no-deps --no-compile --target "$G/site_c" "$HOME"/stash/fastapi-*.whl
export PYTHONPATH=$G/site_c:$PYTHONPATH
cd "$G/repo"
python3 - <<'PY'
import yaml, os
d = yaml.safe_load(open("bench/gpu/qwen2.5-3b-dummy.yaml"))
d["http_options"]["port"] = 8002
a = d["applications"][0]["args"]
a["generators"] = [p for p in a["generators"] if not p.get("speculative")]
for p in a["generators"]:
    p.pop("num_gpus", None); p["gpu_memory_utilization"] = 0.85
os.makedirs(os.path.expanduser("~/gpu/configs"), exist_ok=True)
open(os.path.expanduser("~/gpu/configs/qwen2.5-3b-dummy-k0-whole.yaml"), "w").write(yaml.safe_dump(d, sort_keys=False))
PY
s=$(python3 -m tts_ray.eval.gpu slug | tail -1)
timeout 420 python3 -m tts_ray.eval.gpu steps --config "$G/configs/qwen2.5-3b-dummy-k0-whole.yaml" --skip-plain \
  --out "$R/steps-qwen2.5-3b-dummy-service-$s.json" --branches 1,4,16,64 --lengths 64,320 --repeats 5 \
  > "$G/logs/steps_3b_service3.log" 2>&1
echo "service rc=$?"
grep -E "ms/step|Error|STATUS" "$G/logs/steps_3b_service3.log" | cut -c1-250 | tail -12
tar -czf "$OUT/results3.tgz" -C "$G" results logs state configs
