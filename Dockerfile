# The one Kizuna image: platform, jobs and operator (the chart runs it as `kizuna …`,
# `kopf run …`, `flower-superlink …`, and KubeRay runs it as the Ray head and workers).
# Not built in CI here (these machines have no container runtime); see README.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 HOME=/tmp
WORKDIR /opt/kizuna
COPY pyproject.toml README.md ./
COPY platform platform
COPY jobs jobs
COPY operators operators
# CUDA builds of torch come from PyTorch's index; pyproject pins the version.
RUN pip install --extra-index-url https://download.pytorch.org/whl/cu128 . \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin kizuna
USER 10001
ENTRYPOINT ["kizuna"]
