#!/usr/bin/env bash
# The CI performance gate: instruction counts (valgrind's callgrind, which counts instructions,
# not seconds, so machine noise cannot move them) of every format's AVX2 matrix kernels at batch
# 1 and 16 and of one engine decode step at batch 1 and 16 on the default model, against
# bench/instructions.txt.
# Fails when any count grows more than 3%, naming it. A deliberate change refreshes the
# baseline:   tools/perf-gate.sh --update
set -euo pipefail
cd "$(dirname "$0")/.."
baseline=bench/instructions.txt
update=0; [ "${1:-}" = --update ] && update=1
command -v valgrind >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; }
cargo build -q --release -p rill-engine --example instr_probe
probe="$(realpath "${CARGO_TARGET_DIR:-target}")/release/examples/instr_probe"
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
count() { # name, probe args...
  local name=$1; shift
  local fn=measured_kernel; [ "$1" = step ] && fn=measured_step
  valgrind --tool=callgrind --callgrind-out-file="$out/$name" "--toggle-collect=*instr_probe::$fn*" \
    "$probe" "$@" >/dev/null 2>"$out/$name.log" || { cat "$out/$name.log" >&2; exit 1; }
  awk '/^(summary|totals):/ {print $2; exit}' "$out/$name"
}
results=()
for f in Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 IQ4_NL Q2_K Q3_K Q4_K Q5_K Q6_K IQ4_XS F16 BF16 F32; do
  for b in 1 16; do results+=("kernel_${f}_x$b $(count "k_${f}_$b" kernel "$f" "$b")"); done
done
# The engine steps take ~10 minutes under valgrind (the model load and prefill before the
# counted step run at valgrind speed): opt in with PERF_GATE_STEPS=1 (CI leaves them out).
if [ "${PERF_GATE_STEPS:-0}" = 1 ]; then
  model=${RILL_HOME:-$HOME/.cache/rill}/models/SmolLM2-135M-Instruct.Q4_1.gguf
  [ -f "$model" ] || cargo run -q -p rill -- pull >/dev/null
  for b in 1 16; do results+=("step_x$b $(count "s_$b" step "$model" "$b")"); done
fi
if [ $update = 1 ]; then
  kept=$( [ "${PERF_GATE_STEPS:-0}" = 1 ] || grep '^step_' "$baseline" || true)
  { echo "# instructions per probe (tools/perf-gate.sh --update; valgrind $(valgrind --version))"
    printf '%s\n' "${results[@]}"; [ -z "$kept" ] || echo "$kept"; } > "$baseline"
  echo "baseline written: $baseline"; exit 0
fi
fail=0
for r in "${results[@]}"; do
  set -- $r
  base=$(awk -v n="$1" '$1 == n {print $2}' "$baseline")
  if [ -z "$base" ]; then echo "NEW   $1 $2 (not in $baseline)"; continue; fi
  pct=$(awk -v a="$2" -v b="$base" 'BEGIN {printf "%+.2f", (a - b) * 100 / b}')
  if awk -v a="$2" -v b="$base" 'BEGIN {exit !(a > b * 1.03)}'; then
    echo "REGRESSION $1: $2 instructions vs $base in the baseline ($pct%)"; fail=1
  else
    echo "ok    $1: $2 ($pct%)"
  fi
done
exit $fail
