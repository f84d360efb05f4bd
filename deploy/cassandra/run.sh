#!/usr/bin/env bash
# A local Apache Cassandra 5.0 cluster without Docker, for trying the
# ScyllaDB backend on a laptop and for CI's cluster suite (README,
# "ScyllaDB"). Cassandra is a real CQL server the `scylla` driver speaks
# to; what is ScyllaDB's alone (the shard-aware port, tablets) is not
# exercised by it.
#
#   run.sh start [--nodes N] [--dir DIR]   fetch Cassandra once, start N nodes
#                                          (those that ran before together,
#                                          after the seed)
#   run.sh stop [--dir DIR]                stop every node (SIGTERM, then SIGKILL)
#   run.sh kill K [--no-flush] [--dir DIR] flush node K's schema, then SIGKILL it
#                                          (counting from 1); --no-flush: at once,
#                                          the schema flushed before (below)
#   run.sh flush-schema [K] [--dir DIR]    write node K's schema to disk
#                                          (nodetool), or every running node's
#   run.sh start-node K [--dir DIR]        start node K again, wait for CQL
#   run.sh status [--dir DIR]              each node: pid, and whether CQL answers
#   run.sh nodes [--dir DIR]               the TILLSTREAM_SCYLLA_NODES line
#
# Node K listens on 127.0.0.K (all of 127/8 is loopback on Linux), port
# 9042 for CQL and 7000 between nodes, and JMX (nodetool) on
# 127.0.0.1:720K; 127.0.0.1 is the seed. `start`
# prints `TILLSTREAM_SCYLLA_NODES=127.0.0.1:9042,...` as its last line.
#
# Environment:
#   TILLSTREAM_CASSANDRA_DIR    the cluster's directory (default
#                               $XDG_STATE_HOME/tillstream/cassandra, else
#                               ~/.local/state/tillstream/cassandra)
#   TILLSTREAM_CASSANDRA_CACHE  the jars (default ~/.cache/tillstream/cassandra-5.0)
#   TILLSTREAM_CASSANDRA_HEAP   heap per node (default 768m)
#   JAVA_HOME                   a Java 11 or 17; otherwise one is looked for
#   CASSANDRA_START_TIMEOUT_S   how long a node may take to answer CQL (default 180)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
state_home="${XDG_STATE_HOME:-$HOME/.local/state}"
dir="${TILLSTREAM_CASSANDRA_DIR:-$state_home/tillstream/cassandra}"
cache="${TILLSTREAM_CASSANDRA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tillstream/cassandra-5.0}"
heap="${TILLSTREAM_CASSANDRA_HEAP:-768m}"
start_timeout="${CASSANDRA_START_TIMEOUT_S:-180}"
cql_port=9042

say() { echo "run.sh: $*" >&2; }
die() {
    say "$*"
    exit 1
}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

# --- arguments ---------------------------------------------------------------
cmd="${1:-}"
[ -n "$cmd" ] || {
    usage
    exit 2
}
shift
nodes=1
node_k=""
flush=yes
while [ $# -gt 0 ]; do
    case "$1" in
    --nodes)
        nodes="${2:?--nodes needs a number}"
        shift 2
        ;;
    --nodes=*)
        nodes="${1#*=}"
        shift
        ;;
    --dir)
        dir="${2:?--dir needs a directory}"
        shift 2
        ;;
    --dir=*)
        dir="${1#*=}"
        shift
        ;;
    --no-flush)
        flush=no
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    [0-9]*)
        node_k="$1"
        shift
        ;;
    *) die "unknown argument '$1' (run.sh --help)" ;;
    esac
done
case "$nodes" in '' | *[!0-9]*) die "--nodes takes a number from 1 to 9, not '$nodes'" ;; esac
[ "$nodes" -ge 1 ] && [ "$nodes" -le 9 ] || die "--nodes takes a number from 1 to 9, not '$nodes'"

# --- Java --------------------------------------------------------------------
# Cassandra 5.0 runs on Java 11 and 17; newer JVMs refuse its security
# manager call, so a newer `java` on PATH is passed over.
java_major() { "$1" -version 2>&1 | sed -n 's/.*version "\([0-9]*\)[."].*/\1/p' | head -n1; }
find_java() {
    local c
    for c in ${JAVA_HOME:+"$JAVA_HOME/bin/java"} /usr/lib/jvm/java-17-openjdk-*/bin/java \
        /usr/lib/jvm/java-11-openjdk-*/bin/java /usr/lib/jvm/*17*/bin/java "$(command -v java || true)"; do
        [ -x "$c" ] || continue
        case "$(java_major "$c")" in 11 | 17)
            echo "$c"
            return 0
            ;;
        esac
    done
    return 1
}

# --- the jars ----------------------------------------------------------------
fetch_jars() {
    if [ -f "$cache/.complete" ]; then
        return 0
    fi
    command -v mvn >/dev/null || die "Maven (mvn) is needed once, to fetch Cassandra's jars into $cache (Debian: apt-get install maven)"
    say "fetching Cassandra 5.0 and its dependencies from Maven Central into $cache (once)"
    mkdir -p "$cache"
    rm -rf "$cache/lib.partial"
    mvn -q -B -f "$here/pom.xml" \
        org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
        -DoutputDirectory="$cache/lib.partial" -DincludeScope=runtime >&2 ||
        die "Maven could not fetch Cassandra (see above)"
    rm -rf "$cache/lib"
    mv "$cache/lib.partial" "$cache/lib"
    touch "$cache/.complete"
}

# --- one node ----------------------------------------------------------------
node_dir() { echo "$dir/node$1"; }
node_ip() { echo "127.0.0.$1"; }

cql_answers() {
    # A TCP connect to the CQL port: Cassandra opens it last in start-up.
    (exec 3<>"/dev/tcp/$(node_ip "$1")/$cql_port") 2>/dev/null
}

node_pid() {
    local f
    f="$(node_dir "$1")/pid"
    [ -f "$f" ] || return 1
    local pid
    pid="$(cat "$f")"
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

write_config() {
    local k="$1" d ip
    d="$(node_dir "$k")"
    ip="$(node_ip "$k")"
    mkdir -p "$d/conf" "$d/data" "$d/commitlog" "$d/saved_caches" "$d/hints" "$d/cdc_raw" "$d/logs" "$d/tmp" "$d/triggers"
    # Only keys Cassandra 5.0 knows: it refuses unknown ones.
    cat >"$d/conf/cassandra.yaml" <<EOF
cluster_name: tillstream-local
num_tokens: 16
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:7000"
listen_address: $ip
rpc_address: $ip
storage_port: 7000
native_transport_port: $cql_port
start_native_transport: true
auto_bootstrap: false
auto_snapshot: false
data_file_directories:
  - $d/data
commitlog_directory: $d/commitlog
saved_caches_directory: $d/saved_caches
hints_directory: $d/hints
cdc_raw_directory: $d/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10000ms
commitlog_segment_size: 8MiB
concurrent_reads: 8
concurrent_writes: 16
concurrent_counter_writes: 4
concurrent_materialized_view_writes: 4
concurrent_compactors: 1
memtable_heap_space: 96MiB
memtable_offheap_space: 96MiB
key_cache_size: 16MiB
paxos_variant: v2
storage_compatibility_mode: NONE
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
EOF
    cat >"$d/conf/logback.xml" <<EOF
<configuration>
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>$d/logs/system.log</file>
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
EOF
}

start_node() {
    launch_node "$1"
    wait_for_cql "$1"
}

# Starts node K's JVM unless it runs, without waiting for it.
launch_node() {
    local k="$1" d ip java pid
    d="$(node_dir "$k")"
    ip="$(node_ip "$k")"
    if pid="$(node_pid "$k")"; then
        say "node $k is already running (pid $pid)"
    else
        [ -f "$d/conf/cassandra.yaml" ] || write_config "$k"
        java="$(find_java)" || die "no Java 11 or 17 found: Cassandra 5.0 needs one (Debian: apt-get install openjdk-17-jre-headless), or set JAVA_HOME"
        local jamm
        jamm="$(ls "$cache"/lib/jamm-*.jar 2>/dev/null | head -n1)"
        [ -n "$jamm" ] || die "jamm is missing from $cache/lib: remove $cache and start again"
        say "starting node $k on $ip (logs: $d/logs/system.log)"
        # The flags of Cassandra's conf/jvm17-server.options that a node
        # needs on Java 17 (module access for its off-heap and reflection
        # code), a small heap, and JMX on loopback only, for nodetool.
        # flush_local_schema_changes=false, as Cassandra's own test suite
        # runs: a schema change is not flushed to sstables at once. A
        # keyspace of 20 tables took 13-34 s to create with the flush here
        # (2026-11-30), 5-7 s without, and the tests make one each. The
        # cost: the commit log holds the change, but a restarted node
        # reads its schema before it replays the log, so after a SIGKILL
        # it drops its rows of a table the disk did not know ("Skipped 20
        # mutations from unknown CF"), acknowledged writes included. So
        # `kill` flushes the schema first (flush_schema).
        setsid "$java" \
            -Xms"$heap" -Xmx"$heap" -Xss256k -XX:+UseG1GC -XX:+ParallelRefProcEnabled \
            -XX:MaxTenuringThreshold=1 -XX:G1HeapRegionSize=4m -XX:MaxGCPauseMillis=300 \
            -XX:+ExitOnOutOfMemoryError \
            -Djdk.attach.allowAttachSelf=true \
            --add-exports java.base/jdk.internal.misc=ALL-UNNAMED \
            --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED \
            --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED \
            --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED \
            --add-exports java.sql/java.sql=ALL-UNNAMED \
            --add-exports java.base/java.lang.ref=ALL-UNNAMED \
            --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED \
            --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED \
            --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED \
            --add-opens java.base/java.lang.module=ALL-UNNAMED \
            --add-opens java.base/jdk.internal.loader=ALL-UNNAMED \
            --add-opens java.base/jdk.internal.ref=ALL-UNNAMED \
            --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED \
            --add-opens java.base/jdk.internal.math=ALL-UNNAMED \
            --add-opens java.base/jdk.internal.module=ALL-UNNAMED \
            --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED \
            --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED \
            --add-opens java.base/sun.nio.ch=ALL-UNNAMED \
            --add-opens java.base/java.io=ALL-UNNAMED \
            --add-opens java.base/java.lang.reflect=ALL-UNNAMED \
            --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED \
            --add-opens java.base/java.lang=ALL-UNNAMED \
            --add-opens java.base/java.util=ALL-UNNAMED \
            -Dio.netty.tryReflectionSetAccessible=true \
            -Dio.netty.allocator.useCacheForAllThreads=true -Dio.netty.allocator.maxOrder=11 \
            -Djava.net.preferIPv4Stack=true \
            -javaagent:"$jamm" \
            -Djna.tmpdir="$d/tmp" -Djava.io.tmpdir="$d/tmp" \
            -Dcassandra-foreground=yes \
            -Dcassandra.config="file://$d/conf/cassandra.yaml" \
            -Dcassandra.storagedir="$d" \
            -Dcassandra.logdir="$d/logs" \
            -Dlogback.configurationFile="$d/conf/logback.xml" \
            -Dcassandra.skip_wait_for_gossip_to_settle=0 \
            -Dcassandra.test.flush_local_schema_changes=false \
            -Dcassandra.ring_delay_ms=1000 \
            -Dcassandra.jmx.local.port="$(jmx_port "$k")" \
            -Dcassandra.superuser_setup_delay_ms=0 -Dcassandra.triggers_dir="$d/triggers" \
            -cp "$cache/lib/*" \
            org.apache.cassandra.service.CassandraDaemon \
            >"$d/logs/stdout.log" 2>&1 </dev/null &
        echo $! >"$d/pid"
    fi
}

jmx_port() { echo $((7200 + $1)); }

# Writes node K's schema tables to sstables (see the flag above): a node
# killed afterwards knows its tables when it replays its commit log.
flush_schema() {
    local k="$1" java
    java="$(find_java)" || die "no Java 11 or 17 found for nodetool"
    # nodetool's own Java 17 access flags (Cassandra's jvm17-clients.options);
    # its stdout is its client library's debug log.
    "$java" -Xmx128m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
        --add-exports java.base/sun.nio.ch=ALL-UNNAMED --add-opens java.base/sun.nio.ch=ALL-UNNAMED \
        --add-exports java.base/jdk.internal.misc=ALL-UNNAMED \
        --add-exports java.base/jdk.internal.ref=ALL-UNNAMED --add-opens java.base/java.nio=ALL-UNNAMED \
        -cp "$cache/lib/*" \
        org.apache.cassandra.tools.NodeTool -h 127.0.0.1 -p "$(jmx_port "$k")" \
        flush system_schema >/dev/null ||
        die "nodetool could not flush node $k's schema (JMX on 127.0.0.1:$(jmx_port "$k")); a node started by an older run.sh has no JMX: stop and start it"
}

wait_for_cql() {
    local k="$1" d waited=0
    d="$(node_dir "$k")"
    until cql_answers "$k"; do
        if ! node_pid "$k" >/dev/null; then
            say "node $k exited during start-up; the end of its logs:"
            tail -n 30 "$d/logs/system.log" "$d/logs/stdout.log" >&2 2>/dev/null || true
            exit 1
        fi
        if [ "$waited" -ge "$start_timeout" ]; then
            say "node $k did not answer CQL on $(node_ip "$k"):$cql_port within ${start_timeout}s; see $d/logs/system.log"
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    say "node $k answers CQL on $(node_ip "$k"):$cql_port"
}

known_nodes() {
    local k count=0
    for k in 1 2 3 4 5 6 7 8 9; do
        [ -d "$(node_dir "$k")/conf" ] && count=$k
    done
    echo "$count"
}

nodes_line() {
    local n="$1" k list=""
    for k in $(seq 1 "$n"); do
        list="$list${list:+,}$(node_ip "$k"):$cql_port"
    done
    echo "TILLSTREAM_SCYLLA_NODES=$list"
}

# Waits for node K to exit after a SIGTERM (sent by the caller), and
# SIGKILLs it after 30 s.
stop_node() {
    local k="$1" pid waited=0
    pid="$(node_pid "$k")" || return 0
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$waited" -ge 30 ]; then
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 1
        waited=$((waited + 1))
    done
    rm -f "$(node_dir "$k")/pid"
    say "node $k stopped"
}

need_k() {
    case "$node_k" in '' | *[!0-9]*) die "$cmd needs a node number K (1 for 127.0.0.1)" ;; esac
    [ -d "$(node_dir "$node_k")/conf" ] || die "node $node_k has never been started in $dir"
}

case "$cmd" in
start)
    fetch_jars
    mkdir -p "$dir"
    # A new node after the ones before it answer: a node joining while
    # another is still starting can race it for tokens. Nodes that have
    # run before (their tokens saved) start together, once the seed
    # (node 1) answers: a node that finds no peer to gossip with gives up
    # its start. A whole cluster restarts in the time of the seed and its
    # slowest other node, not of all of them in a row.
    for k in $(seq 1 "$nodes"); do
        if [ "$k" -gt 1 ] && [ -f "$(node_dir "$k")/conf/cassandra.yaml" ]; then
            launch_node "$k"
        else
            start_node "$k"
        fi
    done
    for k in $(seq 1 "$nodes"); do
        wait_for_cql "$k"
    done
    nodes_line "$nodes"
    ;;
start-node)
    need_k
    fetch_jars
    start_node "$node_k"
    ;;
flush-schema)
    if [ -n "$node_k" ]; then
        need_k
        node_pid "$node_k" >/dev/null || die "node $node_k is not running"
        flush_schema "$node_k"
        say "node $node_k's schema is on disk"
    else
        # Every running node at once: a nodetool JVM takes seconds to
        # start, more on a loaded machine.
        flushing=""
        for k in $(seq 1 "$(known_nodes)"); do
            if node_pid "$k" >/dev/null; then
                flush_schema "$k" &
                flushing="$flushing $!"
            fi
        done
        for p in $flushing; do wait "$p" || die "a schema flush failed"; done
        say "the running nodes' schema is on disk"
    fi
    ;;
kill)
    need_k
    pid="$(node_pid "$node_k")" || die "node $node_k is not running"
    if [ "$flush" = yes ]; then flush_schema "$node_k"; fi
    kill -KILL "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    rm -f "$(node_dir "$node_k")/pid"
    say "node $node_k killed (SIGKILL, pid $pid)"
    ;;
stop)
    # All at once, then each waited for.
    for k in $(seq "$(known_nodes)" -1 1); do
        if pid="$(node_pid "$k")"; then kill -TERM "$pid" 2>/dev/null || true; fi
    done
    for k in $(seq "$(known_nodes)" -1 1); do
        stop_node "$k"
    done
    ;;
status)
    n="$(known_nodes)"
    [ "$n" -gt 0 ] || {
        echo "no cluster in $dir"
        exit 0
    }
    for k in $(seq 1 "$n"); do
        if pid="$(node_pid "$k")"; then
            if cql_answers "$k"; then state="up, CQL answers"; else state="starting"; fi
            echo "node $k $(node_ip "$k") pid $pid: $state"
        else
            echo "node $k $(node_ip "$k"): down"
        fi
    done
    ;;
nodes)
    nodes_line "$(known_nodes)"
    ;;
*)
    usage
    exit 2
    ;;
esac
