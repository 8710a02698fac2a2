# penaltybox: the server in a small Debian image.
#
# The builder needs only stable Rust: the XDP program is the committed,
# prebuilt ebpf-prog/penaltybox-xdp.bpf.o, embedded in the binary.
#
#   docker build -t penaltybox .
#   docker run -d -p 5000:5000 -v penaltybox:/var/lib/penaltybox penaltybox
# Kernel tier (XDP) too:
#   docker run -d -p 5000:5000 -v penaltybox:/var/lib/penaltybox \
#     --cap-add BPF --cap-add NET_ADMIN -v /sys/fs/bpf:/sys/fs/bpf \
#     -e PENALTYBOX_KERNEL__XDP_IFACE=eth0 penaltybox

FROM rust:1.95-slim-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p penaltybox \
 && strip target/release/penaltybox

FROM debian:bookworm-slim
# File capabilities let the unprivileged user run the kernel tier when the
# container is given CAP_BPF and CAP_NET_ADMIN. They are "permitted" only
# (no effective bit), so that the binary still starts, userspace tier only,
# in a container without them; it raises what it was granted itself.
# DAC_OVERRIDE: to create its pins in a host /sys/fs/bpf owned by root.
COPY --from=builder /src/target/release/penaltybox /usr/local/bin/penaltybox
RUN apt-get update \
 && apt-get install -y --no-install-recommends libcap2-bin \
 && setcap cap_bpf,cap_net_admin,cap_dac_override+p /usr/local/bin/penaltybox \
 && apt-get purge -y --auto-remove libcap2-bin \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb \
 && useradd --system --uid 10001 --home-dir /var/lib/penaltybox penaltybox \
 && mkdir -p /var/lib/penaltybox \
 && chown penaltybox:penaltybox /var/lib/penaltybox

ENV PENALTYBOX_DATA_DIR=/var/lib/penaltybox
VOLUME /var/lib/penaltybox
USER penaltybox
EXPOSE 5000
# A bare TCP connect: a connection that sends nothing is never timed out.
# /readyz on the metrics listener (127.0.0.1:9464 by default: 200 once the
# ban table is restored); with metrics off, whether port 5000 accepts.
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s \
  CMD bash -c 'if (: </dev/tcp/127.0.0.1/9464) 2>/dev/null; then exec 3<>/dev/tcp/127.0.0.1/9464 && printf "GET /readyz HTTP/1.0\r\n\r\n" >&3 && head -n 1 <&3 | grep -q " 200 "; else : </dev/tcp/127.0.0.1/5000; fi' || exit 1
ENTRYPOINT ["penaltybox"]
CMD ["serve"]
