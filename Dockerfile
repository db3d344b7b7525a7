# Multi-stage build of the warren binary; one image runs every component
# (`warren run all`, or `warren run <component>`, as docker-compose.yml does).

# 1. The workspace's skeleton: the manifests, the lock file and an empty crate in place of each
#    real one. It changes only when a Cargo.toml or Cargo.lock does, so the layer built from it
#    below (every dependency compiled, the long part of a build) is reused across source edits.
#    (Docker's build cache compares copied files by content, not by date.)
FROM rust:1-bookworm AS skeleton
WORKDIR /src
COPY . .
RUN set -eu; \
    mkdir -p /skeleton; \
    cp Cargo.toml Cargo.lock /skeleton/; \
    for manifest in crates/*/Cargo.toml; do \
      dir=$(dirname "$manifest"); \
      mkdir -p "/skeleton/$dir/src"; \
      cp "$manifest" "/skeleton/$dir/"; \
      if [ -f "$dir/build.rs" ]; then cp "$dir/build.rs" "/skeleton/$dir/"; fi; \
      if [ -f "$dir/src/lib.rs" ]; then : > "/skeleton/$dir/src/lib.rs"; fi; \
      if [ -f "$dir/src/main.rs" ]; then echo 'fn main() {}' > "/skeleton/$dir/src/main.rs"; fi; \
    done

# 2. The dependencies, then Warren itself.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY --from=skeleton /skeleton/ ./
RUN cargo build --release --locked -p warren
COPY . .
# The real sources may be older than the empty crates just built: touch them so cargo rebuilds
# every workspace crate (and only those).
RUN find crates -name '*.rs' -exec touch {} + \
 && cargo build --release --locked -p warren \
 && cp target/release/warren /usr/local/bin/warren

# 3. The runtime: the binary, curl for health checks, CA certificates for TLS to the servers.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/warren /usr/local/bin/warren
# images: the image store; broker: where `warren topology render` writes the broker's
# definitions in docker-compose.yml (a volume there, which starts with this ownership).
RUN mkdir -p /var/lib/warren/images /var/lib/warren/broker && chown -R 10001 /var/lib/warren
WORKDIR /var/lib/warren
USER 10001
ENV WARREN_HTTP_ADDR=0.0.0.0:8080 \
    WARREN_IMAGE_STORE=/var/lib/warren/images
# 8080: the gateway's HTTP API (and its /metrics); 9180: /metrics, /healthz and /readyz of a
# component without the gateway, when WARREN_METRICS_ADDR=0.0.0.0:9180 (docker-compose.yml).
EXPOSE 8080 9180
ENTRYPOINT ["warren"]
CMD ["run", "all"]
