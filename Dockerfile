# Builds the redswitch binary; used by docker-compose.yml.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin redswitch

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/redswitch /usr/local/bin/redswitch
EXPOSE 8084
ENTRYPOINT []
CMD ["redswitch", "serve"]
