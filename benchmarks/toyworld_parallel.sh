#!/usr/bin/env bash
# Run several `python -m pipelines.toyworld` commands at once on one GPU, each killed after DEADLINE seconds (default
# 560, so the packing below always happens inside a 10-minute device call), then pack each run's output directory
# into $OUT/NAME.tgz (one file per run: the device tool returns files of at most 16 MiB) and all logs into
# $OUT/logs.tgz. Usage:
#   DEADLINE=560 bash benchmarks/toyworld_parallel.sh NAME 'vae --family wan ... --out @' NAME2 'train ... --out @' ...
# '@' in a command stands for /tmp/toyworld-runs/NAME. Processes sharing one GPU time-slice it (see docs/BENCHMARKS.md).
set -u
work=/tmp/toyworld-runs; mkdir -p "$work"
names=()
while [ $# -ge 2 ]; do
  name=$1; cmd=${2//@/$work/$name}; shift 2; names+=("$name")
  echo "[$name] python -m pipelines.toyworld $cmd" | tee "$work/$name.log"
  # shellcheck disable=SC2086
  timeout "${DEADLINE:-560}" python3 -m pipelines.toyworld $cmd >>"$work/$name.log" 2>&1 &
done
wait
for name in "${names[@]}"; do
  echo "=== $name"; tr '\r' '\n' <"$work/$name.log" | grep -v "it/s\]\|^\s*$" | tail -8
  [ -d "$work/$name" ] && tar czf "${OUT:-/tmp}/$name.tgz" -C "$work" "$name"
done
tar czf "${OUT:-/tmp}/logs.tgz" -C "$work" $(cd "$work" && ls ./*.log)
