# syntax=docker/dockerfile:1
# `hadskip serve-local` in a container: the runtime only (hadskip[serve]: onnxruntime, tokenizers, FastAPI; no
# torch), as a non-root user, serving the model dir mounted read-only at /model on 0.0.0.0:8080
# (docs/serving.md; tests/test_dockerfile.py checks these facts and runs the command below on a read-only mount):
#   docker build -f docker/serve-local.Dockerfile -t hadskip-serve .
#   docker run --rm -p 8080:8080 -v "$PWD/models/h3:/model:ro" -e HADSKIP_API_KEY hadskip-serve

FROM python:3.12-slim-bookworm AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY hadskip/ hadskip/
COPY export/ export/
COPY runtime/ runtime/
COPY cli/ cli/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.12-slim-bookworm
COPY --from=wheel /wheels /wheels
# the runtime and the server only; the build fails if anything pulled in torch or transformers.
# DL3013 (pin versions): this is the wheel just built from this tree; its dependencies are pyproject's ranges
# hadolint ignore=DL3013
RUN whl="$(echo /wheels/hadskip-*.whl)" \
    && pip install --no-cache-dir "${whl}[serve]" \
    && rm -rf /wheels \
    && python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('torch', 'transformers')))" \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin hadskip
USER 10001:10001
ENV PYTHONUNBUFFERED=1
VOLUME ["/model"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2)"]
ENTRYPOINT ["hadskip", "serve-local", "/model", "--host", "0.0.0.0", "--port", "8080"]
