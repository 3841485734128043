# Portico in a container: a build stage, then a slim runtime with the binary, html/ and the
# example plugins, running as an unprivileged user.
#
#   podman build -t portico .
#   podman run --rm -p 8000:8000 portico
#   podman run --rm -p 8000:8000 -v ./site:/srv/portico/html:ro -v ./plugins:/srv/portico/plugins:ro \
#       -v ./portico.toml:/etc/portico/portico.toml:ro -e PORTICO_CONFIG=/etc/portico/portico.toml portico
#
# Linted by scripts/test (hadolint). The wsgi plugin (Python applications) is not in this
# image: it needs the Python it runs applications with.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# The workspace's locked versions; the example plugins are the release profile's small ones.
RUN cargo build --release --locked --workspace \
    && mkdir -p /out/plugins \
    && for p in hello ctime echo stream dispatch ip_filter headers; do \
         cp "target/release/lib$p.so" "/out/plugins/$p.so"; \
       done \
    && cp target/release/portico /out/portico

FROM debian:bookworm-slim
# An unprivileged user; its writable directory is the plugin cache (the plugins, the docroot
# and the configuration can then be read-only volumes).
RUN useradd --system --uid 10001 --user-group --home-dir /srv/portico --no-create-home portico \
    && mkdir -p /srv/portico /etc/portico /var/cache/portico \
    && chown portico:portico /var/cache/portico
COPY --from=build /out/portico /usr/local/bin/portico
COPY --from=build /out/plugins /srv/portico/plugins
COPY html /srv/portico/html
ENV PORTICO_BIND=0.0.0.0:8000 \
    PORTICO_DOCROOT=/srv/portico/html \
    PORTICO_PLUGINS=/srv/portico/plugins \
    PORTICO_CACHE_DIR=/var/cache/portico \
    PORTICO_PID_FILE=/var/cache/portico/portico.pid \
    NO_COLOR=1
VOLUME ["/srv/portico/plugins", "/etc/portico", "/var/cache/portico"]
USER 10001:10001
WORKDIR /srv/portico
EXPOSE 8000
# The health path answers 200 while serving and 503 while draining. The runtime image has no
# curl: bash's /dev/tcp asks it.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8000 && printf 'GET /_portico/health HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
# SIGTERM drains requests in flight (--graceful-timeout, 30 s): stop the container with that
# long a timeout (`podman stop --time 35`; the default is 10 s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/portico"]
