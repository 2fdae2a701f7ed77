# bids_phydiff BIDS App image. Needs BuildKit (Docker >= 23 builds with it by default; on Docker 20.10 set
# DOCKER_BUILDKIT=1): it builds only the stages the chosen VARIANT needs and runs the RUN --mount steps. The
# legacy builder stops at its first stage with "the --mount option requires BuildKit". There is no `# syntax=`
# line on purpose: it would fetch the Dockerfile frontend from a registry, which offline builds cannot do.
#
#   GPU (default): docker build -t bids_phydiff:0.1.0 .
#   CPU:           docker build --build-arg VARIANT=cpu -t bids_phydiff:0.1.0-cpu .
#   another CUDA:  docker build --build-arg CUDA_VERSION=12.8.1 --build-arg TORCH_CUDA=cu128 ...
#                  (TORCH_CUDA must be a build that PyTorch publishes for TORCH_VERSION)
#   offline/proxied inputs (docs/hpc.md):
#     --build-arg CPU_BASE_IMAGE=<local image>  --build-arg PYTHON_VERSION=<its python3.X>
#     --build-arg TORCH_INDEX_URL=... / TORCH_CPU_INDEX_URL=...  --build-arg PIP_INDEX_URL=...
#     docker/wheels/*.whl: offered to every pip install; TORCH_CPU_INDEX_URL= (empty): torch only from there
#     docker/templateflow/tpl-*: a filled TemplateFlow home, copied instead of downloaded
#     --secret id=pip_ca,src=<extra CA bundle>: trusted by pip and the template download, never in the image
#
# The natten wheel is compiled in a CUDA devel stage against exactly the torch and CUDA of the runtime
# stage, for the GPU architectures in NATTEN_CUDA_ARCH (a long build: each architecture adds time).
# The CPU image has no natten: the app's torch attention backend needs none.
# See docs/hpc.md for apptainer, SLURM, torchrun and docker/smoke.sh.

ARG VARIANT=gpu
ARG UBUNTU_VERSION=24.04
ARG CUDA_VERSION=13.0.1
# Python of Ubuntu 24.04; the natten wheel and the runtime use the same one
ARG PYTHON_VERSION=3.12
# these agree with setup.cfg (tests/test_container.py checks it)
ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA=cu130
ARG NATTEN_VERSION=0.21.7
# the CPU image's base: any Debian/Ubuntu image with python${PYTHON_VERSION} (e.g. one made with debootstrap)
ARG CPU_BASE_IMAGE=ubuntu:${UBUNTU_VERSION}

# ---------------------------------------------------------------------------------------------------------
# The legacy builder runs every stage in order, whatever VARIANT says: this first stage stops it at once,
# before it pulls or compiles anything ("the --mount option requires BuildKit"). BuildKit skips it (nothing
# depends on it).
FROM scratch AS buildkit-required
RUN --mount=type=tmpfs,target=/buildkit false

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
RUN --mount=type=secret,id=pip_ca --mount=type=bind,source=docker/with_pip_ca.sh,target=/tmp/with_pip_ca.sh \
    sh /tmp/with_pip_ca.sh pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" \
 && sh /tmp/with_pip_ca.sh pip install --no-cache-dir setuptools wheel build
# NATTEN_CUDA_ARCH forces the CUDA build (there is no GPU here to detect); NATTEN_IS_BUILDING_DIST tags the
# wheel with the torch and CUDA it was built for, which the test below relies on.
RUN --mount=type=secret,id=pip_ca --mount=type=bind,source=docker/with_pip_ca.sh,target=/tmp/with_pip_ca.sh \
    NATTEN_CUDA_ARCH="${NATTEN_CUDA_ARCH}" NATTEN_N_WORKERS="${NATTEN_N_WORKERS}" NATTEN_IS_BUILDING_DIST=1 \
        sh /tmp/with_pip_ca.sh pip wheel --no-cache-dir --no-build-isolation --no-deps "natten==${NATTEN_VERSION}" --wheel-dir /wheels \
 && tag="torch$(echo "${TORCH_VERSION}" | tr -d .)${TORCH_CUDA}" \
 && ls /wheels/natten-${NATTEN_VERSION}+${tag}-*.whl
# the wheel must hold libnatten, the fused kernels (natten installs a Flex-only package silently otherwise).
# No GPU driver here: the CUDA toolkit's stub stands in for libcuda.so.1 so that the extension can load.
RUN pip install --no-cache-dir --no-deps /wheels/natten-*.whl \
 && mkdir -p /tmp/cuda-stub && ln -s /usr/local/cuda/lib64/stubs/libcuda.so /tmp/cuda-stub/libcuda.so.1 \
 && LD_LIBRARY_PATH=/tmp/cuda-stub:${LD_LIBRARY_PATH:-} python -c "import natten; \
print('natten', natten.__version__, 'HAS_LIBNATTEN', natten.HAS_LIBNATTEN); assert natten.HAS_LIBNATTEN" \
 && rm -rf /tmp/cuda-stub

# the CPU image installs no natten: an empty wheel folder
FROM ${CPU_BASE_IMAGE} AS natten-cpu
RUN mkdir /wheels

FROM natten-${VARIANT} AS natten-wheels

# ---------------------------------------------------------------------------------------------------------
# runtime bases
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-ubuntu${UBUNTU_VERSION} AS base-gpu
FROM ${CPU_BASE_IMAGE} AS base-cpu

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

# pip's own index (offline mirror or proxy); unset: pip's default
ARG PIP_INDEX_URL
RUN apt-get update \
 && apt-get install -y --no-install-recommends python${PYTHON_VERSION} python${PYTHON_VERSION}-venv \
        ca-certificates libgomp1 \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log
ENV PATH=/opt/venv/bin:${PATH} \
    VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# One layer for every Python package (each layer is a full copy on some storage drivers): torch first, from
# the index of the wanted build (a plain `pip install torch` picks one for you; an empty index URL: only the
# wheels in docker/wheels/, which every pip install here may use), the setuptools torch asks for (Python
# 3.11's venv has an older one), natten (GPU), then the package itself, a regular install from the build
# context mounted read-write for the build only (no source layer in the image), with what it needs at the
# versions of requirements.lock (`-c`: the lock's test-only packages stay out). Then what no user runs goes:
# torch's C++ tests, test binaries and headers (no compiler in the image; torch/bin keeps torch_shm_manager,
# which `import torch` needs), every package's tests/ folder, and pip itself: nothing installs at run time.
# torch is imported and pip check run on what is left.
RUN --mount=type=secret,id=pip_ca \
    --mount=type=bind,target=/tmp/bids_phydiff/src,rw \
    --mount=type=bind,from=natten-wheels,source=/wheels,target=/tmp/wheels \
    python${PYTHON_VERSION} -m venv /opt/venv \
 && pip="sh /tmp/bids_phydiff/src/docker/with_pip_ca.sh pip" \
 && export PIP_FIND_LINKS=/tmp/bids_phydiff/src/docker/wheels \
 && index="${TORCH_INDEX_URL}" && if [ "${VARIANT}" = cpu ]; then index="${TORCH_CPU_INDEX_URL}"; fi \
 && if [ -n "${index}" ]; then from="--index-url ${index}"; else from="--no-index --no-deps"; fi \
 && $pip install --no-cache-dir "torch==${TORCH_VERSION}" ${from} \
 && $pip install --no-cache-dir --upgrade "setuptools>=77.0.3" \
 && for wheel in /tmp/wheels/*.whl; do \
        [ -e "${wheel}" ] || continue; pip install --no-cache-dir --no-deps "${wheel}" || exit 1; \
    done \
 && $pip install --no-cache-dir -c /tmp/bids_phydiff/src/requirements.lock /tmp/bids_phydiff/src \
 && site=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
 && rm -rf "${site}/torch/test" "${site}/torch/include" \
 && find "${site}/torch/bin" -mindepth 1 ! -name torch_shm_manager -exec rm -rf {} + \
 && find "${site}" -type d -name tests -prune -exec rm -rf {} + \
 && python -c "import sys, torch; v = torch.__version__.split('+')[0]; cuda = torch.version.cuda; \
print('torch', torch.__version__, 'CUDA', cuda); \
sys.exit(v != '${TORCH_VERSION}' or (cuda is None) != ('${VARIANT}' == 'cpu'))" \
 && pip check \
 && mkdir -p /opt/bids_phydiff \
 && install -m 0755 /tmp/bids_phydiff/src/run.py /opt/bids_phydiff/run.py \
 && install -m 0644 /tmp/bids_phydiff/src/docker/fetch_templates.py /opt/bids_phydiff/fetch_templates.py \
 && cp -r /tmp/bids_phydiff/src/configs /opt/bids_phydiff/configs && chmod -R a+rX,go-w /opt/bids_phydiff/configs \
 && pip uninstall -y -q pip \
 && rm -rf /root/.cache

# templates baked in: compute nodes are often offline, and the image is read-only at run time. A filled
# TemplateFlow home in docker/templateflow/ (tpl-* folders) is copied instead of downloaded; fetch_templates.py
# then downloads only what is missing and checks every file either way.
ENV TEMPLATEFLOW_HOME=/opt/templateflow \
    TEMPLATEFLOW_AUTOUPDATE=0
RUN --mount=type=secret,id=pip_ca --mount=type=bind,source=docker,target=/tmp/docker \
    mkdir -p /opt/templateflow \
 && for tpl in /tmp/docker/templateflow/tpl-*; do [ -e "${tpl}" ] || continue; cp -r "${tpl}" /opt/templateflow/; done \
 && sh /tmp/docker/with_pip_ca.sh python /opt/bids_phydiff/fetch_templates.py \
 && chmod -R a+rX,go-w /opt/templateflow

# Any UID may run this image (docker run -u, apptainer): HOME is writable by all, and matplotlib's font
# cache is built now so that a read-only run does not need to write it.
ENV HOME=/home/bidsapp \
    MPLCONFIGDIR=/home/bidsapp/.config/matplotlib \
    OMP_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    NIPYPE_NO_ET=1 \
    BIDS_PHYDIFF_CONTAINER=docker \
    BIDS_PHYDIFF_CODE_URL=${SOURCE_URL}
# (BuildKit leaves the empty mount points of the steps above in /tmp: removed here)
RUN rm -rf /tmp/bids_phydiff /tmp/wheels /tmp/docker \
 && useradd --create-home --home-dir /home/bidsapp --shell /bin/bash --user-group bidsapp \
 && mkdir -p "${MPLCONFIGDIR}" \
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
        python -c "import torch, natten, importlib.util; from importlib.metadata import version; \
v = version('natten'); print('natten', v, 'libnatten', natten.HAS_LIBNATTEN); \
assert v.startswith('${NATTEN_VERSION}+torch') and v.endswith('${TORCH_CUDA}'), v; \
assert importlib.util.find_spec('natten.libnatten') is not None, 'the natten package has no libnatten'"; \
    fi

ENTRYPOINT ["/opt/bids_phydiff/run.py"]
