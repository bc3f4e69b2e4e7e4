# CPU image of the gateway with embedded llama.cpp. The model is mounted, not baked in:
#   docker build -t callgate .
#   docker run -p 8000:8000 -v $PWD/models/tiny:/models -e CALLGATE_AUTH__API_KEYS=sk-... \
#       callgate --model /models/model.gguf
# It listens on 0.0.0.0, so it refuses to start without a key (or --allow-open, on purpose).
# BASE: any Debian-family image with Python 3.11 (python3 -m venv); where no registry is
# reachable, deploy/build-local-base.sh makes one (docs/deploy.md, "The image").
ARG BASE=python:3.11-slim
FROM ${BASE} AS build
# Wheels put in deploy/wheels are used first (a host that built llama-cpp-python once skips the
# ~6 min compile); with llama-cpp-python among them, no compiler is installed.
COPY deploy/wheels /prebuilt
RUN ls /prebuilt/llama_cpp_python-*.whl >/dev/null 2>&1 || { apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake git && rm -rf /var/lib/apt/lists/*; }
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY training ./training
# Portable CPU build (AVX2/FMA on x86_64) rather than -march=native of the build host.
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF"
# PIP_NO_INDEX=1 (a build argument) builds from deploy/wheels alone, for hosts without PyPI.
ARG PIP_NO_INDEX
RUN python3 -m venv /opt/pip && /opt/pip/bin/pip wheel --no-cache-dir --find-links /prebuilt \
    --wheel-dir /wheels ".[llamacpp,vllm]"

FROM ${BASE}
RUN ldconfig -p | grep -q libgomp.so.1 || { apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*; }
RUN useradd --create-home callgate
COPY --from=build /wheels /wheels
# A venv: Debian's own Python refuses system-wide pip installs (PEP 668).
RUN python3 -m venv /opt/callgate && /opt/callgate/bin/pip install --no-cache-dir --no-index \
    --find-links /wheels callgate[llamacpp,vllm] && rm -rf /wheels
ENV PATH=/opt/callgate/bin:$PATH
WORKDIR /app
COPY grammars ./grammars
ENV CALLGATE_GRAMMARS=/app/grammars
USER callgate
EXPOSE 8000
ENTRYPOINT ["python", "-m", "server", "--host", "0.0.0.0", "--port", "8000"]
