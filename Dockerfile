# VAE inference service.
#
#   docker build --network=host -t vae-service .
#
# Build arguments choose the torch build (see docs/deploy.md):
#   TORCH_SPEC   pip requirement for torch                 (default: torch==2.13.0)
#   TORCH_INDEX  extra package index that provides it      (default: PyTorch's CPU index)
#   EXTRAS       the package's extras to install, comma-separated (default: onnx, for
#                VAE_BACKEND=onnxruntime and vae-export; empty: none, about 90 MB less)
# CPU image: the defaults. CUDA image: TORCH_INDEX=https://download.pytorch.org/whl/cu126
# (the wheel bundles the CUDA runtime; the host needs only the NVIDIA driver and toolkit).
# Offline builds with a base image whose PIP_FIND_LINKS holds the torch wheel can pass
# TORCH_INDEX= (empty) to skip the index.

# --- requirements: the dependency list alone, so that editing pyproject.toml's other
# fields (version, scripts, tool settings) keeps the cached dependency layer below.
# constraints.txt (scripts/lock.sh) pins every version, so builds are reproducible.
FROM python:3.11-slim AS requirements
ARG EXTRAS="onnx"
WORKDIR /src
COPY pyproject.toml constraints.txt ./
RUN EXTRAS="$EXTRAS" python -c "import os, tomllib, pathlib; \
project = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = [e.strip() for e in os.environ['EXTRAS'].split(',') if e.strip()]; \
deps = project['dependencies'] + [d for e in extras for d in project['optional-dependencies'][e]]; \
pathlib.Path('requirements.txt').write_text('\n'.join(deps) + '\n')"

# --- dependencies: a virtual environment with everything the package needs.
FROM python:3.11-slim AS dependencies
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX="https://download.pytorch.org/whl/cpu"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
COPY --from=requirements /src/requirements.txt /src/constraints.txt /tmp/
# torch is named with the other requirements so pip resolves them together; among
# equal versions it prefers the index's local build (2.13.0+cpu) over PyPI's CUDA one.
RUN pip install ${TORCH_INDEX:+--extra-index-url=$TORCH_INDEX} "$TORCH_SPEC" \
        -r /tmp/requirements.txt -c /tmp/constraints.txt
# torch's wheel carries C++ headers, test binaries and a protoc: nothing at run time uses
# them, and with no compiler in the image the headers could not be used either.
RUN torch_dir=$(python -c "import importlib.util as u; print(u.find_spec('torch').submodule_search_locations[0])") \
    && rm -rf "$torch_dir/test" "$torch_dir/include" \
    && find "$torch_dir/bin" -mindepth 1 -maxdepth 1 ! -name torch_shm_manager -exec rm -rf {} +

# --- package: the project as a wheel (code, default weights, console scripts).
FROM python:3.11-slim AS package
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model ./model
COPY service ./service
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- runtime: the base image, the dependencies, the package; no compilers, no pip
# cache, no sources, tests or benchmarks. The package goes in its own small layer, so
# a code change neither re-copies the dependencies nor re-uploads them.
FROM python:3.11-slim
LABEL org.opencontainers.image.title="vae-service" \
      org.opencontainers.image.description="REST inference service for variational autoencoders"
# HOME and MPLCONFIGDIR point at /tmp: with a read-only root filesystem it is the
# one writable place (a tmpfs in docker-compose.yml).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib
# /weights is where mounted or trained weights go (VAE_WEIGHTS=/weights/...); owned by
# the service user so a fresh named volume mounted there is writable by training.
RUN useradd --user-group --uid 10001 --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin vae \
    && install -d -o vae -g vae /weights
COPY --from=dependencies /opt/venv /opt/venv
COPY --from=package /wheels /tmp/wheels
# The service starts from the bundled weights; an image without them would fail its
# readiness check at run time, so fail the build instead.
RUN pip install --no-deps --no-index /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && python -c "from vae_service.model.pretrained import DEFAULT_WEIGHTS as w; \
assert w.is_file(), f'{w} is missing: train or fetch the default weights first'"
USER vae
WORKDIR /tmp
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
# vae-serve checks the weights, then runs uvicorn in this process (PID 1, so it gets
# SIGTERM): unusable weights stop the container with one line in its log, not a
# traceback. The flags pin the address that EXPOSE and HEALTHCHECK assume; every other
# setting comes from VAE_* variables.
CMD ["vae-serve", "--host", "0.0.0.0", "--port", "8000"]
