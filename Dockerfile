# syntax=docker/dockerfile:1
# One image for both services of docker-compose.yml: the bot (python -m bot) and the GPU worker (python -m gpu).
#
# Base: Debian's Python 3.11, the interpreter requirements.lock was made with. The CUDA runtime comes with
# the torch wheel (its nvidia-* packages) and the driver from the host through the NVIDIA Container
# Toolkit, so an nvidia/cuda base would only add a second copy of the CUDA libraries (and, on Ubuntu
# 24.04, a Python the lock was not made for).
FROM python:3.11-slim-bookworm

# Empty: PyPI's torch, a CUDA build on Linux x86_64. For another CUDA version (an older driver) name a
# PyTorch index, e.g. --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126: the lock pins
# torch without a +cuXXX label, so any build of that version satisfies it.
ARG TORCH_INDEX_URL=""

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    DATA_DIR=/data \
    HF_HOME=/models \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

RUN python -m venv /opt/venv
WORKDIR /app

# Dependencies before the code, so that a code change rebuilds only the last layers.
COPY requirements.lock pyproject.toml ./
# torch alone first: the biggest layer (several GB with CUDA).
RUN pip install -c requirements.lock torch ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
# The dependencies and the extras a GPU host uses (fp8: torchao; cuda: bitsandbytes; postgres: asyncpg;
# safety: NudeNet for the bot's /mod content check, about 265 MB installed with onnxruntime and OpenCV),
# read from pyproject.toml, at the lock's versions. The project itself is not installed: it runs from
# /app, where bot/db/migrate.py finds migrations/ beside the code.
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = p['optional-dependencies']; \
print('\n'.join(p['dependencies'] + extras['fp8'] + extras['cuda'] + extras['postgres'] + extras['safety']))" > /tmp/requirements.txt \
 && pip install -c requirements.lock -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

COPY alembic.ini ./
COPY migrations/ migrations/
COPY zimage_protocol/ zimage_protocol/
COPY gpu/ gpu/
COPY bot/ bot/

# Not root. DATA_DIR (database, worker socket, images, LoRAs, compile cache) and HF_HOME (the ~20 GB of
# model weights, downloaded at the worker's first start) are volumes owned by this user.
RUN useradd --create-home --uid 10001 zimage && mkdir -p /data /models && chown zimage:zimage /data /models
USER zimage
VOLUME ["/data", "/models"]

CMD ["python", "-m", "bot"]
