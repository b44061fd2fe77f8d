#!/usr/bin/env bash
# Makes sure a RabbitMQ broker answers on 127.0.0.1:5672: installs the Debian
# package if it is missing, starts the server if it is down, and waits (at
# most two minutes) until it accepts connections. The broker tests need it.
set -euo pipefail

port_open() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

if port_open && rabbitmqctl -q status >/dev/null 2>&1; then
    echo "rabbitmq: already running"
    exit 0
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
    echo "rabbitmq: installing the Debian package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq rabbitmq-server >/dev/null
fi

if ! rabbitmqctl -q status >/dev/null 2>&1; then
    echo "rabbitmq: starting"
    rabbitmq-server -detached
fi

# `await_startup` blocks until the node has booted (or fails after its timeout).
rabbitmqctl -q --timeout 120 await_startup
for _ in $(seq 1 120); do
    if port_open; then
        echo "rabbitmq: ready"
        exit 0
    fi
    sleep 1
done
echo "rabbitmq: port 5672 did not open" >&2
exit 1
