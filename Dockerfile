# sluice's container image, used by deploy/kubernetes/: the one binary on Debian 12.
#
#   docker build -t sluice:0.1.0 .
#
# The build stage compiles against Cargo.lock as committed; the runtime stage has the
# binary, the CA bundle (for upstreams with tls = true) and nothing else of sluice's.
# It is debian:bookworm-slim rather than distroless so that an operator can reach sluice
# from inside its pod: `kubectl exec POD -- sh -c 'kill -HUP 1'` reloads the config, and
# preStop can fall back to `sleep` on clusters older than 1.30. Both stages are Debian 12,
# so the binary runs on the glibc it was linked against.
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin sluice \
    && install -D -m 0755 target/release/sluice /out/sluice

FROM debian:bookworm-slim
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/sluice /usr/local/bin/sluice
# Unprivileged; deployment.yaml asks for the same ids and a read-only root file system,
# which sluice is fine with: it writes nothing but to stderr.
USER 65532:65532
EXPOSE 8080 9901
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["run", "--config", "/etc/sluice/sluice.toml"]
