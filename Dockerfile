# One image for every proxybus binary. Build a service with
#   docker build --build-arg BIN=proxybus-resolver -t proxybus-resolver .
# docker-compose.yml does that for each service.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --workspace --bins \
 && mkdir -p /out \
 && find target/release -maxdepth 1 -type f -perm -u+x -name 'proxybus*' -exec cp {} /out/ \;

FROM debian:bookworm-slim
ARG BIN
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /var/lib/proxybus --create-home proxybus
COPY --from=build /out/ /usr/local/bin/
ENV PROXYBUS_BIN=${BIN} PROXYBUS_LOG_FORMAT=json
USER proxybus
WORKDIR /var/lib/proxybus
ENTRYPOINT ["/bin/sh", "-c", "exec \"/usr/local/bin/$PROXYBUS_BIN\" \"$@\"", "--"]
