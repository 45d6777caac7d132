#!/bin/bash
# The stand-in's kafka-storage.sh: kafka.tools.StorageTool (random-uuid, format, info).
base_dir=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck disable=SC2086 # KAFKA_TOOL_HEAP_OPTS holds several JVM options
exec java ${KAFKA_TOOL_HEAP_OPTS:--Xmx256m} -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
  -Dlog4j2.configurationFile="$base_dir/config/tools-log4j2.properties" \
  -cp "$base_dir/libs/*" kafka.tools.StorageTool "$@"
