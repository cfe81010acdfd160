-- The schema of `shardwire demo` (and of the shards in docker-compose.yml).
--
-- It is created on EVERY shard directly (until shardwire broadcasts DDL itself). The
-- sample rows are not in this file: `shardwire demo` inserts them through the proxy, one
-- row per statement, so the routing layer places each row by its shard key.
--
-- Distribution (see the demo's topology.yaml):
--   countries  reference table: a full copy on every shard
--   users      hash-sharded on id
--   orders     hash-sharded on user_id, so an order lives on the same shard as its user
--              (same key type, same bucket function): user/order joins stay on one shard.
-- Row ids are assigned by the application (no sequences): a sequence would be per shard.

CREATE TABLE countries (
    code  char(2) PRIMARY KEY,
    name  text    NOT NULL
);

CREATE TABLE users (
    id            bigint      PRIMARY KEY,
    name          text        NOT NULL,
    email         text        NOT NULL,
    country_code  char(2)     NOT NULL,
    created_at    timestamptz NOT NULL
);

CREATE TABLE orders (
    id          bigint        PRIMARY KEY,
    user_id     bigint        NOT NULL,
    amount      numeric(10,2) NOT NULL,
    status      text          NOT NULL,
    created_at  timestamptz   NOT NULL
);

CREATE INDEX orders_user_id_idx ON orders (user_id);
