# bids_phydiff BIDS App image.
#
#   GPU (default): docker build -t bids_phydiff:0.1.0 .
#   CPU:           docker build --build-arg VARIANT=cpu -t bids_phydiff:0.1.0-cpu .
#   another CUDA:  docker build --build-arg CUDA_VERSION=12.8.1 --build-arg TORCH_CUDA=cu128 ...
#                  (TORCH_CUDA must be a build that PyTorch publishes for TORCH_VERSION)
#
# The natten wheel is compiled in a CUDA devel stage against exactly the torch and CUDA of the runtime
# stage, for the GPU architectures in NATTEN_CUDA_ARCH (a long build: each architecture adds time).
# The CPU image has no natten: the app's torch attention backend needs none.
# See docs/hpc.md for apptainer, SLURM and torchrun.

ARG VARIANT=gpu
ARG UBUNTU_VERSION=24.04
ARG CUDA_VERSION=13.0.1
# Python of Ubuntu 24.04; the natten wheel and the runtime use the same one
ARG PYTHON_VERSION=3.12
# these agree with setup.cfg (tests/test_container.py checks it)
ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA=cu130
ARG NATTEN_VERSION=0.21.7

# ---------------------------------------------------------------------------------------------------------
# natten, compiled for the GPU image
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-devel-ubuntu${UBUNTU_VERSION} AS natten-gpu
ARG PYTHON_VERSION
ARG TORCH_VERSION
ARG TORCH_CUDA
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_CUDA}
ARG NATTEN_VERSION
ARG NATTEN_CUDA_ARCH="8.0;8.6;8.9;9.0"
ARG NATTEN_N_WORKERS=8
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python${PYTHON_VERSION} python${PYTHON_VERSION}-venv \
        python${PYTHON_VERSION}-dev build-essential cmake git ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN python${PYTHON_VERSION} -m venv /opt/venv
ENV PATH=/opt/venv/bin:${PATH}
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" \
 && pip install --no-cache-dir setuptools wheel build
# NATTEN_CUDA_ARCH forces the CUDA build (there is no GPU here to detect); NATTEN_IS_BUILDING_DIST tags the
# wheel with the torch and CUDA it was built for, which the test below relies on.
RUN NATTEN_CUDA_ARCH="${NATTEN_CUDA_ARCH}" NATTEN_N_WORKERS="${NATTEN_N_WORKERS}" NATTEN_IS_BUILDING_DIST=1 \
        pip wheel --no-cache-dir --no-build-isolation --no-deps "natten==${NATTEN_VERSION}" --wheel-dir /wheels \
 && tag="torch$(echo "${TORCH_VERSION}" | tr -d .)${TORCH_CUDA}" \
 && ls /wheels/natten-${NATTEN_VERSION}+${tag}-*.whl

# the CPU image installs no natten: an empty wheel folder
FROM ubuntu:${UBUNTU_VERSION} AS natten-cpu
RUN mkdir /wheels

FROM natten-${VARIANT} AS natten-wheels

# ---------------------------------------------------------------------------------------------------------
# runtime bases
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-ubuntu${UBUNTU_VERSION} AS base-gpu
FROM ubuntu:${UBUNTU_VERSION} AS base-cpu

FROM base-${VARIANT} AS runtime
ARG VARIANT
ARG PYTHON_VERSION
ARG TORCH_VERSION
ARG TORCH_CUDA
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_CUDA}
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG NATTEN_VERSION
ARG VERSION=0.1.0
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown
ARG SOURCE_URL=
ENV DEBIAN_FRONTEND=noninteractive

RUN apt-get update \
 && apt-get install -y --no-install-recommends python${PYTHON_VERSION} python${PYTHON_VERSION}-venv \
        ca-certificates libgomp1 \
 && rm -rf /var/lib/apt/lists/*
RUN python${PYTHON_VERSION} -m venv /opt/venv
ENV PATH=/opt/venv/bin:${PATH} \
    VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# torch first, from the index of the wanted build (a plain `pip install torch` picks one for you)
RUN index="${TORCH_INDEX_URL}"; if [ "${VARIANT}" = cpu ]; then index="${TORCH_CPU_INDEX_URL}"; fi \
 && pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${index}" \
 && python -c "import sys, torch; v = torch.__version__.split('+')[0]; cuda = torch.version.cuda; \
print('torch', torch.__version__, 'CUDA', cuda); \
sys.exit(v != '${TORCH_VERSION}' or (cuda is None) != ('${VARIANT}' == 'cpu'))"

# every other package at its locked version
COPY requirements.lock /tmp/bids_phydiff/requirements.lock
RUN pip install --no-cache-dir -r /tmp/bids_phydiff/requirements.lock

COPY --from=natten-wheels /wheels /tmp/wheels
RUN for wheel in /tmp/wheels/*.whl; do \
        [ -e "${wheel}" ] || continue; pip install --no-cache-dir --no-deps "${wheel}" || exit 1; \
    done \
 && rm -rf /tmp/wheels

# templates baked in: compute nodes are often offline, and the image is read-only at run time
ENV TEMPLATEFLOW_HOME=/opt/templateflow \
    TEMPLATEFLOW_AUTOUPDATE=0
COPY docker/fetch_templates.py /opt/bids_phydiff/fetch_templates.py
RUN python /opt/bids_phydiff/fetch_templates.py \
 && chmod -R a+rX,go-w /opt/templateflow

# the package itself (a regular install; its dependencies are all in place already)
COPY . /tmp/bids_phydiff/src
RUN pip install --no-cache-dir --no-deps /tmp/bids_phydiff/src \
 && pip check \
 && install -m 0755 /tmp/bids_phydiff/src/run.py /opt/bids_phydiff/run.py \
 && cp -r /tmp/bids_phydiff/src/configs /opt/bids_phydiff/configs && chmod -R a+rX,go-w /opt/bids_phydiff/configs \
 && rm -rf /tmp/bids_phydiff

# Any UID may run this image (docker run -u, apptainer): HOME is writable by all, and matplotlib's font
# cache is built now so that a read-only run does not need to write it.
RUN useradd --create-home --home-dir /home/bidsapp --shell /bin/bash --user-group bidsapp
ENV HOME=/home/bidsapp \
    MPLCONFIGDIR=/home/bidsapp/.config/matplotlib \
    OMP_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    NIPYPE_NO_ET=1 \
    BIDS_PHYDIFF_CONTAINER=docker \
    BIDS_PHYDIFF_CODE_URL=${SOURCE_URL}
RUN mkdir -p "${MPLCONFIGDIR}" \
 && python -c "import matplotlib.font_manager" \
 && chmod -R a+rwX /home/bidsapp \
 && chmod 0777 /home/bidsapp

LABEL org.opencontainers.image.title="bids_phydiff" \
      org.opencontainers.image.description="BIDS App: diffusion MRI synthesis with the Phy-Diff model (${VARIANT})" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0"

USER bidsapp
WORKDIR /tmp

# smoke test, as the user that runs the app: version, imports, templates found offline
RUN test "$(bids_phydiff --version)" = "bids_phydiff ${VERSION}" \
 && /opt/bids_phydiff/run.py --version \
 && python /opt/bids_phydiff/fetch_templates.py --check \
 && if [ "${VARIANT}" = cpu ]; then \
        python -c "import torch; assert torch.version.cuda is None"; \
    else \
        python -c "import torch, natten; from importlib.metadata import version; \
v = version('natten'); print('natten', v, 'libnatten', natten.HAS_LIBNATTEN); \
assert v.startswith('${NATTEN_VERSION}+torch') and v.endswith('${TORCH_CUDA}'), v"; \
    fi

ENTRYPOINT ["/opt/bids_phydiff/run.py"]
