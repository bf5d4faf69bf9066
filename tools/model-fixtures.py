#!/usr/bin/env python3
"""Writes llama.cpp's greedy reference for the known models other than the default (`rill pull
NAME`) into crates/rill-engine/tests/data/models/<NAME>.json, which tests/greedy_models.rs
compares with.

For each model it starts the peer's llama-server (../shared/tools/peer-llama-cpp.sh, 2 threads,
one slot, prompt cache off, flash attention on as llama.cpp picks on CPU, weight repacking off:
see PEER_ARGS) and asks /completion
for 48 greedy tokens (temperature 0, top_k 1, ignore_eos) of raw-text prompts, the BOS added as
the model asks, with the five most likely tokens and their log-probabilities at every position.
One prompt is longer than Gemma 3's 512-token sliding window. Standard library only.
Regenerate (after `cargo run --release -p rill -- pull NAME`):
    python3 tools/model-fixtures.py [NAME ...]
"""
import importlib.util, json, os, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("ff", os.path.join(ROOT, "tools", "format-fixtures.py"))
ff = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ff)

OUT = os.path.join(ROOT, "crates", "rill-engine", "tests", "data", "models")
MODELS = ["gemma3-270m"]
# llama.cpp repacks Q4_K weights on x86 and then runs them through other arithmetic (its
# q4_K_8x8 GEMV/GEMM) than its Q4_K dot product, which is the arithmetic rill implements;
# --no-repack makes it use the dot product. On Gemma 3 270M the two llama.cpp paths differ by up
# to 0.36 in a top-5 log-probability at the first generated token.
PEER_ARGS = ["-fa", "on", "--no-repack"]
SENTENCES = [
    "The lighthouse keeper climbed the spiral stairs every evening at dusk.",
    "Rivers carve valleys over millions of years, grain by grain.",
    "In 1969, two astronauts walked on the Moon while a third orbited above.",
    "A good loaf of bread needs flour, water, salt, yeast and patience.",
    "The library opened at nine, and the first visitor was always the same old man.",
    "Volcanic islands rise from the ocean floor when magma breaks through the crust.",
    "She tuned the violin, took a breath, and began the concerto's first movement.",
    "Compilers translate source code into machine instructions that a processor can run.",
]
LONG = " ".join(SENTENCES[i % len(SENTENCES)] + f" (note {i})" for i in range(30))
PROMPTS = {
    "capital": "The capital of France is",
    "story": "Once upon a time, in a small village by the sea,",
    "code": "def fibonacci(n):\n",
    "list": "Three things every kitchen needs:\n1.",
    "long_window": LONG + "\nIn short, the notes above are about",
}


def main():
    server = os.path.join(ff.peer_bin(), "llama-server")
    os.makedirs(OUT, exist_ok=True)
    rill = [os.path.join(ROOT, "target", "release", "rill")]
    if not os.path.exists(rill[0]):
        rill = ["cargo", "run", "-q", "--release", "-p", "rill", "--"]
    for name in sys.argv[1:] or MODELS:
        model = subprocess.check_output(rill + ["pull", name], text=True, cwd=ROOT).strip()
        proc = ff.start_server(server, model, PEER_ARGS)
        try:
            cases = [ff.greedy_case(n, p, True, n_probs=5) for n, p in PROMPTS.items()]
        finally:
            proc.terminate()
            proc.wait()
        ref = {
            "reference": "llama.cpp llama-server b11434, greedy (temperature 0, top_k 1, ignore_eos), 2 threads, " + " ".join(PEER_ARGS),
            "model": name,
            "made_by": "tools/model-fixtures.py",
            "cases": cases,
        }
        ff.write_fixture(os.path.join(OUT, f"{name}.json"), ref)
        print(name, [(c["name"], len(c["prompt_tokens"]), len(c["greedy_tokens"])) for c in cases])


if __name__ == "__main__":
    main()
