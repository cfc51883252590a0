#!/usr/bin/env bash
# Start the servers the tests need, on loopback, in a scratch folder: Redis and PostgreSQL
# (the runtime's context and checkpoint stores) and Chromium for the HTML diff page.
# Missing Debian packages are installed when running as root. Prints the environment the
# tests read (STAGEWISE_TEST_REDIS_URL, STAGEWISE_TEST_POSTGRES_URL, STAGEWISE_TEST_CHROMIUM),
# for `eval`. Servers already started by an earlier call are reused.
set -euo pipefail

STATE=${STAGEWISE_SERVICES_DIR:-/tmp/stagewise-test-services}
REDIS_PORT=${STAGEWISE_REDIS_PORT:-6391}
PG_PORT=${STAGEWISE_PG_PORT:-5441}
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
mkdir -p "$STATE"

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
[ -n "$PG_BIN" ] || missing+=(postgresql)
command -v chromium >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "installing ${missing[*]} (Debian packages)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
            || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; }
        PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    else
        echo "not root: cannot install ${missing[*]}; the tests that need them will be skipped" >&2
    fi
fi

if command -v redis-server >/dev/null; then
    if ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
        redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes --save "" --appendonly no \
            --dir "$STATE" --logfile "$STATE/redis.log" >&2
        for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
    fi
    echo "export STAGEWISE_TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
fi

if [ -n "$PG_BIN" ]; then
    DATA="$STATE/pg"
    # PostgreSQL refuses to run as root: the cluster belongs to the postgres user when we are root.
    as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi; }
    if [ ! -f "$DATA/PG_VERSION" ]; then
        mkdir -p "$DATA"
        [ "$(id -u)" = 0 ] && chown -R postgres "$STATE"
        echo stagewise > "$STATE/pgpass"
        [ "$(id -u)" = 0 ] && chown postgres "$STATE/pgpass"
        as_pg "'$PG_BIN/initdb' -D '$DATA' -U stagewise --pwfile='$STATE/pgpass' -A scram-sha-256 >/dev/null"
    fi
    if ! "$PG_BIN/pg_isready" -h 127.0.0.1 -p "$PG_PORT" >/dev/null 2>&1; then
        as_pg "'$PG_BIN/pg_ctl' -D '$DATA' -l '$STATE/pg.log' -w -o \"-p $PG_PORT -k '$STATE' -c listen_addresses=127.0.0.1\" start >/dev/null"
    fi
    PGPASSWORD=stagewise "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U stagewise -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'stagewise'" | grep -q 1 \
        || PGPASSWORD=stagewise "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U stagewise stagewise
    echo "export STAGEWISE_TEST_POSTGRES_URL=postgresql://stagewise:stagewise@127.0.0.1:$PG_PORT/stagewise"
fi

if command -v chromium >/dev/null; then
    echo "export STAGEWISE_TEST_CHROMIUM=$(command -v chromium)"
fi
