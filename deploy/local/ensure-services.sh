#!/usr/bin/env bash
# Make sure the local services civicbus needs are installed and running on loopback.
#   deploy/local/ensure-services.sh rabbitmq postgresql
# RabbitMQ is needed to run civicbus; PostgreSQL only by the tests (the default store is SQLite).
# Installs from Debian's packages when a service is missing (needs root), starts it when stopped,
# and waits until it answers, so a fresh machine or CI needs nothing done by hand.
set -euo pipefail

log() { printf 'ensure-services: %s\n' "$*" >&2; }

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root to run: $*"; return 1; fi
}

apt_install() {
  log "installing $* from Debian's packages"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {  # name, check command..., waits up to about 90 s
  local name=$1; shift
  for _ in $(seq 1 90); do
    if "$@" >/dev/null 2>&1; then log "$name is up"; return 0; fi
    sleep 1
  done
  log "$name did not come up in 90 s"; return 1
}

# True when something on 5672 answers an AMQP 0-9-1 protocol header with a frame.
amqp_answers() {
  timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5672 && printf "AMQP\x00\x00\x09\x01" >&3 &&
    head -c 1 <&3 | od -An -tx1 | grep -q 01' 2>/dev/null
}

start_rabbitmq() {
  log "starting RabbitMQ"
  as_root rabbitmq-server -detached
}

ensure_rabbitmq() {
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  port_open 5672 || timeout 60 as_root rabbitmqctl -q status >/dev/null 2>&1 || start_rabbitmq
  if ! wait_for "RabbitMQ (AMQP handshake)" amqp_answers; then
    # A broker that listens but never answers (seen after a stuck vhost deletion) is restarted.
    log "RabbitMQ is not answering AMQP: restarting it"
    timeout 60 as_root rabbitmqctl -q stop >/dev/null 2>&1 || as_root pkill -9 -u rabbitmq beam.smp || true
    sleep 2
    start_rabbitmq
    wait_for "RabbitMQ (AMQP handshake)" amqp_answers && return 0
    # Still hanging while it recovers what it held. Only on a throwaway machine (CI, or when
    # asked) is the node reset to empty: that deletes every vhost and message on it.
    if [[ ${CI:-} == true || ${CIVICBUS_RESET_BROKER:-} == 1 ]]; then
      log "RabbitMQ still not answering: resetting the node to empty (CI)"
      as_root pkill -9 -u rabbitmq beam.smp || true
      sleep 2
      as_root rm -rf /var/lib/rabbitmq/mnesia/rabbit@localhost
      start_rabbitmq
      wait_for "RabbitMQ (AMQP handshake)" amqp_answers
    else
      log "RabbitMQ does not answer; CIVICBUS_RESET_BROKER=1 $0 rabbitmq resets it to empty"
      return 1
    fi
  fi
}

# The server's programs, not only the cluster tools: the fault tests start a private cluster
# with initdb and pg_ctl from /usr/lib/postgresql/<version>/bin (tests/faults/pg_cluster.py).
postgresql_installed() {
  command -v pg_ctlcluster >/dev/null && compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

ensure_postgresql() {
  postgresql_installed || apt_install postgresql
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  if ! port_open 5432; then
    log "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  fi
  wait_for "PostgreSQL port 5432" port_open 5432
  if ! psql -h 127.0.0.1 -U postgres -d test -Atc 'select 1' >/dev/null 2>&1; then
    # A fresh Debian PostgreSQL: create the test database the suite expects.
    as_root su postgres -c "psql -Atc \"select 1 from pg_database where datname='test'\" | grep -q 1 \
      || createdb test" || true
    psql -h 127.0.0.1 -U postgres -d test -Atc 'select 1' >/dev/null 2>&1 || {
      log "cannot connect as postgres to 127.0.0.1:5432/test; allow local trust (or set"
      log "CIVICBUS_TEST_PG to a DSN that works) and run again"; return 1; }
  fi
}

(($#)) || set -- rabbitmq postgresql
for service in "$@"; do
  case $service in
    rabbitmq) ensure_rabbitmq ;;
    postgresql) ensure_postgresql ;;
    *) log "unknown service: $service"; exit 2 ;;
  esac
done
