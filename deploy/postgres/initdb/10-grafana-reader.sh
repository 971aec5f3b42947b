#!/bin/sh
# The PostgreSQL image runs this once, when it initialises an empty data volume (files in
# /docker-entrypoint-initdb.d, see docker-compose.yml); on an existing volume it never runs.
#
# It creates grafana_reader, the role Grafana's PostgreSQL data source logs in with
# (deploy/grafana/provisioning/datasources/latigo.yaml). Grafana runs whatever SQL a
# dashboard editor types, so its role may only read: SELECT on the tables that the
# Latigo role ($POSTGRES_USER) creates later, through its migrations, and nothing else.
#
# The password comes from GRAFANA_DB_PASSWORD, passed to psql as a variable and quoted by
# psql itself (:'name'), so no value can break out of the string.
set -eu

psql --no-psqlrc -v ON_ERROR_STOP=1 \
    --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    --set reader_password="$GRAFANA_DB_PASSWORD" \
    --set owner="$POSTGRES_USER" --set dbname="$POSTGRES_DB" <<'SQL'
CREATE ROLE grafana_reader LOGIN PASSWORD :'reader_password';
GRANT CONNECT ON DATABASE :"dbname" TO grafana_reader;
GRANT USAGE ON SCHEMA public TO grafana_reader;
-- tables that exist already, and every table the Latigo role creates from now on
GRANT SELECT ON ALL TABLES IN SCHEMA public TO grafana_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT SELECT ON TABLES TO grafana_reader;
SQL
