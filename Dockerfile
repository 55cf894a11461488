# Image for the split processes in compose.yaml (chorus engine | project | gateway).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY contracts contracts
COPY events events
COPY engine engine
COPY projections projections
COPY gateway gateway
COPY runtime runtime
RUN pip install --no-cache-dir '.' 'eventsourcing[postgres]'
ENV CHORUS_DATA_DIR=/data
