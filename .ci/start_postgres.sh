#!/usr/bin/env bash
# Start a local PostgreSQL (Debian package) on 127.0.0.1:5432 with a plmserve_test database.
set -euo pipefail
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
PGDATA=/tmp/plmserve-pgdata
if ! "$PGBIN/pg_isready" -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  if [ ! -f "$PGDATA/PG_VERSION" ]; then
    rm -rf "$PGDATA"; mkdir -p "$PGDATA"; chown postgres:postgres "$PGDATA"
    su postgres -c "$PGBIN/initdb -D $PGDATA -A trust -U postgres" >/dev/null
  fi
  su postgres -c "$PGBIN/pg_ctl -D $PGDATA -o '-c listen_addresses=127.0.0.1 -p 5432 -k /tmp' -l /tmp/plmserve-pg.log -w start" >/dev/null
fi
psql -h 127.0.0.1 -U postgres -tc "SELECT 1 FROM pg_roles WHERE rolname='plmserve'" | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -qc "CREATE ROLE plmserve LOGIN PASSWORD 'plmserve' CREATEDB"
psql -h 127.0.0.1 -U postgres -tc "SELECT 1 FROM pg_database WHERE datname='plmserve_test'" | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE plmserve_test OWNER plmserve"
echo "postgres ready on 127.0.0.1:5432"
