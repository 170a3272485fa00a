# The Neuro Radix sidecar (API + workers). The GPU build of torch is chosen with TORCH_SPEC,
# e.g. --build-arg TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128".
FROM python:3.11-slim-bookworm
ARG TORCH_SPEC="torch==2.13.0"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
RUN useradd --system --create-home --home-dir /var/lib/neuroradix neuroradix
WORKDIR /opt/neuroradix
COPY pyproject.toml setup.py README.md orthanc.json ./
COPY inference ./inference
COPY training ./training
# The Orthanc plugin and orthanc.json ship in the package too (neuroradix_plugin): `make up` in the image finds them.
COPY plugin ./plugin
RUN pip install --no-cache-dir $TORCH_SPEC && pip install --no-cache-dir '.[worker]'
USER neuroradix
EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["neuroradix", "serve", "--host", "0.0.0.0", "--port", "8000"]
