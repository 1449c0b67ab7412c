# syntax=docker/dockerfile:1
#
# OOTDiffusion virtual try-on worker for RunPod serverless, with the weights baked in.
#
#   docker build --platform linux/amd64 --secret id=hf_token,env=HF_TOKEN -t USER/ootd-worker:0.1.0 .
#   docker build --platform linux/amd64 --build-arg OOTD_MODEL_TYPES=hd -t USER/ootd-worker:0.1.0-hd .
#
# CUDA 13 + cuDNN 9 because PyPI's torch 2.13.0 (x86_64) is a CUDA 13 build and
# onnxruntime-gpu 1.31.1 asks for CUDA 13.* and cuDNN 9.*; hosts need a driver >= 580.
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Python 3.11 from deadsnakes (Ubuntu 24.04 ships 3.12). OpenCV is the headless wheel, so no GL libraries.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates gpg-agent software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && apt-get purge -y --auto-remove software-properties-common gpg-agent \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app

# Dependencies first: this layer changes only when the pins do.
COPY requirements.txt ./
COPY requirements/ requirements/
RUN pip install -r requirements.txt && pip check

# Weights next, from only the files the builder needs (builder.BUILD_CONTEXT), so that code
# changes do not invalidate the ~15 GB layer. /weights, not /runpod-volume: an attached
# network volume is mounted there and would hide anything baked into it.
# The token is a BuildKit secret (optional: the repos are public), never an ARG.
ARG OOTD_MODEL_TYPES=hd,dc
ARG OOTD_REVISION=main
ARG CLIP_REVISION=main
COPY builder/ builder/
COPY ootd/layout.py ootd/layout.py
COPY preprocess/layout.py preprocess/layout.py
RUN --mount=type=secret,id=hf_token,required=false \
    python -m builder.fetch_weights --dest /weights --model-types "${OOTD_MODEL_TYPES}" \
        --ootd-revision "${OOTD_REVISION}" --clip-revision "${CLIP_REVISION}"

# Run time: never reach for the hub; load what was baked.
ENV HF_HUB_OFFLINE=1 \
    CHECKPOINTS_DIR=/weights \
    OOTD_MODEL_TYPES=${OOTD_MODEL_TYPES}

# The project last (it changes most often). test_input.json sits in the working directory,
# where the runpod SDK looks for it when started without RunPod's environment.
COPY handler.py test_input.json ./
COPY worker/ worker/
COPY ootd/ ootd/
COPY preprocess/ preprocess/
COPY storage/ storage/
COPY assets/ assets/

CMD ["python", "-u", "handler.py"]
