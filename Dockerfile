# syntax=docker/dockerfile:1
#
# OOTDiffusion virtual try-on worker for RunPod serverless.
#
#   docker build --platform linux/amd64 --secret id=hf_token,env=HF_TOKEN -t USER/ootd-worker:0.1.0 .
#   docker build --platform linux/amd64 --build-arg OOTD_MODEL_TYPES=hd -t USER/ootd-worker:0.1.0-hd .
#   docker build --platform linux/amd64 --build-arg BAKE_WEIGHTS=clip -t USER/ootd-worker:0.1.0-slim .
#
# A plain Python base, not nvidia/cuda: PyPI's torch 2.13.0 (x86_64) is a CUDA 13 build that
# brings its own CUDA 13 and cuDNN 9 as nvidia-* wheels, and onnxruntime-gpu 1.31.1 (CUDA 13.*,
# cuDNN 9.*) uses those same libraries (preprocess/parsing.py has them preloaded), so a CUDA base
# image would ship them twice. Only the driver comes from the host (>= 580 for CUDA 13).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# NVIDIA_*: what the NVIDIA container runtime mounts from the host (the nvidia/cuda images set
# the same); without `compute` there is no libcuda.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app

# Dependencies first: this layer changes only when the pins do.
COPY requirements.txt ./
COPY requirements/ requirements/
# Optional secrets, for a machine that reaches the package index through a proxy with its own
# certificate authority or through a mirror (scripts/image-check.sh passes both from the host):
# ca_bundle (CA certificates pip trusts) and pip_conf (a pip.conf with the index settings).
# Secrets exist only during this RUN; neither lands in a layer or the image's environment.
RUN --mount=type=secret,id=ca_bundle,required=false --mount=type=secret,id=pip_conf,required=false \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
 && if [ -s /run/secrets/pip_conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip_conf; fi \
 && pip install -r requirements.txt && pip check

# Weights next, from only the files the builder needs (builder.BUILD_CONTEXT), so that code
# changes do not invalidate the weights layer. /weights, not /runpod-volume: an attached
# network volume is mounted there and would hide anything baked into it.
# BAKE_WEIGHTS: all = every file for OOTD_MODEL_TYPES; clip = only CLIP (a slim image for endpoints
# that cache the hub repo levihsu/OOTDiffusion through RunPod); none = nothing baked.
# WEIGHTS_DTYPE: fp16 rewrites the UNets and the VAE as fp16 safetensors (what the GPU runs; half
# the bytes), fp32 keeps the hub's files. In the same RUN as the download, so that the fp32 files
# never reach a layer of an fp16 image.
# The token is a BuildKit secret (optional: the repos are public), never an ARG.
ARG OOTD_MODEL_TYPES=hd,dc
ARG BAKE_WEIGHTS=all
ARG WEIGHTS_DTYPE=fp16
ARG OOTD_REVISION=main
ARG CLIP_REVISION=main
COPY builder/ builder/
COPY core/vocabulary.py core/vocabulary.py
COPY ootd/layout.py ootd/layout.py
COPY preprocess/layout.py preprocess/layout.py
RUN --mount=type=secret,id=hf_token,required=false \
    case "${WEIGHTS_DTYPE}" in fp16|fp32) ;; *) echo "WEIGHTS_DTYPE must be fp16 or fp32" >&2; exit 1;; esac \
 && python -m builder.fetch_weights --dest /weights --model-types "${OOTD_MODEL_TYPES}" \
        --bake "${BAKE_WEIGHTS}" --ootd-revision "${OOTD_REVISION}" --clip-revision "${CLIP_REVISION}" \
 && if [ "${WEIGHTS_DTYPE}" = fp16 ]; then python -m builder.to_fp16 /weights; fi

# Run time: never reach for the hub. The worker looks for its weights itself (an explicit
# CHECKPOINTS_DIR, else per part the baked /weights, then RunPod's model cache), so no CHECKPOINTS_DIR here.
ENV HF_HUB_OFFLINE=1 \
    OOTD_MODEL_TYPES=${OOTD_MODEL_TYPES}

# The project last (it changes most often). test_input.json sits in the working directory,
# where the runpod SDK looks for it when started without RunPod's environment.
COPY handler.py start.sh test_input.json ./
COPY core/ core/
COPY worker/ worker/
COPY ootd/ ootd/
COPY preprocess/ preprocess/
COPY storage/ storage/
COPY assets/ assets/

# start.sh runs `python -u handler.py` (RunPod's queue), or with WORKER_MODE=lb serves a RunPod
# load-balancing endpoint on PORT (python -m worker.serve --lb).
CMD ["sh", "start.sh"]
