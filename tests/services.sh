#!/usr/bin/env bash
# Start the servers the tests need, on loopback, in a scratch folder: Redis and PostgreSQL
# (the runtime's context and checkpoint stores) and Chromium for the HTML diff page.
# Missing Debian packages are installed when running as root. Prints the environment the
# tests read (STAGEWISE_TEST_REDIS_URL, STAGEWISE_TEST_POSTGRES_URL, STAGEWISE_TEST_CHROMIUM,
# and STAGEWISE_REQUIRE_SERVICES=1 so that a test whose service is missing fails instead of
# skipping), for `eval`. Servers already started by an earlier call are reused.
#
# Every service in STAGEWISE_SERVICES (default: "redis postgres chromium") is required: when one
# cannot be installed or started, this script says which and exits 1, and `make test` stops.
set -euo pipefail

STATE=${STAGEWISE_SERVICES_DIR:-/tmp/stagewise-test-services}
REDIS_PORT=${STAGEWISE_REDIS_PORT:-6391}
PG_PORT=${STAGEWISE_PG_PORT:-5441}
SERVICES=${STAGEWISE_SERVICES:-redis postgres chromium}
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
mkdir -p "$STATE"

wants() { [[ " $SERVICES " == *" $1 "* ]]; }
fail() { echo "tests/services.sh: $1" >&2; exit 1; }

missing=()
wants redis && ! command -v redis-server >/dev/null && missing+=(redis-server)
wants postgres && [ -z "$PG_BIN" ] && missing+=(postgresql)
wants chromium && ! command -v chromium >/dev/null && missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || fail "${missing[*]} not installed, and not root to install them (Debian packages)"
    echo "installing ${missing[*]} (Debian packages)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
        || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; } \
        || fail "could not install ${missing[*]}"
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
fi

if wants redis; then
    if ! redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; then
        redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes --save "" --appendonly no \
            --dir "$STATE" --logfile "$STATE/redis.log" >&2 || true
        for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
        redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG \
            || fail "Redis could not be started on 127.0.0.1:$REDIS_PORT (log: $STATE/redis.log)"
    fi
    echo "export STAGEWISE_TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
fi

if wants postgres; then
    DATA="$STATE/pg"
    # PostgreSQL refuses to run as root: the cluster belongs to the postgres user when we are root.
    as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi; }
    if [ ! -f "$DATA/PG_VERSION" ]; then
        mkdir -p "$DATA"
        [ "$(id -u)" = 0 ] && chown -R postgres "$STATE"
        echo stagewise > "$STATE/pgpass"
        [ "$(id -u)" = 0 ] && chown postgres "$STATE/pgpass"
        as_pg "'$PG_BIN/initdb' -D '$DATA' -U stagewise --pwfile='$STATE/pgpass' -A scram-sha-256 >/dev/null" \
            || fail "PostgreSQL: initdb failed in $DATA"
    fi
    if ! "$PG_BIN/pg_isready" -h 127.0.0.1 -p "$PG_PORT" >/dev/null 2>&1; then
        as_pg "'$PG_BIN/pg_ctl' -D '$DATA' -l '$STATE/pg.log' -w -o \"-p $PG_PORT -k '$STATE' -c listen_addresses=127.0.0.1\" start >/dev/null" \
            || fail "PostgreSQL could not be started on 127.0.0.1:$PG_PORT (log: $STATE/pg.log)"
    fi
    PGPASSWORD=stagewise "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U stagewise -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'stagewise'" | grep -q 1 \
        || PGPASSWORD=stagewise "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U stagewise stagewise \
        || fail "PostgreSQL on 127.0.0.1:$PG_PORT: cannot create the database 'stagewise'"
    echo "export STAGEWISE_TEST_POSTGRES_URL=postgresql://stagewise:stagewise@127.0.0.1:$PG_PORT/stagewise"
fi

if wants chromium; then
    chromium --version >/dev/null 2>&1 || fail "Chromium is installed but does not run (chromium --version)"
    echo "export STAGEWISE_TEST_CHROMIUM=$(command -v chromium)"
fi

echo "export STAGEWISE_REQUIRE_SERVICES=1"
