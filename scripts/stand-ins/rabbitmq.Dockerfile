# Stand-in for rabbitmq:3.12-management (Debian's rabbitmq-server, 3.10), built by scripts/base-images.
ARG ROOT
FROM ${ROOT}
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        rabbitmq-server >/dev/null && rm -rf /var/lib/apt/lists/* \
 && printf 'loopback_users.guest = false\nlisteners.tcp.default = 5672\nmanagement.tcp.port = 15672\n' \
        > /etc/rabbitmq/rabbitmq.conf \
 && /usr/lib/rabbitmq/bin/rabbitmq-plugins enable --offline rabbitmq_management >/dev/null \
 && printf 'streamspace-stand-in-cookie' > /var/lib/rabbitmq/.erlang.cookie \
 && chown -R rabbitmq:rabbitmq /var/lib/rabbitmq /etc/rabbitmq && chmod 600 /var/lib/rabbitmq/.erlang.cookie \
 && cp /var/lib/rabbitmq/.erlang.cookie /root/.erlang.cookie && chmod 600 /root/.erlang.cookie
ENV PATH=/usr/lib/rabbitmq/bin:$PATH HOME=/var/lib/rabbitmq LANG=C.UTF-8
EXPOSE 5672 15672
CMD ["setpriv", "--reuid=rabbitmq", "--regid=rabbitmq", "--init-groups", "rabbitmq-server"]
