# Image for the split processes in compose.yaml (chorus engine | project | gateway).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml setup.py README.md ./
COPY contracts contracts
COPY events events
COPY store store
COPY audit audit
COPY engine engine
COPY projections projections
COPY gateway gateway
COPY runtime runtime
RUN pip install --no-cache-dir '.[postgres]'
ENV CHORUS_DATA_DIR=/data
