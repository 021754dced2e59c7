# Stand-in for debian:bookworm-slim, built by scripts/base-images where no registry is reachable: the
# debootstrap minbase root (its apt sources: the machine's Debian mirror). The desktop image builds FROM it.
ARG ROOT
FROM ${ROOT}
ENV LANG=C.UTF-8
CMD ["bash"]
