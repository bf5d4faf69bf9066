#!/usr/bin/env bash
# Makes the default model in every weight format rill supports, with llama.cpp's llama-quantize
# (--allow-requantize from the Q4_1 file, as a user would), into $RILL_HOME/models/requant/.
# The files are deterministic: the committed fixtures in crates/rill-engine/tests/data/formats/
# were made from them. llama.cpp is built outside the repo by ../shared/tools/peer-llama-cpp.sh
# (or taken from $RILL_PEER_BIN); nothing of it is committed.
#   tools/requantize.sh            # all formats
#   tools/requantize.sh Q4_K_M Q5_0
set -euo pipefail
cd "$(dirname "$0")/.."
home=${RILL_HOME:-$HOME/.cache/rill}
src=$home/models/SmolLM2-135M-Instruct.Q4_1.gguf
out=$home/models/requant
[ -f "$src" ] || cargo run -q --release -p rill -- pull
if [ -z "${RILL_PEER_BIN:-}" ]; then
  RILL_PEER_BIN=$(../shared/tools/peer-llama-cpp.sh)
fi
if [ ! -x "$RILL_PEER_BIN/llama-quantize" ]; then
  cmake --build "$RILL_PEER_BIN/../" -j"$(nproc)" --target llama-quantize >&2
fi
formats=("$@")
[ ${#formats[@]} -gt 0 ] || formats=(Q4_0 Q5_0 Q5_1 Q8_0 Q2_K Q3_K_M Q4_K_M Q5_K_M Q6_K IQ4_NL IQ4_XS F16 BF16)
mkdir -p "$out"
for f in "${formats[@]}"; do
  dst=$out/SmolLM2-135M-Instruct.$f.gguf
  [ -f "$dst" ] && continue
  "$RILL_PEER_BIN/llama-quantize" --allow-requantize "$src" "$dst.tmp" "$f" 2 > "$out/$f.log" 2>&1 \
    || { tail -5 "$out/$f.log" >&2; exit 1; }
  mv "$dst.tmp" "$dst"
  echo "$dst"
done
