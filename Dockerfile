# shopstream's images: one Dockerfile, one target per image, named like the binary.
#
#   docker build --target order-service        -t shopstream/order-service:0.1.0 .
#   docker build --target payment-service      -t shopstream/payment-service:0.1.0 .
#   docker build --target notification-service -t shopstream/notification-service:0.1.0 .
#   docker build --target shop-controller      -t shopstream/shop-controller:0.1.0 .
#
# The workspace is compiled once for all four (the `build` stage is shared), and the
# dependencies are compiled in a layer of their own (cargo-chef), so a change to the
# workspace's code recompiles only its own crates. For other architectures:
#   docker buildx build --platform linux/amd64,linux/arm64 --target <image> ...
#
# Runtime images are distroless (glibc, libgcc, CA certificates; no shell, no package
# manager) and run as the numeric non-root user 65532.

ARG VERSION=0.1.0

FROM rust:1.95-bookworm AS chef
RUN cargo install cargo-chef --version 0.1.77 --locked
WORKDIR /src

# The dependency recipe: manifests and lock file only. It changes only when they do.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --workspace --bins \
 && mkdir /out \
 && for bin in order-service payment-service notification-service shop-controller shopctl; do \
      cp "target/release/$bin" /out/; \
    done

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG VERSION
LABEL org.opencontainers.image.vendor="shopstream" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/shopstream/shopstream" \
      org.opencontainers.image.documentation="https://github.com/shopstream/shopstream#readme"
USER 65532:65532
# One malloc arena per process. glibc gives threads that allocate at the same time arenas
# of their own (up to 8 per core), and the services' threads (tokio workers, librdkafka's
# broker threads) then keep freed memory in several heaps: at 10,000 orders/s the services
# peaked at 17-46 MiB RSS with the default (it varies with the load on the machine), at
# 10-15 MiB with one arena (`service-memory`, docs/benchmarks.md, which measures both).
ENV MALLOC_ARENA_MAX=1

FROM runtime AS order-service
LABEL org.opencontainers.image.title="order-service" \
      org.opencontainers.image.description="Generates orders at a precise, live-adjustable rate."
COPY --from=build /out/order-service /usr/local/bin/
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/order-service"]

FROM runtime AS payment-service
LABEL org.opencontainers.image.title="payment-service" \
      org.opencontainers.image.description="Decides each order's payment exactly once, in Kafka transactions."
COPY --from=build /out/payment-service /usr/local/bin/
EXPOSE 8082
ENTRYPOINT ["/usr/local/bin/payment-service"]

FROM runtime AS notification-service
LABEL org.opencontainers.image.title="notification-service" \
      org.opencontainers.image.description="Prints one readable line per payment."
COPY --from=build /out/notification-service /usr/local/bin/
EXPOSE 8083
ENTRYPOINT ["/usr/local/bin/notification-service"]

FROM runtime AS shop-controller
LABEL org.opencontainers.image.title="shop-controller" \
      org.opencontainers.image.description="Runs ShopPipeline resources as live-tuned Kafka pipelines; carries shopctl."
COPY --from=build /out/shop-controller /out/shopctl /usr/local/bin/
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/shop-controller"]
