#!/bin/sh
# testdb.sh starts the local PostgreSQL cluster (if it is not running) and
# creates the role and database the postgres store's tests use. It is
# idempotent: run it as often as you like. It must run as root (it switches to
# the postgres user). On success it prints one line, the DSN to export as
# GLTOKEN_TEST_POSTGRES_DSN, and nothing else on stdout:
#
#   export GLTOKEN_TEST_POSTGRES_DSN="$(internal/postgres/testdb.sh)"
#
# Overrides: PG_VERSION (15), PG_CLUSTER (main), PG_ROLE (gltoken),
# PG_PASSWORD (gltoken), PG_DATABASE (gltoken_test).
set -eu

version=${PG_VERSION:-15}
cluster=${PG_CLUSTER:-main}
role=${PG_ROLE:-gltoken}
password=${PG_PASSWORD:-gltoken}
database=${PG_DATABASE:-gltoken_test}

# Progress and errors go to stderr; stdout carries only the DSN.
log() { echo "testdb.sh: $*" >&2; }

case $role$database in
*[!A-Za-z0-9_]*) log "role and database names must be [A-Za-z0-9_]"; exit 1 ;;
esac
case $password in
*"'"*) log "the password must not contain a single quote"; exit 1 ;;
esac

if ! pg_ctlcluster "$version" "$cluster" status >/dev/null 2>&1; then
	log "starting PostgreSQL $version/$cluster"
	pg_ctlcluster "$version" "$cluster" start >&2
fi

port=$(pg_conftool -s "$version" "$cluster" show port 2>/dev/null || echo 5432)

psql_admin() { su postgres -c "psql -p $port -X -q -v ON_ERROR_STOP=1 -tA $*"; }

# Wait until the server accepts connections (start can return before that).
i=0
until su postgres -c "pg_isready -q -p $port" >/dev/null 2>&1; do
	i=$((i + 1))
	if [ "$i" -ge 60 ]; then
		log "PostgreSQL did not become ready on port $port"
		exit 1
	fi
	sleep 0.5
done

if [ "$(psql_admin "-c \"SELECT 1 FROM pg_roles WHERE rolname = '$role'\"")" != 1 ]; then
	log "creating role $role"
	psql_admin "-c \"CREATE ROLE $role LOGIN PASSWORD '$password' SUPERUSER\"" >&2
else
	# An older run may have set another password: make the printed DSN true.
	psql_admin "-c \"ALTER ROLE $role LOGIN PASSWORD '$password'\"" >&2
fi
if [ "$(psql_admin "-c \"SELECT 1 FROM pg_database WHERE datname = '$database'\"")" != 1 ]; then
	log "creating database $database"
	su postgres -c "createdb -p $port -O $role $database" >&2
fi

echo "postgres://$role:$password@127.0.0.1:$port/$database?sslmode=disable"
