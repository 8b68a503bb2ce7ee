-- The example's data in PostgreSQL, as the user the Warehouse names:
--   cd examples/checkout-experiment-postgres && psql -h localhost -U tally -d warehouse -f load.sql
CREATE SCHEMA IF NOT EXISTS checkout;
DROP TABLE IF EXISTS checkout.exposures, checkout.purchases, checkout.sessions, checkout.users;
CREATE TABLE checkout.exposures (user_id text, ts timestamptz, variant text, platform text);
CREATE TABLE checkout.purchases (user_id text, ts timestamptz, amount double precision, items bigint);
CREATE TABLE checkout.sessions (user_id text, ts timestamptz, duration_s bigint);
CREATE TABLE checkout.users (user_id text, country text, platform text);
\copy checkout.exposures FROM PROGRAM 'gzip -dc ../checkout-experiment/data/exposures.csv.gz' WITH (FORMAT csv, HEADER)
\copy checkout.purchases FROM PROGRAM 'gzip -dc ../checkout-experiment/data/purchases.csv.gz' WITH (FORMAT csv, HEADER)
\copy checkout.sessions FROM PROGRAM 'gzip -dc ../checkout-experiment/data/sessions.csv.gz' WITH (FORMAT csv, HEADER)
\copy checkout.users FROM PROGRAM 'gzip -dc ../checkout-experiment/data/users.csv.gz' WITH (FORMAT csv, HEADER)
