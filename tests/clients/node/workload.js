// A scripted node-postgres workload for tests/integration/test_client_node.py.
//
// Usage: TZ=UTC NODE_PATH=.../node_modules node workload.js HOST PORT USER PASSWORD
//
// Prints one JSON line per observation, [key, value], so that the test can compare a run
// through shardwire with a run against Postgres directly. Keys that start with "info." are
// facts about the target (they may differ between the two runs) and are checked
// separately. The script recreates its own tables (node_*) first, so both runs see the same
// data. Any unexpected error ends it with exit code 1.
'use strict';

const pg = require('pg');
const Cursor = require('pg-cursor');

const [host, port, user, password] = process.argv.slice(2);
const config = { host, port: Number(port), user, password, database: 'app' };

function out(key, value) {
  process.stdout.write(JSON.stringify([key, value === undefined ? null : value]) + '\n');
}

function describeError(err) {
  const fields = ['severity', 'code', 'message', 'detail', 'hint', 'position', 'where',
    'schema', 'table', 'column', 'constraint', 'dataType'];
  const res = { name: err.constructor.name };
  for (const f of fields) res[f] = err[f] === undefined ? null : err[f];
  return res;
}

async function expectError(key, fn) {
  try {
    const res = await fn();
    out(key, { noError: res && res.rows ? res.rows : res });
  } catch (err) {
    if (err.code === undefined) throw err; // not a server error: a real failure
    out(key, describeError(err));
  }
}

function fields(res) {
  return res.fields.map((f) => [f.name, f.dataTypeID]);
}

async function withClient(fn) {
  const client = new pg.Client(config);
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

async function setup() {
  await withClient(async (c) => {
    await c.query(`
      DROP TABLE IF EXISTS node_items, node_tx, node_types CASCADE;
      CREATE TABLE node_items (id int PRIMARY KEY, name text NOT NULL, price numeric);
      INSERT INTO node_items SELECT g, 'item ' || g, g * 0.25 FROM generate_series(1, 500) g;
      CREATE TABLE node_tx (id int PRIMARY KEY, who text);
      CREATE TABLE node_types (id int PRIMARY KEY, n numeric, ts timestamptz, d date,
        u uuid, j jsonb, ia int[], ta text[], b bytea, flag boolean, f8 float8, i8 bigint,
        iv interval);
    `);
  });
}

async function simpleQueries() {
  await withClient(async (c) => {
    const res = await c.query('SELECT id, name, price FROM node_items WHERE id % 97 = 0 ORDER BY id');
    out('simple.rows', res.rows);
    out('simple.fields', fields(res));
    out('simple.command', [res.command, res.rowCount]);
    // several statements in one simple Query: one result each
    const multi = await c.query("SELECT 1 AS a; UPDATE node_items SET price = price WHERE id < 3; "
      + "SELECT 'two' AS b, 2.5::float8 AS c");
    out('simple.multi', multi.map((r) => [r.command, r.rowCount, r.rows]));
    const empty = await c.query('');
    out('simple.empty', [empty.command, empty.rowCount, empty.rows]);
    await c.query("SET application_name = 'node workload'");
    for (let i = 0; i < 3; i++) {
      const s = await c.query("SELECT current_setting('application_name') AS a, "
        + "current_setting('DateStyle') AS ds");
      out(`simple.settings.${i}`, s.rows);
    }
    const arr = await c.query({ text: 'SELECT 1 AS x, 2 AS y', rowMode: 'array' });
    out('simple.array_mode', arr.rows);
  });
}

async function parameterized() {
  await withClient(async (c) => {
    for (let i = 1; i <= 8; i++) {
      const r = await c.query('SELECT name, price, $2::text || $1::int AS tag FROM node_items WHERE id = $1::int',
        [i * 11, 'p']);
      out(`param.${i}`, r.rows);
    }
    const r = await c.query('SELECT $1::int + $2::int AS s, $3::text IS NULL AS n', [1, 2, null]);
    out('param.nulls', r.rows);
    const upd = await c.query('UPDATE node_items SET name = name WHERE id BETWEEN $1 AND $2', [10, 19]);
    out('param.update', [upd.command, upd.rowCount]);
  });
}

// Named statements executed many times across a pg.Pool of 4 clients: over a proxy pool of 2
// server connections they are re-prepared on whichever server a client gets.
async function namedAcrossPool() {
  const pool = new pg.Pool({ ...config, max: 4 });
  const tasks = [];
  for (let t = 0; t < 24; t++) {
    tasks.push((async () => {
      const res = [];
      for (let round = 0; round < 5; round++) {
        const i = 1 + ((round * 7 + t * 13) % 500);
        const a = await pool.query({ name: 'by_id', text: 'SELECT name, price FROM node_items WHERE id = $1', values: [i] });
        const b = await pool.query({ name: 'count_le', text: 'SELECT count(*) AS n FROM node_items WHERE id <= $1', values: [i] });
        const d = await pool.query({ name: 'calc', text: "SELECT $1::int * 2 AS twice, $2::text || 'x' AS s", values: [i, `t${t}`] });
        res.push([a.rows, b.rows, d.rows]);
      }
      return res;
    })());
  }
  const results = await Promise.all(tasks);
  results.forEach((r, t) => out(`named.task${t}`, r));
  // named statements in transactions on pool clients, interleaved with the others
  const tx = [];
  for (let t = 0; t < 8; t++) {
    tx.push((async () => {
      const client = await pool.connect();
      try {
        await client.query('BEGIN');
        const r1 = await client.query({ name: 'count_le', text: 'SELECT count(*) AS n FROM node_items WHERE id <= $1', values: [t + 1] });
        const r2 = await client.query({ name: 'by_id', text: 'SELECT name, price FROM node_items WHERE id = $1', values: [t + 1] });
        const prep = await client.query("SELECT count(*) FILTER (WHERE name = 'by_id') AS client_names, "
          + "count(*) FILTER (WHERE name LIKE 'sw\\_%') AS shardwire_names FROM pg_prepared_statements");
        await client.query('COMMIT');
        return [r1.rows, r2.rows, prep.rows[0]];
      } finally {
        client.release();
      }
    })());
  }
  const txResults = await Promise.all(tx);
  txResults.forEach((r, t) => {
    out(`named.tx${t}`, [r[0], r[1]]);
    out(`info.named.prepared${t}`, r[2]);
  });
  await pool.end();
}

async function transactions() {
  const a = new pg.Client(config);
  const b = new pg.Client(config);
  await a.connect();
  await b.connect();
  try {
    await a.query('BEGIN');
    await a.query("INSERT INTO node_tx VALUES (1, 'a')");
    out('tx.before_commit', (await b.query('SELECT count(*) AS n FROM node_tx')).rows);
    await a.query('COMMIT');
    out('tx.after_commit', (await b.query('SELECT who FROM node_tx WHERE id = 1')).rows);
    await a.query('BEGIN');
    await a.query("INSERT INTO node_tx VALUES (2, 'rolled back')");
    await a.query('ROLLBACK');
    await a.query('BEGIN');
    await a.query('INSERT INTO node_tx VALUES ($1, $2)', [3, 'a']);
    await a.query('SAVEPOINT sp1');
    await expectError('tx.savepoint_error', () => a.query('INSERT INTO node_tx VALUES ($1, $2)', [3, 'dup']));
    await expectError('tx.aborted', () => a.query('SELECT 1'));
    await a.query('ROLLBACK TO SAVEPOINT sp1');
    await a.query('INSERT INTO node_tx VALUES ($1, $2)', [4, 'a']);
    await a.query('SAVEPOINT sp2');
    await a.query('INSERT INTO node_tx VALUES ($1, $2)', [5, 'undone']);
    await a.query('ROLLBACK TO sp2');
    await a.query('RELEASE sp2');
    await a.query('COMMIT');
    out('tx.savepoints', (await b.query('SELECT array_agg(id ORDER BY id) AS ids FROM node_tx')).rows);
    await a.query('BEGIN');
    await a.query("INSERT INTO node_tx VALUES (6, 'lost')");
    await expectError('tx.div0', () => a.query('SELECT 1/0'));
    await expectError('tx.div0_aborted', () => a.query({ name: 'in_failed', text: 'SELECT $1::int', values: [2] }));
    const rb = await a.query('COMMIT'); // a failed transaction's COMMIT reports ROLLBACK
    out('tx.failed_commit', [rb.command]);
    await a.query('BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY');
    out('tx.isolation', (await a.query('SHOW transaction_isolation')).rows);
    await expectError('tx.readonly', () => a.query("INSERT INTO node_tx VALUES (7, 'ro')"));
    await a.query('ROLLBACK');
    out('tx.isolation_other', (await b.query('SHOW transaction_isolation')).rows);
    out('tx.count', (await b.query('SELECT count(*) AS n FROM node_tx')).rows);
    // the named statement whose first use failed (in an aborted transaction) works now
    out('tx.named_after', (await a.query({ name: 'in_failed', text: 'SELECT $1::int', values: [2] })).rows);
  } finally {
    await a.end();
    await b.end();
  }
}

async function types() {
  await withClient(async (c) => {
    for (let i = 1; i <= 6; i++) {
      await c.query({
        name: 'ins_types',
        text: 'INSERT INTO node_types VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)',
        values: [i, `-12345678901234567890.12345678${i}`,
          new Date(Date.UTC(2024, 1, 29, 12, 34, 56, 789 + i)), `1999-12-${20 + i}`,
          `a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1${i}`, { k: [1, i, { x: null }], s: 'ü☃' },
          [i, null, i * 2], ['a', 'b c', null, '"q"', '{}'], Buffer.from([0, i, 0xff, 10]),
          i % 2 === 0, 1 / i, i === 3 ? null : (2n ** BigInt(40 + i)).toString(),
          `${i} days 04:05:06.7`],
      });
    }
    const r = await c.query('SELECT * FROM node_types ORDER BY id');
    out('types.rows', r.rows);
    out('types.fields', fields(r));
    const s = await c.query("SELECT 1::int2 AS a, 3000000000::int8 AS b, 1.5::float4 AS c, "
      + "'NaN'::numeric AS d, '12:34:56.789'::time AS e, "
      + "'1 year 2 mons 3 days 04:05:06.7'::interval AS f, '{\"k\": 1}'::json AS g, "
      + "'192.168.1.0/24'::cidr AS h, int4range(1, 10) AS i, 'x'::name AS j, 42::oid AS k, "
      + "NULL::text AS l, ARRAY[[1,2],[3,4]] AS m, '\\x00ff'::bytea AS n, "
      + "'2024-02-29 12:34:56'::timestamp AS o, true AS p, 'infinity'::timestamptz AS q");
    out('types.simple', s.rows);
    out('types.simple_fields', fields(s));
    const e = await c.query('SELECT $1::numeric AS n, $2::timestamptz AS ts, $3::jsonb AS j, '
      + '$4::int[] AS a, $5::bytea AS b, $6::bool AS f, $7::uuid AS u',
    ['-0.000000000000000000001', new Date(Date.UTC(2020, 0, 2, 3, 4, 5, 678)),
      JSON.stringify({ a: [1, 'b'] }), [1, 2, 3], Buffer.from('abc'), true,
      'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11']);
    out('types.echo', e.rows);
  });
}

async function errors() {
  await withClient(async (c) => {
    await expectError('error.syntax', () => c.query('SELEC 1'));
    await expectError('error.syntax_param', () => c.query('SELECT $1::int FRM x', [1]));
    await expectError('error.undefined_table', () => c.query('SELECT * FROM node_nope'));
    await expectError('error.undefined_column', () => c.query('SELECT nope FROM node_items WHERE id = $1', [1]));
    await expectError('error.unique', () => c.query("INSERT INTO node_items VALUES (1, 'dup', 0)"));
    await expectError('error.not_null', () => c.query('INSERT INTO node_items (id) VALUES ($1)', [9999]));
    await expectError('error.raise', () => c.query("DO $$BEGIN RAISE EXCEPTION 'custom %', 42 "
      + "USING DETAIL = 'the detail', HINT = 'the hint', ERRCODE = 'P0042'; END$$"));
    await expectError('error.bad_param', () => c.query('SELECT $1::int', ['abc']));
    for (let i = 0; i < 6; i++) {
      await expectError(`error.named.${i}`,
        () => c.query({ name: 'div', text: 'SELECT 10 / $1 AS q', values: [i % 3] }));
    }
    // a named statement whose Parse fails: not kept, by Postgres nor by pg
    await expectError('error.named_parse', () => c.query({ name: 'bad', text: 'SELEC $1', values: [1] }));
    await expectError('error.named_parse_again', () => c.query({ name: 'bad', text: 'SELEC $1', values: [1] }));
    out('error.after', (await c.query('SELECT $1::text AS t', ['still fine'])).rows);
  });
}

async function cursors() {
  await withClient(async (c) => {
    await c.query('BEGIN');
    const cursor = c.query(new Cursor('SELECT id, name, price FROM node_items WHERE id <= $1 ORDER BY id', [321]));
    const read = (n) => new Promise((resolve, reject) => cursor.read(n, (err, rows) => (err ? reject(err) : resolve(rows))));
    let n = 0;
    let sum = 0;
    const sample = [];
    for (;;) {
      const rows = await read(37);
      if (rows.length === 0) break;
      for (const r of rows) {
        n += 1;
        sum += r.id;
        if (n % 50 === 1) sample.push(r);
      }
    }
    await new Promise((resolve, reject) => cursor.close((err) => (err ? reject(err) : resolve())));
    out('cursor.count', n);
    out('cursor.sum', sum);
    out('cursor.sample', sample);
    // a cursor closed early, then another statement in the same transaction
    const early = c.query(new Cursor('SELECT g FROM generate_series(1, 1000) g'));
    const first = await new Promise((resolve, reject) => early.read(25, (err, rows) => (err ? reject(err) : resolve(rows))));
    out('cursor.partial', first[first.length - 1]);
    await new Promise((resolve, reject) => early.close((err) => (err ? reject(err) : resolve())));
    out('cursor.after', (await c.query('SELECT count(*) AS n FROM node_items')).rows);
    await c.query('COMMIT');
  });
}

async function main() {
  const t0 = Date.now();
  await setup();
  await simpleQueries();
  await parameterized();
  await namedAcrossPool();
  await transactions();
  await types();
  await errors();
  await cursors();
  out('info.elapsed_ms', Date.now() - t0);
  out('done', 'ok');
}

main().catch((err) => {
  process.stderr.write(`workload failed: ${err && err.stack ? err.stack : err}\n`);
  if (err && err.code) process.stderr.write(`${JSON.stringify(describeError(err))}\n`);
  process.exit(1);
});
