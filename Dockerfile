# VAE inference service.
#
#   docker build --network=host -t vae-service .                                   # serving
#   docker build --network=host --build-arg EXTRAS=train,onnx -t vae-service:train .  # training
#
# Build arguments choose the torch build and the extras (see docs/deploy.md):
#   TORCH_SPEC   pip requirement for torch                 (default: torch==2.13.0)
#   TORCH_INDEX  extra package index that provides it      (default: PyTorch's CPU index)
#   EXTRAS       the package's extras installed beside `serve`, which the image always
#                has (its command is vae-serve); comma-separated. Default: onnx, for
#                VAE_BACKEND=onnxruntime and vae-export. `train,onnx`: a training image
#                (vae-train and the other training CLIs: scikit-learn, matplotlib, tqdm).
#                Empty: serve alone, torch as the backend.
# CPU image: the defaults. CUDA image: TORCH_INDEX=https://download.pytorch.org/whl/cu126
# (the wheel bundles the CUDA runtime; the host needs only the NVIDIA driver and toolkit).
# Offline builds with a base image whose PIP_FIND_LINKS holds the torch wheel can pass
# TORCH_INDEX= (empty) to skip the index.

# --- requirements: the dependency list alone, so that editing pyproject.toml's other
# fields (version, scripts, tool settings) keeps the cached dependency layer below.
# The extras are expanded here, their references to the package itself
# (`vae-service[serve]`) included, so pip never looks the project up on an index.
# constraints.txt (scripts/lock.sh) pins every version, so builds are reproducible.
FROM python:3.11-slim AS requirements
ARG EXTRAS="onnx"
WORKDIR /src
COPY pyproject.toml constraints.txt ./
RUN EXTRAS="serve,$EXTRAS" python -c "import os, tomllib, pathlib; \
project = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
optional, self_ref = project['optional-dependencies'], project['name'] + '['; \
expand = lambda extra: [d for r in optional[extra] for d in ( \
    [x for e in r[len(self_ref):-1].split(',') for x in expand(e.strip())] \
    if r.startswith(self_ref) else [r])]; \
extras = [e.strip() for e in os.environ['EXTRAS'].split(',') if e.strip()]; \
deps = dict.fromkeys(project['dependencies'] + [d for e in extras for d in expand(e)]); \
pathlib.Path('requirements.txt').write_text('\n'.join(deps) + '\n')"

# --- dependencies: a virtual environment with everything the package needs.
FROM python:3.11-slim AS dependencies
# binutils' strip, for this stage alone (the image never gets it). Where no Debian mirror
# can be reached (an offline build) the build goes on without it: the shared libraries
# then keep their symbol tables and debug info, and the image is about 135 MB larger.
RUN (apt-get update -qq && apt-get install -y -qq --no-install-recommends binutils >/dev/null) \
        || echo "binutils unavailable: shared libraries are left unstripped" >&2; \
    rm -rf /var/lib/apt/lists/*
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX="https://download.pytorch.org/whl/cpu"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
COPY --from=requirements /src/requirements.txt /src/constraints.txt /tmp/
# torch is named with the other requirements so pip resolves them together; among
# equal versions it prefers the index's local build (2.13.0+cpu) over PyPI's CUDA one.
RUN pip install ${TORCH_INDEX:+--extra-index-url=$TORCH_INDEX} "$TORCH_SPEC" \
        -r /tmp/requirements.txt -c /tmp/constraints.txt
# What nothing at run time uses goes:
# - torch's C++ headers, test binaries and protoc (with no compiler in the image the
#   headers could not be used either);
# - the test suites that packages ship inside themselves (SymPy's, NumPy's, NetworkX's
#   `tests` folders: about 60 MB with their bytecode) and ONNX's backend test data;
# - the symbol tables of torch's two big libraries (libtorch_cpu.so: 415 MB -> 330 MB;
#   the dynamic symbols, which loading uses, stay) and the debug info that ml_dtypes',
#   uvloop's, PyYAML's and Pillow's extensions carry (about 37 MB).
RUN site=$(python -c "import sysconfig; print(sysconfig.get_path('purelib'))") \
    && rm -rf "$site/torch/test" "$site/torch/include" "$site/onnx/backend/test/data" \
    && find "$site/torch/bin" -mindepth 1 -maxdepth 1 ! -name torch_shm_manager -exec rm -rf {} + \
    && find "$site" -mindepth 2 -type d -name tests -prune -exec rm -rf {} + \
    && if command -v strip >/dev/null; then \
        strip --strip-unneeded "$site/torch/lib/libtorch_cpu.so" "$site/torch/lib/libtorch_python.so" \
        && find "$site" -name "*.so*" -type f -exec sh -c 'for f; do \
            if readelf -S "$f" | grep -q "[.]debug_info"; then strip --strip-debug "$f"; fi; \
            done' sh {} + ; \
    fi

# --- package: the project's wheel (code, bundled weights, console scripts), installed
# under /pkg by the environment's own pip, so that the runtime stage can add the
# package's files to the environment in a layer of their own (and no wheel with them).
FROM dependencies AS package
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && pip install --no-deps --no-index --prefix /pkg /wheels/*.whl

# --- runtime: the base image, the dependencies, the package; no compilers, no pip
# cache, no sources, tests or benchmarks. The package goes in its own small layer, so
# a code change neither re-copies the dependencies nor re-uploads them.
FROM python:3.11-slim
LABEL org.opencontainers.image.title="vae-service" \
      org.opencontainers.image.description="REST inference service for variational autoencoders"
# HOME and MPLCONFIGDIR point at /tmp: with a read-only root filesystem it is the
# one writable place (a tmpfs in docker-compose.yml); matplotlib is the training image's.
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
COPY --from=package /pkg/ /opt/venv/
# The service starts from the bundled weights; an image without them, or without what
# the server imports, would fail its readiness check at run time, so fail the build.
RUN python -c "from vae_service.model.pretrained import DEFAULT_WEIGHTS as w; \
assert w.is_file(), f'{w} is missing: train or fetch the default weights first'; \
import vae_service.server.main"
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
