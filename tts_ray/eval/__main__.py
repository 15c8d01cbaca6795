"""``python -m tts_ray.eval``: the entry point that ``ray job submit`` and a KubeRay RayJob run."""

import sys

from tts_ray.eval.cli import main

if __name__ == "__main__":
    sys.exit(main())
