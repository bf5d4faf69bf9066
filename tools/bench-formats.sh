#!/usr/bin/env bash
# rill beside llama.cpp on the default model in every weight format (tools/requantize.sh makes
# the files), same machine, same threads, interleaved per format: prefill pp512 and decode tg64
# from `rill bench-engine` and `llama-bench`, plus rill's batched decode at 1/4/8/16/32.
# Prints one markdown row per format (BENCHMARKS.md keeps the table and this command). An
# argument that is a .gguf path benchmarks that file instead (e.g. Gemma 3 270M); GEN=128 sets
# the decode length. ROUNDS=N repeats each format's interleaved rill / llama-bench pair N times
# and reports the median of each number (this machine's speed drifts by +-30% over minutes).
#   tools/bench-formats.sh [FORMAT | FILE.gguf ...]
set -euo pipefail
cd "$(dirname "$0")/.."
home=${RILL_HOME:-$HOME/.cache/rill}
peer=${RILL_PEER_BIN:-$(../shared/tools/peer-llama-cpp.sh)}
rill=${RILL_BIN:-target/release/rill}
threads=${THREADS:-2}
formats=("$@")
[ ${#formats[@]} -gt 0 ] || formats=(Q4_1 Q4_0 Q5_0 Q5_1 Q8_0 Q2_K Q3_K_M Q4_K_M Q5_K_M Q6_K IQ4_NL IQ4_XS F16 BF16)
gen=${GEN:-64}
echo "| format | pp512 rill / llama.cpp | tg$gen rill / llama.cpp | rill batched decode tok/s at ${BATCHES:-1,16} (16 vs 1) |"
echo "|---|---|---|---|"
for f in "${formats[@]}"; do
  m=$home/models/requant/SmolLM2-135M-Instruct.$f.gguf
  [ "$f" = Q4_1 ] && m=$home/models/SmolLM2-135M-Instruct.Q4_1.gguf
  case $f in *.gguf) m=$f; f=$(basename "$f" .gguf) ;; esac
  rs=(); ls=()
  for _ in $(seq "${ROUNDS:-1}"); do
    rs+=("$("$rill" bench-engine -m "$m" -t "$threads" --gen "$gen" --batch ${BATCHES:-1,16} -r 2 --json 2>/dev/null)")
    ls+=("$("$peer/llama-bench" -m "$m" -t "$threads" -p 512 -n "$gen" -r 2 -o json 2>/dev/null)")
  done
  python3 - "$f" "${#rs[@]}" "${rs[@]}" "${ls[@]}" <<'PY'
import json, statistics, sys
f, n = sys.argv[1], int(sys.argv[2])
rs = [json.loads(x) for x in sys.argv[3:3 + n]]
ls = [json.loads(x) for x in sys.argv[3 + n:3 + 2 * n]]
med = statistics.median
lp = med(next(x["avg_ts"] for x in l if x["n_prompt"] > 0) for l in ls)
lg = med(next(x["avg_ts"] for x in l if x["n_gen"] > 0) for l in ls)
rp = med(r["prefill_tok_s"] for r in rs)
rg = med(r["decode_tok_s"] for r in rs)
b = {k: med({x["batch"]: x["tok_s"] for x in r["batched"]}[k] for r in rs) for k in (x["batch"] for x in rs[0]["batched"])}
bs = " / ".join(f"{b[k]:.0f}" for k in sorted(b))
print(f"| {f} | {rp:.0f} / {lp:.0f} ({rp/lp:.2f}x) | {rg:.0f} / {lg:.0f} ({rg/lg:.2f}x) | {bs} ({b[16]/b[1]:.1f}x) |")
PY
done
