# Apipod Smart Proxy. Build: docker build -t apipod .   Run: see docker-compose.yml
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 apipod \
    && mkdir /data \
    && chown apipod:apipod /data

WORKDIR /app
COPY pyproject.toml README.md .env.example ./
COPY src ./src
COPY addons ./addons
COPY scripts ./scripts

# The same steps as the Makefile's `.venv` and `install` targets.
RUN python -m venv .venv \
    && .venv/bin/pip install --quiet --upgrade pip \
    && .venv/bin/pip install --quiet -e .

ENV PATH=/app/.venv/bin:$PATH \
    DATABASE_PATH=/data/proxy.db \
    PORT=8081

USER apipod
VOLUME ["/data"]
EXPOSE 8081

HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8081'), timeout=4)"

# Validates the configuration, then execs:
#   mitmdump -q --mode reverse:$ANTIGRAVITY_URL -s addons/apipod.py --listen-port $PORT
CMD ["python", "-m", "apipod_proxy.serve"]
