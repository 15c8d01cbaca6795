"""Make vLLM 0.26.0 importable by Ray 2.60.0's ray.serve.llm (written for vLLM 0.29).

Ray 2.60's serve.llm imports three things vLLM 0.26 has elsewhere or not at all:
``vllm.entrypoints.launchers.cli_args`` (0.26: ``vllm.entrypoints.openai.cli_args``),
``vllm.entrypoints.serve.engine.protocol`` (0.26: ``vllm.entrypoints.openai.engine.protocol``)
and ``vllm.exceptions.VLLMClientError`` (absent: added here as a subclass of ValueError, which
ray.serve.llm only catches). This writes those alias modules into an installed vLLM; it is for
the GPU measurements only (bench/gpu/run.sh), never for a deployment.

    python3 bench/gpu/vllm_compat.py SITE_DIR     (the folder holding the installed vllm/)
"""

from __future__ import annotations

import sys
from pathlib import Path

ALIASES = {
    "entrypoints/launchers/cli_args.py": "vllm.entrypoints.openai.cli_args",
    "entrypoints/serve/engine/protocol.py": "vllm.entrypoints.openai.engine.protocol",
}
EXCEPTION = "\n\nclass VLLMClientError(ValueError):  # tts_ray bench/gpu/vllm_compat.py: Ray 2.60 imports it\n    pass\n"


def patch(site: Path) -> list[str]:
    vllm = site / "vllm"
    done = []
    for rel, target in ALIASES.items():
        path = vllm / rel
        if path.exists():
            continue
        for parent in list(path.relative_to(vllm).parents)[:-1]:
            init = vllm / parent / "__init__.py"
            init.parent.mkdir(parents=True, exist_ok=True)
            if not init.exists():
                init.write_text("")
        path.write_text(f"# alias written by tts_ray bench/gpu/vllm_compat.py for Ray 2.60\n"
                        f"from {target} import *  # noqa: F401,F403\n"
                        f"import {target} as _m\n"
                        f"globals().update({{k: v for k, v in vars(_m).items() if not k.startswith('__')}})\n")
        done.append(rel)
    exceptions = vllm / "exceptions.py"
    if "VLLMClientError" not in exceptions.read_text():
        exceptions.write_text(exceptions.read_text() + EXCEPTION)
        done.append("exceptions.py: VLLMClientError")
    return done


if __name__ == "__main__":
    print(patch(Path(sys.argv[1])))
