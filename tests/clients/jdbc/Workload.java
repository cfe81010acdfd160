// A scripted pgjdbc workload for tests/integration/test_client_jdbc.py.
//
// Usage: java -Duser.timezone=UTC -cp postgresql.jar:classes Workload JDBC_URL USER PASSWORD
//
// Prints one line per observation, "key<TAB>value" (value escaped: \\ \t \n), so that the
// test can compare a run through shardwire with a run against Postgres directly. Keys that
// start with "info." are facts about the target (they may differ between the two runs) and
// are checked separately. The program recreates its own tables (jdbc_*) first, so the two
// runs see the same data. Any unexpected exception ends it with exit code 1.

import java.math.BigDecimal;
import java.sql.Array;
import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.Date;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Savepoint;
import java.sql.Statement;
import java.sql.Types;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Properties;
import java.util.UUID;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;

import org.postgresql.PGStatement;
import org.postgresql.util.PSQLException;
import org.postgresql.util.ServerErrorMessage;

public class Workload {
    static String url;
    static Properties props = new Properties();

    static String esc(Object v) {
        String s = String.valueOf(v);
        return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n");
    }

    static synchronized void out(String key, Object value) {
        System.out.println(key + "\t" + esc(value));
    }

    static Connection connect(String extra) throws SQLException {
        return DriverManager.getConnection(url + extra, props);
    }

    static String row(ResultSet rs) throws SQLException {
        int n = rs.getMetaData().getColumnCount();
        StringBuilder sb = new StringBuilder();
        for (int i = 1; i <= n; i++) {
            if (i > 1) sb.append('|');
            if (rs.getMetaData().getColumnType(i) == Types.BINARY) {
                // getString of bytea depends on text vs binary transfer: compare the bytes
                byte[] b = rs.getBytes(i);
                sb.append(b == null ? "null" : "\\x" + HexFormat.of().formatHex(b));
            } else {
                sb.append(rs.getString(i));
            }
        }
        return sb.toString();
    }

    static List<String> rows(ResultSet rs) throws SQLException {
        List<String> all = new ArrayList<>();
        while (rs.next()) all.add(row(rs));
        return all;
    }

    static String error(SQLException e) {
        StringBuilder sb = new StringBuilder();
        sb.append(e.getClass().getSimpleName()).append(" state=").append(e.getSQLState())
          .append(" message=").append(e.getMessage());
        if (e instanceof PSQLException p && p.getServerErrorMessage() != null) {
            ServerErrorMessage m = p.getServerErrorMessage();
            sb.append(" severity=").append(m.getSeverity()).append(" detail=").append(m.getDetail())
              .append(" hint=").append(m.getHint()).append(" position=").append(m.getPosition())
              .append(" table=").append(m.getTable()).append(" constraint=")
              .append(m.getConstraint());
        }
        SQLException next = e.getNextException();
        if (next != null && next != e) sb.append(" next=[").append(error(next)).append(']');
        return sb.toString();
    }

    interface Step { void run() throws Exception; }

    /** Runs a step that must fail with an SQLException; prints its details. */
    static void expectError(String key, Step step) throws Exception {
        try {
            step.run();
            out(key, "NO ERROR");
        } catch (SQLException e) {
            out(key, error(e));
        }
    }

    public static void main(String[] args) throws Exception {
        url = args[0];
        props.setProperty("user", args[1]);
        props.setProperty("password", args[2]);
        long t0 = System.nanoTime();
        setup();
        plainStatements();
        preparedConcurrent();
        batches();
        transactions();
        types();
        errors();
        cursorFetch();
        metadata();
        schemaChange();
        out("info.elapsed_ms", (System.nanoTime() - t0) / 1_000_000);
        out("done", "ok");
    }

    static void setup() throws SQLException {
        try (Connection c = connect(""); Statement s = c.createStatement()) {
            s.execute("DROP TABLE IF EXISTS jdbc_items, jdbc_batch, jdbc_tx, jdbc_types, "
                      + "jdbc_alter CASCADE");
            s.execute("CREATE TABLE jdbc_alter (id int, a text)");
            s.execute("INSERT INTO jdbc_alter VALUES (1, 'one')");
            s.execute("CREATE TABLE jdbc_items (id int PRIMARY KEY, name text NOT NULL, "
                      + "price numeric)");
            s.execute("INSERT INTO jdbc_items SELECT g, 'item ' || g, g * 0.25 "
                      + "FROM generate_series(1, 500) g");
            s.execute("CREATE TABLE jdbc_batch (id int PRIMARY KEY, v text, n numeric)");
            s.execute("CREATE TABLE jdbc_tx (id int PRIMARY KEY, who text)");
            s.execute("CREATE TABLE jdbc_types (id int PRIMARY KEY, n numeric, ts timestamptz, "
                      + "d date, u uuid, j jsonb, ia int[], ta text[], b bytea, flag boolean, "
                      + "f8 float8, i8 bigint)");
        }
    }

    static void plainStatements() throws SQLException {
        try (Connection c = connect(""); Statement s = c.createStatement()) {
            out("plain.valid", c.isValid(5));
            out("plain.autocommit", c.getAutoCommit());
            try (ResultSet rs = s.executeQuery("SELECT id, name, price FROM jdbc_items "
                                               + "WHERE id % 97 = 0 ORDER BY id")) {
                out("plain.rows", rows(rs));
            }
            // several results from one simple-protocol string
            boolean isRs = s.execute("SELECT 1 AS a; UPDATE jdbc_items SET price = price "
                                     + "WHERE id < 3; SELECT 'two' AS b, 2.5::float8");
            StringBuilder sb = new StringBuilder();
            while (true) {
                if (isRs) {
                    try (ResultSet rs = s.getResultSet()) { sb.append(rows(rs)); }
                } else if (s.getUpdateCount() != -1) {
                    sb.append("count=").append(s.getUpdateCount());
                } else {
                    break;
                }
                sb.append(';');
                isRs = s.getMoreResults();
            }
            out("plain.multi", sb);
            out("plain.update", s.executeUpdate("UPDATE jdbc_items SET name = name "
                                                + "WHERE id BETWEEN 10 AND 19"));
            s.execute("SET application_name = 'jdbc workload'");
            try (ResultSet rs = s.executeQuery("SHOW application_name")) {
                out("plain.show", rows(rs));
            }
            // an empty statement and a comment-only one
            s.execute("");
            out("plain.empty_update_count", s.getUpdateCount());
            out("plain.valid_again", c.isValid(5));
            // SET via the plain statement survives pooled checkouts
            for (int i = 0; i < 3; i++) {
                try (ResultSet rs = s.executeQuery("SELECT current_setting('application_name'),"
                                                   + " current_setting('extra_float_digits')")) {
                    out("plain.settings." + i, rows(rs));
                }
            }
        }
    }

    /** Prepared statements run more often than prepareThreshold, by several connections at
     * once, so pgjdbc names them (S_1, ...) and they land on different server connections. */
    static void preparedConcurrent() throws Exception {
        int clients = 5;
        ExecutorService pool = Executors.newFixedThreadPool(clients);
        List<Future<List<String>>> futures = new ArrayList<>();
        for (int t = 0; t < clients; t++) {
            final int n = t;
            futures.add(pool.submit(() -> preparedClient(n)));
        }
        for (int t = 0; t < clients; t++) {
            List<String> res = futures.get(t).get();
            out("prepared.client" + t, res);
        }
        pool.shutdown();
    }

    static List<String> preparedClient(int n) throws Exception {
        List<String> res = new ArrayList<>();
        try (Connection c = connect("")) {
            PreparedStatement byId = c.prepareStatement("SELECT name, price FROM jdbc_items "
                                                        + "WHERE id = ?");
            PreparedStatement count = c.prepareStatement("SELECT count(*) FROM jdbc_items "
                                                         + "WHERE id <= ?");
            PreparedStatement calc = c.prepareStatement("SELECT ?::int * 2, ? || 'x', "
                                                        + "?::numeric + 1");
            long sum = 0;
            StringBuilder sb = new StringBuilder();
            for (int round = 0; round < 15; round++) {
                int i = 1 + (round * 7 + n * 13) % 500;
                byId.setInt(1, i);
                try (ResultSet rs = byId.executeQuery()) {
                    rs.next();
                    sb.append(rs.getString(1)).append(',').append(rs.getBigDecimal(2)).append(';');
                }
                count.setInt(1, i);
                try (ResultSet rs = count.executeQuery()) {
                    rs.next();
                    sum += rs.getLong(1);
                }
                calc.setInt(1, i);
                calc.setString(2, "c" + n);
                calc.setBigDecimal(3, new BigDecimal("0.5"));
                try (ResultSet rs = calc.executeQuery()) {
                    rs.next();
                    sb.append(row(rs)).append(';');
                }
                if (round % 4 == 3) {  // some inside a transaction, interleaved
                    c.setAutoCommit(false);
                    count.setInt(1, i);
                    try (ResultSet rs = count.executeQuery()) { rs.next(); sum += rs.getLong(1); }
                    byId.setInt(1, i);
                    try (ResultSet rs = byId.executeQuery()) { rs.next(); sb.append(rs.getString(1)); }
                    c.commit();
                    c.setAutoCommit(true);
                }
                Thread.sleep(1);  // let the clients take turns on the server connections
            }
            res.add(sb.toString());
            res.add("sum=" + sum);
            res.add("server_prepared=" + byId.unwrap(PGStatement.class).isUseServerPrepare()
                    + "," + calc.unwrap(PGStatement.class).isUseServerPrepare());
            if (n == 0) {
                // what the server holds, seen in the same transaction as a use of the statement
                c.setAutoCommit(false);
                byId.setInt(1, 1);
                byId.executeQuery().close();
                try (Statement s = c.createStatement();
                     ResultSet rs = s.executeQuery(
                         "SELECT count(*) FILTER (WHERE name LIKE 'S\\_%'), "
                         + "count(*) FILTER (WHERE name LIKE 'sw\\_%') "
                         + "FROM pg_prepared_statements")) {
                    rs.next();
                    out("info.prepared.pgjdbc_names", rs.getLong(1));
                    out("info.prepared.shardwire_names", rs.getLong(2));
                }
                c.commit();
                c.setAutoCommit(true);
            }
            byId.close();
            count.close();
            calc.close();
            // closed statements (Close 'S' at the next round trip) and then new ones
            PreparedStatement again = c.prepareStatement("SELECT name FROM jdbc_items WHERE id = ?");
            for (int i = 1; i <= 7; i++) {
                again.setInt(1, i);
                try (ResultSet rs = again.executeQuery()) { rs.next(); res.add(rs.getString(1)); }
            }
        }
        return res;
    }

    static void batches() throws SQLException {
        for (String mode : new String[] {"plain", "rewrite"}) {
            String extra = mode.equals("rewrite") ? "?reWriteBatchedInserts=true" : "";
            int base = mode.equals("rewrite") ? 10000 : 0;
            try (Connection c = connect(extra)) {
                PreparedStatement ins = c.prepareStatement(
                    "INSERT INTO jdbc_batch (id, v, n) VALUES (?, ?, ?)");
                for (int i = 1; i <= 300; i++) {
                    ins.setInt(1, base + i);
                    ins.setString(2, "v" + i);
                    ins.setBigDecimal(3, new BigDecimal(i).movePointLeft(2));
                    ins.addBatch();
                }
                int[] counts = ins.executeBatch();
                out("batch." + mode + ".counts", java.util.Arrays.toString(counts));
                // a second batch in a transaction, with a duplicate key half way
                c.setAutoCommit(false);
                for (int i = 301; i <= 320; i++) {
                    ins.setInt(1, base + (i == 310 ? 5 : i));
                    ins.setString(2, "w" + i);
                    ins.setBigDecimal(3, BigDecimal.ONE);
                    ins.addBatch();
                }
                try {
                    ins.executeBatch();
                    out("batch." + mode + ".dup", "NO ERROR");
                } catch (BatchUpdateException e) {
                    out("batch." + mode + ".dup", error(e));
                }
                c.rollback();
                c.setAutoCommit(true);
                // a Statement batch (simple protocol)
                try (Statement s = c.createStatement()) {
                    s.addBatch("UPDATE jdbc_batch SET v = v || '!' WHERE id = " + (base + 1));
                    s.addBatch("DELETE FROM jdbc_batch WHERE id = " + (base + 2));
                    s.addBatch("UPDATE jdbc_batch SET v = 'none' WHERE id = -1");
                    out("batch." + mode + ".stmt", java.util.Arrays.toString(s.executeBatch()));
                    try (ResultSet rs = s.executeQuery(
                            "SELECT count(*), sum(n), min(v), max(v) FROM jdbc_batch "
                            + "WHERE id BETWEEN " + base + " AND " + (base + 9999))) {
                        out("batch." + mode + ".check", rows(rs));
                    }
                }
            }
        }
    }

    static void transactions() throws Exception {
        try (Connection a = connect(""); Connection b = connect("")) {
            a.setAutoCommit(false);
            try (Statement sa = a.createStatement(); Statement sb = b.createStatement()) {
                sa.executeUpdate("INSERT INTO jdbc_tx VALUES (1, 'a')");
                // b does not see it before commit (b runs on another server connection)
                try (ResultSet rs = sb.executeQuery("SELECT count(*) FROM jdbc_tx")) {
                    out("tx.before_commit", rows(rs));
                }
                a.commit();
                try (ResultSet rs = sb.executeQuery("SELECT who FROM jdbc_tx WHERE id = 1")) {
                    out("tx.after_commit", rows(rs));
                }
                sa.executeUpdate("INSERT INTO jdbc_tx VALUES (2, 'rolled back')");
                a.rollback();
                // savepoints: an error rolled back to a savepoint, the transaction goes on
                sa.executeUpdate("INSERT INTO jdbc_tx VALUES (3, 'a')");
                Savepoint sp = a.setSavepoint();
                expectError("tx.savepoint_error",
                            () -> sa.executeUpdate("INSERT INTO jdbc_tx VALUES (3, 'dup')"));
                expectError("tx.aborted", () -> sa.executeQuery("SELECT 1"));
                a.rollback(sp);
                Savepoint named = a.setSavepoint("named one");
                sa.executeUpdate("INSERT INTO jdbc_tx VALUES (4, 'a')");
                a.releaseSavepoint(named);
                Savepoint sp2 = a.setSavepoint();
                sa.executeUpdate("INSERT INTO jdbc_tx VALUES (5, 'undone')");
                a.rollback(sp2);
                a.commit();
                try (ResultSet rs = sb.executeQuery("SELECT array_agg(id ORDER BY id) FROM jdbc_tx")) {
                    out("tx.savepoints", rows(rs));
                }
                // an error without a savepoint aborts the transaction until rollback
                sa.executeUpdate("INSERT INTO jdbc_tx VALUES (6, 'lost')");
                expectError("tx.div0", () -> sa.executeQuery("SELECT 1/0"));
                expectError("tx.div0_aborted", () -> sa.executeQuery("SELECT 2"));
                a.rollback();
                // isolation level and read-only, per transaction
                a.setTransactionIsolation(Connection.TRANSACTION_SERIALIZABLE);
                a.setReadOnly(true);
                try (ResultSet rs = sa.executeQuery("SHOW transaction_isolation")) {
                    out("tx.isolation", rows(rs));
                }
                expectError("tx.readonly", () -> sa.executeUpdate("INSERT INTO jdbc_tx VALUES (7, 'ro')"));
                a.rollback();
                a.setReadOnly(false);
                a.setTransactionIsolation(Connection.TRANSACTION_READ_COMMITTED);
                try (ResultSet rs = sb.executeQuery("SHOW transaction_isolation")) {
                    out("tx.isolation_other", rows(rs));
                }
                a.setAutoCommit(true);
                sa.executeUpdate("INSERT INTO jdbc_tx VALUES (8, 'auto')");
                try (ResultSet rs = sb.executeQuery("SELECT who FROM jdbc_tx WHERE id = 8")) {
                    out("tx.autocommit", rows(rs));
                }
            }
            // autosave=always: pgjdbc wraps each statement in a savepoint of its own
            try (Connection c = connect("?autosave=always"); Statement s = c.createStatement()) {
                c.setAutoCommit(false);
                s.executeUpdate("INSERT INTO jdbc_tx VALUES (20, 'autosave')");
                expectError("tx.autosave_error", () -> s.executeQuery("SELECT 1/0"));
                PreparedStatement p = c.prepareStatement("SELECT who FROM jdbc_tx WHERE id = ?");
                for (int i = 0; i < 7; i++) {
                    p.setInt(1, 20);
                    try (ResultSet rs = p.executeQuery()) { out("tx.autosave_after." + i, rows(rs)); }
                }
                c.commit();
            }
        }
    }

    static void types() throws SQLException {
        try (Connection c = connect("")) {
            PreparedStatement ins = c.prepareStatement(
                "INSERT INTO jdbc_types (id, n, ts, d, u, j, ia, ta, b, flag, f8, i8) "
                + "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
            for (int i = 1; i <= 8; i++) {  // past prepareThreshold: binary transfer too
                ins.setInt(1, i);
                ins.setBigDecimal(2, new BigDecimal("12345678901234567890.123456789").negate()
                                  .add(BigDecimal.valueOf(i)));
                ins.setObject(3, OffsetDateTime.of(2024, 2, 29, 12, 34, 56, 789_000_000 + i,
                                                   ZoneOffset.ofHoursMinutes(5, 30)));
                ins.setDate(4, Date.valueOf("1999-12-" + (20 + i)));
                ins.setObject(5, new UUID(0x1234L, i));
                ins.setObject(6, "{\"k\": [1, " + i + ", {\"x\": null}], \"s\": \"ü☃\"}", Types.OTHER);
                ins.setArray(7, c.createArrayOf("int4", new Integer[] {i, null, i * 2}));
                ins.setArray(8, c.createArrayOf("text", new String[] {"a", "b c", null, "\"q\""}));
                ins.setBytes(9, new byte[] {0, (byte) i, (byte) 0xff, 10});
                ins.setBoolean(10, i % 2 == 0);
                ins.setDouble(11, 1.0 / i);
                if (i == 3) ins.setNull(12, Types.BIGINT); else ins.setLong(12, 1L << (30 + i));
                ins.executeUpdate();
            }
            PreparedStatement sel = c.prepareStatement("SELECT * FROM jdbc_types WHERE id = ?");
            for (int i = 1; i <= 8; i++) {
                sel.setInt(1, i);
                try (ResultSet rs = sel.executeQuery()) {
                    rs.next();
                    StringBuilder sb = new StringBuilder(row(rs));
                    sb.append(" | obj: ").append(rs.getBigDecimal("n"))
                      .append(' ').append(rs.getObject("ts", OffsetDateTime.class))
                      .append(' ').append(rs.getDate("d"))
                      .append(' ').append(rs.getObject("u", UUID.class))
                      .append(' ').append(rs.getString("j"))
                      .append(' ').append(java.util.Arrays.toString((Object[]) rs.getArray("ia").getArray()))
                      .append(' ').append(java.util.Arrays.toString((Object[]) rs.getArray("ta").getArray()))
                      .append(' ').append(HexFormat.of().formatHex(rs.getBytes("b")))
                      .append(' ').append(rs.getBoolean("flag"))
                      .append(' ').append(rs.getDouble("f8"))
                      .append(' ').append(rs.getLong("i8")).append(rs.wasNull() ? "(null)" : "");
                    out("types.row" + i, sb);
                }
            }
            try (Statement s = c.createStatement();
                 ResultSet rs = s.executeQuery(
                     "SELECT 1::int2, 3000000000::int8, 1.5::float4, 'NaN'::numeric, "
                     + "'12:34:56.789'::time, '1 year 2 mons 3 days 04:05:06.7'::interval, "
                     + "'{\"k\": 1}'::json, '192.168.1.0/24'::cidr, int4range(1, 10), "
                     + "'x'::name, 42::oid, NULL::text, ARRAY[[1,2],[3,4]]")) {
                rs.next();
                out("types.simple", row(rs));
                ResultSetMetaData md = rs.getMetaData();
                StringBuilder sb = new StringBuilder();
                for (int i = 1; i <= md.getColumnCount(); i++) {
                    sb.append(md.getColumnLabel(i)).append(':').append(md.getColumnTypeName(i))
                      .append(':').append(md.getColumnType(i)).append(' ');
                }
                out("types.metadata", sb);
            }
            // the same parameters round-tripped through a server-prepared statement
            PreparedStatement echo = c.prepareStatement(
                "SELECT ?::numeric, ?::timestamptz, ?::date, ?::uuid, ?::jsonb, ?::int[], ?::bytea, ?::bool");
            for (int i = 0; i < 7; i++) {
                echo.setBigDecimal(1, new BigDecimal("-0.000000000000000000001"));
                echo.setObject(2, OffsetDateTime.of(2020, 1, 2, 3, 4, 5, 678_901_000, ZoneOffset.UTC));
                echo.setDate(3, Date.valueOf("2024-02-29"));
                echo.setObject(4, UUID.fromString("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"));
                echo.setObject(5, "{\"a\": [1, \"b\"]}", Types.OTHER);
                echo.setArray(6, c.createArrayOf("int4", new Integer[] {1, 2, 3}));
                echo.setBytes(7, new byte[] {1, 2, 3});
                echo.setBoolean(8, true);
                try (ResultSet rs = echo.executeQuery()) {
                    rs.next();
                    out("types.echo." + i, row(rs));
                }
            }
        }
    }

    static void errors() throws Exception {
        try (Connection c = connect(""); Statement s = c.createStatement()) {
            expectError("error.syntax", () -> s.executeQuery("SELEC 1"));
            expectError("error.undefined_table", () -> s.executeQuery("SELECT * FROM jdbc_nope"));
            expectError("error.undefined_column",
                        () -> s.executeQuery("SELECT nope FROM jdbc_items"));
            expectError("error.unique", () -> s.executeUpdate(
                "INSERT INTO jdbc_items VALUES (1, 'dup', 0)"));
            expectError("error.not_null", () -> s.executeUpdate(
                "INSERT INTO jdbc_items (id) VALUES (9999)"));
            expectError("error.raise", () -> s.execute(
                "DO $$BEGIN RAISE EXCEPTION 'custom %', 42 USING DETAIL = 'the detail', "
                + "HINT = 'the hint', ERRCODE = 'P0042'; END$$"));
            PreparedStatement p = c.prepareStatement("SELECT 10 / ?");
            for (int i = 0; i < 7; i++) {  // unnamed, then named statement
                final int d = i % 3;
                p.setInt(1, d);
                expectError("error.prepared." + i, () -> {
                    try (ResultSet rs = p.executeQuery()) { rs.next(); out("error.value." + d, rs.getInt(1)); }
                });
            }
            expectError("error.bad_param", () -> {
                PreparedStatement q = c.prepareStatement("SELECT ?::int");
                q.setString(1, "abc");
                q.executeQuery();
            });
            try (ResultSet rs = s.executeQuery("SELECT 'still fine'")) {
                out("error.after", rows(rs));
            }
            out("error.valid", c.isValid(5));
        }
    }

    /** setFetchSize in a transaction: a named portal read in chunks (Execute with a row
     * limit, PortalSuspended), with other statements run in between. */
    static void cursorFetch() throws SQLException {
        try (Connection c = connect("")) {
            c.setAutoCommit(false);
            PreparedStatement p = c.prepareStatement(
                "SELECT id, name, price FROM jdbc_items WHERE id <= ? ORDER BY id");
            p.setFetchSize(37);
            p.setInt(1, 321);
            Statement other = c.createStatement();
            try (ResultSet rs = p.executeQuery()) {
                int n = 0;
                long sum = 0;
                StringBuilder sample = new StringBuilder();
                while (rs.next()) {
                    n++;
                    sum += rs.getInt(1);
                    if (n % 50 == 1) sample.append(row(rs)).append(';');
                    if (n == 100) {  // another query while the portal is suspended
                        try (ResultSet r2 = other.executeQuery("SELECT count(*) FROM jdbc_items")) {
                            out("cursor.interleaved", rows(r2));
                        }
                    }
                }
                out("cursor.count", n);
                out("cursor.sum", sum);
                out("cursor.sample", sample);
            }
            // a Statement with a fetch size too, stopped early (portal closed)
            other.setFetchSize(10);
            try (ResultSet rs = other.executeQuery("SELECT g FROM generate_series(1, 1000) g")) {
                for (int i = 0; i < 25; i++) rs.next();
                out("cursor.partial", rs.getInt(1));
            }
            c.commit();
            // again several times, so the statement becomes a named one
            for (int k = 0; k < 6; k++) {
                p.setInt(1, 40 + k);
                try (ResultSet rs = p.executeQuery()) {
                    out("cursor.repeat." + k, rows(rs).size());
                }
                c.commit();
            }
            c.setAutoCommit(true);
        }
    }

    /** A server-prepared SELECT * whose table changes shape: Postgres fails the next
     * execution ("cached plan must not change result type", 0A000); pgjdbc then prepares
     * the statement again (a new S_n name, the same text), which must work. */
    static void schemaChange() throws Exception {
        try (Connection c = connect(""); Statement s = c.createStatement()) {
            PreparedStatement p = c.prepareStatement("SELECT * FROM jdbc_alter WHERE id = ?");
            for (int i = 0; i < 6; i++) {
                p.setInt(1, 1);
                try (ResultSet rs = p.executeQuery()) { rs.next(); }
            }
            s.execute("ALTER TABLE jdbc_alter ADD COLUMN b int DEFAULT 7");
            for (int i = 0; i < 4; i++) {
                final int k = i;
                expectError("ddl.after_alter." + i, () -> {
                    p.setInt(1, 1);
                    try (ResultSet rs = p.executeQuery()) { out("ddl.rows." + k, rows(rs)); }
                });
            }
            // a new PreparedStatement with the same text
            PreparedStatement q = c.prepareStatement("SELECT * FROM jdbc_alter WHERE id = ?");
            for (int i = 0; i < 7; i++) {
                final int k = i;
                expectError("ddl.fresh." + i, () -> {
                    q.setInt(1, 1);
                    try (ResultSet rs = q.executeQuery()) { out("ddl.fresh_rows." + k, rows(rs)); }
                });
            }
        }
    }

    static void metadata() throws SQLException {
        try (Connection c = connect("")) {
            DatabaseMetaData md = c.getMetaData();
            out("meta.product", md.getDatabaseProductName() + " " + md.getDatabaseMajorVersion());
            out("info.meta.user", md.getUserName());
            try (ResultSet rs = md.getTables(null, "public", "jdbc\\_%", new String[] {"TABLE"})) {
                List<String> names = new ArrayList<>();
                while (rs.next()) names.add(rs.getString("TABLE_NAME") + ":" + rs.getString("TABLE_TYPE"));
                out("meta.tables", names);
            }
            try (ResultSet rs = md.getColumns(null, "public", "jdbc_types", null)) {
                List<String> cols = new ArrayList<>();
                while (rs.next()) cols.add(rs.getString("COLUMN_NAME") + ":" + rs.getString("TYPE_NAME")
                                           + ":" + rs.getInt("DATA_TYPE"));
                out("meta.columns", cols);
            }
            try (ResultSet rs = md.getPrimaryKeys(null, "public", "jdbc_items")) {
                out("meta.pk", rows(rs));
            }
            out("meta.valid", c.isValid(5));
        }
    }
}
