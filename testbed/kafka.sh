#!/usr/bin/env bash
# Test-bed component: a real Apache Kafka broker.
#
# One node in KRaft mode (combined broker + controller) on 127.0.0.1, run from the jars
# that testbed/kafka/pom.xml pins, with the settings a single-node user sets (replication
# factor and min ISR 1 for offsets and transactions, no initial rebalance delay).
#
# Usage: kafka.sh install|up|down|stop|start|status
#   up     starts a broker on a fresh data directory (formatted anew)
#   down   stops the broker
#   stop   stops the broker and keeps its data directory, for `start`
#   start  starts the broker again on the data directory it had (a broker restart that
#          keeps its topics, offsets and transactions, as a real outage does)
# Ports: SHOPSTREAM_KAFKA_PORT (default 19092), SHOPSTREAM_KAFKA_CONTROLLER_PORT (19093).
# SHOPSTREAM_KAFKA_EXTRA_PROPERTIES: lines added to server.properties (a test that needs a
# broker of its own, e.g. one that refuses to delete topics, starts a second one with its
# own ports and SHOPSTREAM_TESTBED_STATE).
set -euo pipefail
# shellcheck source=testbed/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT=${SHOPSTREAM_KAFKA_PORT:-19092}
CONTROLLER_PORT=${SHOPSTREAM_KAFKA_CONTROLLER_PORT:-19093}
LIBS=$CACHE/kafka/libs
DIR=$STATE/kafka
LOG=$DIR/server.log
PIDFILE=$DIR/kafka.pid

install() {
  local digest
  digest=$(stamp_of "$TESTBED_DIR/kafka/pom.xml")
  if up_to_date kafka "$digest" "$LIBS"; then
    log "kafka: up to date"
    return 0
  fi
  command -v java >/dev/null || die kafka "java not found: install a JDK 17 or newer"
  command -v mvn >/dev/null || die kafka "mvn not found: install Maven"
  log "kafka: copying broker jars from Maven Central"
  mkdir -p "$CACHE/logs"
  rm -rf "$LIBS"
  mvn -B -q -f "$TESTBED_DIR/kafka/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$LIBS" >"$CACHE/logs/kafka-install.log" 2>&1 \
    || die kafka "mvn dependency:copy-dependencies failed" "$CACHE/logs/kafka-install.log"
  mark_installed kafka "$digest"
  log "kafka: installed $(find "$LIBS" -name '*.jar' | wc -l) jars"
}

java_() {
  java -Xms256m -Xmx512m -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$TESTBED_DIR/kafka/log4j2.properties" \
    -Dkafka.logs.file="$LOG" -cp "$LIBS/*" "$@"
}

# A real Metadata request (API key 3, v4, all topics) over a plain socket; ready when the
# broker answers it with our correlation id.
metadata_ok() {
  local reply
  reply=$(timeout 3 bash -c '
    exec 3<>/dev/tcp/127.0.0.1/'"$PORT"' || exit 1
    printf "\x00\x00\x00\x10\x00\x03\x00\x04\x00\x00\x00\x2a\x00\x01t\xff\xff\xff\xff\x00" >&3
    head -c 8 <&3 | od -An -tx1' 2>/dev/null) || return 1
  [[ $(echo "$reply" | tr -d ' \n') == ????????0000002a ]]
}

write_config() {
  cat >"$DIR/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$DIR/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
min.insync.replicas=1
group.initial.rebalance.delay.ms=0
PROPS
  if [[ -n ${SHOPSTREAM_KAFKA_EXTRA_PROPERTIES:-} ]]; then
    printf '%s\n' "$SHOPSTREAM_KAFKA_EXTRA_PROPERTIES" >>"$DIR/server.properties"
  fi
}

up() {
  if pid_alive "$PIDFILE" && metadata_ok; then
    log "kafka: already up on 127.0.0.1:$PORT"
    return 0
  fi
  [[ -d $LIBS ]] || die kafka "not installed: run 'make testbed' first"
  stop_pid kafka "$PIDFILE"
  port_free
  rm -rf "$DIR"
  mkdir -p "$DIR/data"
  write_config
  log "kafka: formatting storage"
  java_ kafka.tools.StorageTool format -t "$(java_ kafka.tools.StorageTool random-uuid)" \
    -c "$DIR/server.properties" >"$DIR/format.log" 2>&1 \
    || die kafka "storage format failed" "$DIR/format.log"
  launch
}

# The broker again on the data directory of the last `up`, not formatted: its topics,
# committed offsets and transaction state are what they were at `stop`.
start() {
  if pid_alive "$PIDFILE" && metadata_ok; then
    log "kafka: already up on 127.0.0.1:$PORT"
    return 0
  fi
  [[ -d $LIBS ]] || die kafka "not installed: run 'make testbed' first"
  [[ -f $DIR/data/meta.properties ]] \
    || die kafka "no formatted data directory in $DIR/data: run 'kafka.sh up' first"
  stop_pid kafka "$PIDFILE"
  port_free
  # The properties of the last `up` (same ports, same extra settings); the data stays.
  [[ -f $DIR/server.properties ]] || write_config
  launch
}

port_free() {
  if metadata_ok; then
    die kafka "port $PORT already serves a broker not started by the test bed: stop it or set SHOPSTREAM_KAFKA_PORT"
  fi
}

# Starts the broker on $DIR/server.properties and waits until it answers Metadata.
launch() {
  log "kafka: starting on 127.0.0.1:$PORT"
  setsid nohup java -Xms256m -Xmx512m -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$TESTBED_DIR/kafka/log4j2.properties" \
    -Dkafka.logs.file="$LOG" -cp "$LIBS/*" kafka.Kafka "$DIR/server.properties" \
    >>"$DIR/stdout.log" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  local deadline=$((SECONDS + 90))
  until metadata_ok; do
    pid_alive "$PIDFILE" || die kafka "broker exited during start" "$LOG"
    ((SECONDS < deadline)) || die kafka "no metadata response after 90 s" "$LOG"
    sleep 0.5
  done
  log "kafka: up on 127.0.0.1:$PORT (log $LOG)"
}

down() {
  stop_pid kafka "$PIDFILE"
  log "kafka: down"
}

stop() {
  stop_pid kafka "$PIDFILE"
  log "kafka: stopped; data kept in $DIR/data for 'kafka.sh start'"
}

status() {
  if pid_alive "$PIDFILE" && metadata_ok; then
    echo "kafka: up on 127.0.0.1:$PORT"
  else
    echo "kafka: down"
    return 1
  fi
}

case ${1:-} in
  install | up | down | stop | start | status) "$1" ;;
  *) echo "usage: $0 install|up|down|stop|start|status" >&2; exit 2 ;;
esac
