#!/usr/bin/env bash
# Starts the local services the test suite relies on when they are not answering:
# Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (the machine's own cluster).
# Debian packages the tests use are installed when missing (CI runs as root), with one
# `apt-get update`: docker-compose (tests/docker/test_deployment.py runs `docker-compose config`) and
# Chromium for the dashboard's browser test (Playwright drives /usr/bin/chromium and never
# downloads a browser of its own).
missing=()
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"; } >/dev/null \
    || echo "ensure_services: could not install ${missing[*]}" >&2
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  redis-server --daemonize yes --port 6379 --save "" >/dev/null
  for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
    for _ in $(seq 1 50); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 0.2; done
  fi
fi
exit 0
