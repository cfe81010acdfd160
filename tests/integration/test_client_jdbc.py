"""pgjdbc, unchanged, through a transaction-pooling shardwire: results equal direct.

One Java program (tests/clients/jdbc/Workload.java) runs a scripted workload and prints
"key<TAB>value" lines; it runs once through a proxy with a pool of 2 server connections
and once against the shard directly, and the outputs must be equal. The workload covers
plain Statements, PreparedStatements past prepareThreshold (server-side S_n statements,
renamed by shardwire) on 5 concurrent connections, batches (also reWriteBatchedInserts),
transactions, savepoints and autosave, many types, errors, fetchSize cursors (portals read
in chunks) and DatabaseMetaData.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import (
    ProxyFactory,
    RunningProxy,
    assert_clean_log,
    assert_same_output,
)

SOURCE = Path(__file__).resolve().parents[1] / "clients" / "jdbc" / "Workload.java"
GET_JAR = ("pgjdbc (org.postgresql:postgresql 42.x) is needed in the local Maven repository: "
           "`mvn dependency:get -Dartifact=org.postgresql:postgresql:42.7.4` (or put the jar "
           "anywhere and set SHARDWIRE_PGJDBC_JAR=/path/to/postgresql-42.x.jar); "
           "java and javac 17+ are needed too (`apt-get install openjdk-17-jdk-headless`)")


def find_jar() -> Path:
    env = os.environ.get("SHARDWIRE_PGJDBC_JAR")
    if env:
        if not Path(env).is_file():
            pytest.fail(f"SHARDWIRE_PGJDBC_JAR={env} does not exist. {GET_JAR}", pytrace=False)
        return Path(env)
    repo = Path.home() / ".m2" / "repository" / "org" / "postgresql" / "postgresql"
    jars = sorted(repo.glob("42.*/postgresql-42.*.jar"),
                  key=lambda p: tuple(int(x) if x.isdigit() else 0
                                      for x in p.parent.name.split(".")))
    jars = [j for j in jars if not j.name.endswith(("-sources.jar", "-javadoc.jar"))]
    if not jars:
        pytest.fail(f"no pgjdbc jar under {repo}. {GET_JAR}", pytrace=False)
    return jars[-1]


@pytest.fixture(scope="module")
def classpath(tmp_path_factory: pytest.TempPathFactory) -> str:
    jar = find_jar()
    javac, java = shutil.which("javac"), shutil.which("java")
    if javac is None or java is None:
        pytest.fail(f"java/javac not found. {GET_JAR}", pytrace=False)
    classes = tmp_path_factory.mktemp("jdbc-classes")
    result = subprocess.run([javac, "-d", str(classes), "-cp", str(jar), str(SOURCE)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"javac failed:\n{result.stdout}{result.stderr}"
    return f"{jar}{os.pathsep}{classes}"


@pytest.fixture(scope="module")
def small(proxy_factory: ProxyFactory) -> RunningProxy:
    return proxy_factory(pool={"mode": "transaction", "size": 2, "connect_timeout": 3,
                               "checkout_timeout": 10, "shutdown_timeout": 5})


def unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            nxt = value[i + 1]
            out.append({"t": "\t", "n": "\n"}.get(nxt, nxt))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def run_workload(classpath: str, host: str, port: int, user: str,
                 password: str) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """Run the Java workload; return its compared lines (in order) and its info lines."""
    url = f"jdbc:postgresql://{host}:{port}/app"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "JAVA_TOOL"))}
    result = subprocess.run(
        ["java", "-Duser.timezone=UTC", "-Duser.language=en", "-Duser.country=US",
         "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto",
         "-cp", classpath, "Workload", url, user, password],
        capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, (f"workload against {url} failed ({result.returncode}):\n"
                                    f"{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    compared: list[tuple[str, str]] = []
    info: dict[str, str] = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition("\t")
        if key.startswith("info."):
            info[key] = unescape(value)
        else:
            compared.append((key, unescape(value)))
    return compared, info


def test_pgjdbc_workload_equals_direct(small: RunningProxy, direct_dsn: str,
                                       classpath: str) -> None:
    kv = dict(part.split("=", 1) for part in direct_dsn.split())
    since = len(small.log())
    got, got_info = run_workload(classpath, small.host, small.port, "app", "secret")
    want, want_info = run_workload(classpath, kv["host"], int(kv["port"]), kv["user"],
                                   kv["password"])
    assert_same_output(got, want)
    # the workload did what it meant to: server-side statements, errors, cursors
    values = dict(got)
    assert "server_prepared=true,true," in values["prepared.client0"]
    assert "state=22012" in values["error.prepared.6"]
    assert "state=23505" in values["batch.rewrite.dup"]
    assert values["cursor.count"] == "321"
    assert values["tx.savepoints"] == "[{1,3,4}]"
    assert values["meta.tables"] == ("[jdbc_alter:TABLE, jdbc_batch:TABLE, jdbc_items:TABLE, "
                                     "jdbc_tx:TABLE, jdbc_types:TABLE]")
    # after ALTER TABLE, pgjdbc's automatic re-prepare of a SELECT * works as direct
    assert values["ddl.rows.0"] == "[1|one|7]"
    assert values["ddl.fresh_rows.6"] == "[1|one|7]"
    # pgjdbc's statement names reach Postgres directly, never through shardwire
    assert int(want_info["info.prepared.pgjdbc_names"]) > 0
    assert got_info["info.prepared.pgjdbc_names"] == "0"
    assert int(got_info["info.prepared.shardwire_names"]) > 0
    assert got_info["info.meta.user"] == "app"
    assert_clean_log(small, since)
