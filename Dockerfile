FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY monitor ./monitor
COPY migrations ./migrations
COPY seed_data ./seed_data
COPY config ./config
RUN pip install --no-cache-dir -e . && useradd --create-home --uid 10001 monitor \
    && mkdir -p /app/data && chown monitor /app/data
USER monitor
ENV MONITOR_CONFIG=/app/config/monitor.yaml
ENTRYPOINT ["monitor"]
CMD ["run"]
