#!/usr/bin/env bash
# A PostgreSQL 15 server for the scale-out tests: Debian's package, listening on 127.0.0.1 only, with a role that may
# create the tests' throw-away databases and roles (tests/test_security.py checks the README's least-privilege role).
# Prints the role's connection URL (the only output on stdout); run as root:
#   export FASHION_HPO_TEST_POSTGRES_URL=$(sudo scripts/postgres.sh)
# Safe to rerun: the package, the cluster and the role are reused; the role's password is set anew each time.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
VERSION=15
ROLE=fashion_hpo

if ! command -v pg_ctlcluster >/dev/null || [ ! -x "/usr/lib/postgresql/$VERSION/bin/postgres" ]; then
  apt-get update -qq >&2
  apt-get install -y -qq "postgresql-$VERSION" >&2
fi
[ -d "/etc/postgresql/$VERSION/main" ] || pg_createcluster "$VERSION" main >&2
echo "listen_addresses = '127.0.0.1'" >"/etc/postgresql/$VERSION/main/conf.d/fashion-hpo.conf"
pg_ctlcluster "$VERSION" main status >/dev/null 2>&1 && pg_ctlcluster "$VERSION" main restart >&2 ||
  pg_ctlcluster "$VERSION" main start >&2

port=$(pg_conftool -s "$VERSION" main show port)
password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
sql() { runuser -u postgres -- psql -v ON_ERROR_STOP=1 -q -p "$port" -d postgres -c "$1" >&2; }
if [ "$(runuser -u postgres -- psql -tA -p "$port" -d postgres -c "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" != 1 ]; then
  sql "CREATE ROLE $ROLE LOGIN CREATEDB CREATEROLE"
fi
sql "ALTER ROLE $ROLE CREATEDB CREATEROLE PASSWORD '$password'"
runuser -u postgres -- psql -tA -p "$port" -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$ROLE'" | grep -q 1 ||
  sql "CREATE DATABASE $ROLE OWNER $ROLE"
echo "postgresql+psycopg://$ROLE:$password@127.0.0.1:$port/$ROLE"
