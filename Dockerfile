# Builds the redswitch binary; used by docker-compose.yml.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin redswitch

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/redswitch /usr/local/bin/redswitch
# Metrics at /metrics, liveness at /health, readiness at /ready.
ENV REDSWITCH_METRICS_LISTEN=0.0.0.0:9464
EXPOSE 8084 9464
# The binary probes itself (`redswitch probe`): the image needs no curl.
# Liveness here; an orchestrator that routes work should probe /ready.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["redswitch", "probe", "health"]
ENTRYPOINT []
CMD ["redswitch", "serve"]
