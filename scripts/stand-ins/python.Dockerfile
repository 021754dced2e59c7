# Stand-in for python:3.11-slim, built by scripts/base-images where no registry is reachable.
ARG ROOT
FROM ${ROOT}
# Debian's python3 as a venv in /usr/local: python, python3 and pip on PATH as in the official image.
RUN python3 -m venv /usr/local && /usr/local/bin/python -m pip --version >/dev/null
# This machine's TLS is intercepted by a CA only the host trusts: pip in builds needs it (stand-in only).
COPY host-ca.crt /usr/local/share/host-ca.crt
ENV PIP_CERT=/usr/local/share/host-ca.crt LANG=C.UTF-8
CMD ["python3"]
