# The dfagent image the Helm chart runs: `docker build -t dfagent:0.1.0 .`
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY dfagent ./dfagent
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
# Non-root; the chart runs it as this user too (only its hostPath init container is root).
RUN useradd --uid 65532 --no-create-home --shell /usr/sbin/nologin dfagent \
    && mkdir -p /var/cache/dfagent && chown 65532:65532 /var/cache/dfagent
USER 65532
EXPOSE 4000 4001 4002 4003
ENTRYPOINT ["dfagent"]
CMD ["run"]
