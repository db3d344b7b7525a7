# Multi-stage build of the warren binary; one image runs every component
# (`warren run all`, or `warren run <component>`).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p warren

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/warren /usr/local/bin/warren
RUN mkdir -p /var/lib/warren/images && chown -R 10001 /var/lib/warren
WORKDIR /var/lib/warren
USER 10001
ENV WARREN_HTTP_ADDR=0.0.0.0:8080 \
    WARREN_IMAGE_STORE=/var/lib/warren/images
EXPOSE 8080
ENTRYPOINT ["warren"]
CMD ["run", "all"]
