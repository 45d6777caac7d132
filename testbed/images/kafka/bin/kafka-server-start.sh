#!/bin/bash
# The stand-in's kafka-server-start.sh: runs kafka.Kafka with the jars in /opt/kafka/libs.
[[ $# -ge 1 ]] || { echo "usage: $0 server.properties" >&2; exit 1; }
base_dir=$(cd "$(dirname "$0")/.." && pwd)
: "${KAFKA_HEAP_OPTS:=-Xmx1G -Xms1G}"
: "${KAFKA_JVM_PERFORMANCE_OPTS:=-server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true}"
: "${KAFKA_LOG4J_OPTS:=-Dlog4j2.configurationFile=$base_dir/config/log4j2.properties}"
# shellcheck disable=SC2086 # the *_OPTS variables hold several JVM options each
exec java $KAFKA_HEAP_OPTS $KAFKA_JVM_PERFORMANCE_OPTS $KAFKA_LOG4J_OPTS ${KAFKA_OPTS:-} \
  -cp "$base_dir/libs/*" kafka.Kafka "$@"
