# CPU image of the gateway with embedded llama.cpp. The model is mounted, not baked in:
#   docker build -t callgate .
#   docker run -p 8000:8000 -v $PWD/models/tiny:/models -e CALLGATE_AUTH__API_KEYS=sk-... \
#       callgate --model /models/model.gguf
# It listens on 0.0.0.0, so it refuses to start without a key (or --allow-open, on purpose).
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY training ./training
# Portable CPU build (AVX2/FMA on x86_64) rather than -march=native of the build host.
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF"
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[llamacpp,vllm]"

FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* && useradd --create-home callgate
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
WORKDIR /app
COPY grammars ./grammars
ENV CALLGATE_GRAMMARS=/app/grammars
USER callgate
EXPOSE 8000
ENTRYPOINT ["python", "-m", "server", "--host", "0.0.0.0", "--port", "8000"]
