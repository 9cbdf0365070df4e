# syntax=docker/dockerfile:1
# lfm-audio server image: `lfm-audio serve` as a non-root user, on the embedded tiny checkpoint until a real one
# is mounted at /models. CPU by default; the CUDA build (deploy/README.md, "Image"):
#   docker build --build-arg VARIANT=cuda --build-arg TORCH_INDEX=<torch's CUDA wheel index URL> -t lfm-audio:cuda .
# The install step is tools/install-python.sh, the same script `make install` runs in CI.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
# cpu or cuda. For cuda, TORCH_INDEX is required: torch's CUDA wheel index. For cpu it is optional (torch's CPU
# wheel index keeps the image small where the default index would pull the CUDA build).
ARG VARIANT=cpu
ARG TORCH_INDEX=""
ENV VIRTUAL_ENV=/opt/venv \
    LFM_AUDIO_CACHE=/opt/lfm-audio/cache \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY tools/install-python.sh tools/
COPY models models/
COPY streaming streaming/
COPY server server/
COPY web_client web_client/
RUN case "$VARIANT" in \
        cpu) ;; \
        cuda) [ -n "$TORCH_INDEX" ] || { echo "VARIANT=cuda needs --build-arg TORCH_INDEX=<torch CUDA wheel index URL>" >&2; exit 1; } ;; \
        *) echo "VARIANT must be cpu or cuda, not $VARIANT" >&2; exit 1 ;; \
    esac \
    && tools/install-python.sh --torch-index "$TORCH_INDEX" "$VIRTUAL_ENV"
# The embedded tiny checkpoint, written where the server looks for it (LFM_AUDIO_CACHE): the image starts with
# no network and no writable cache.
RUN "$VIRTUAL_ENV/bin/python" -c "from models.random_checkpoint import embedded_default; print(embedded_default())"

FROM python:${PYTHON_VERSION}-slim AS runtime
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="lfm-audio" \
      org.opencontainers.image.description="Real-time speech-to-speech server for LFM2-Audio (OpenAI Realtime API)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 lfm \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/lfm --create-home --shell /usr/sbin/nologin lfm
# Same paths as in the build stage: the editable install and the venv's scripts refer to them.
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/lfm-audio /opt/lfm-audio
COPY --from=build /app /app
WORKDIR /app
# Settings are LFM_AUDIO_* variables (server/settings.py); these are the image's defaults, override any with -e.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LFM_AUDIO_CACHE=/opt/lfm-audio/cache \
    LFM_AUDIO_HOST=0.0.0.0 \
    LFM_AUDIO_PORT=8000
# The CUDA variant defaults to the GPU (and so to bfloat16).
ENV LFM_AUDIO_DEVICE=${VARIANT}
# Checkpoints: mount a directory here and set LFM_AUDIO_MODEL=/models/<checkpoint>.
VOLUME ["/models"]
EXPOSE 8000
USER 10001:10001
# Loading and warming up a real model takes a while: /healthz answers once the server is up.
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('LFM_AUDIO_PORT', '8000') + '/healthz', timeout=4)"]
# Exec form: the server is PID 1 and gets SIGTERM itself (graceful shutdown, LFM_AUDIO_SHUTDOWN_GRACE_S).
ENTRYPOINT ["lfm-audio"]
CMD ["serve"]
