# The monitor daemon. Build: docker build -t monitor . ; run: see docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Dependencies first, so editing the code does not reinstall hazm and friends.
COPY pyproject.toml README.md ./
RUN mkdir monitor && touch monitor/__init__.py \
    && pip install --no-cache-dir . && pip uninstall -y monitor && rm -rf monitor build

COPY monitor ./monitor
COPY migrations ./migrations
COPY alembic.ini ./
COPY seed_data ./seed_data
COPY config ./config
RUN pip install --no-cache-dir --no-deps . \
    && groupadd --gid 10001 monitor \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin monitor \
    && mkdir -p /app/data && chown monitor:monitor /app/data

USER 10001:10001
ENV MONITOR_CONFIG=/app/config/monitor.yaml
EXPOSE 8787
VOLUME ["/app/data"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8787/healthz', timeout=4)"]
ENTRYPOINT ["monitor"]
CMD ["run"]
