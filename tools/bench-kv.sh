#!/usr/bin/env bash
# rill beside llama.cpp with each KV cache type (f16, q8_0, q4_0) on one model (default: the
# default model), same machine, same threads, interleaved per type and round: prefill pp512 and
# decode tg64 after 2048 tokens of context (`rill bench-engine --depth 2048 --kv-type T` and
# `llama-bench -d 2048 -fa 1 -ctk T -ctv T`), plus the tokens of KV one GiB holds in each type.
# Prints one markdown row per type with the median of ROUNDS (default 3) rounds.
#   tools/bench-kv.sh [MODEL.gguf]
set -euo pipefail
cd "$(dirname "$0")/.."
home=${RILL_HOME:-$HOME/.cache/rill}
peer=${RILL_PEER_BIN:-$(../shared/tools/peer-llama-cpp.sh)}
rill=${RILL_BIN:-target/release/rill}
threads=${THREADS:-2}
model=${1:-$home/models/SmolLM2-135M-Instruct.Q4_1.gguf}
depth=${DEPTH:-2048}
rounds=${ROUNDS:-3}
out=$(mktemp -d)
for round in $(seq "$rounds"); do
  for t in f16 q8_0 q4_0; do
    "$rill" bench-engine -m "$model" -t "$threads" --depth "$depth" --batch 1 --gen 64 -r 1 \
      --kv-type "$t" --json >"$out/rill.$t.$round" 2>/dev/null
    "$peer/llama-bench" -m "$model" -t "$threads" -fa 1 -ctk "$t" -ctv "$t" -p 512 -n 64 \
      -d "$depth" -r 1 -o json >"$out/llama.$t.$round" 2>/dev/null
  done
done
"$rill" info --json -m "$model" >"$out/info" 2>/dev/null
python3 - "$out" "$rounds" "$depth" <<'PY'
import json, os, statistics, sys
out, rounds, depth = sys.argv[1], int(sys.argv[2]), sys.argv[3]
info = json.load(open(os.path.join(out, "info")))["model"]["kv_tokens_per_gib"]
print(f"| KV type | tokens per GiB | pp512 @ d{depth} rill / llama.cpp | tg64 @ d{depth} rill / llama.cpp |")
print("|---|---|---|---|")
for t in ["f16", "q8_0", "q4_0"]:
    rp, rg, lp, lg = [], [], [], []
    for r in range(1, rounds + 1):
        j = json.load(open(os.path.join(out, f"rill.{t}.{r}")))
        rp.append(j["prefill_tok_s"]); rg.append(j["decode_tok_s"])
        l = json.load(open(os.path.join(out, f"llama.{t}.{r}")))
        lp.append(next(x["avg_ts"] for x in l if x["n_prompt"] > 0))
        lg.append(next(x["avg_ts"] for x in l if x["n_gen"] > 0))
    m = statistics.median
    print(f"| {t} | {info[t]} | {m(rp):.0f} / {m(lp):.0f} ({m(rp)/m(lp):.2f}x) "
          f"| {m(rg):.0f} / {m(lg):.0f} ({m(rg)/m(lg):.2f}x) |")
PY
rm -r "$out"
