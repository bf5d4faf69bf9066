#!/usr/bin/env python3
"""Writes llama.cpp's greedy reference for every requantized file (tools/requantize.sh) into
crates/rill-engine/tests/data/formats/<FORMAT>.json, which tests/greedy_formats.rs compares with.

For each file it starts the peer's llama-server (../shared/tools/peer-llama-cpp.sh, 2 threads,
one slot, prompt cache off) and asks /completion for 48 greedy tokens (temperature 0, top_k 1,
ignore_eos) with the two most likely tokens and their log-probabilities at every position.
Standard library only. Regenerate (after tools/requantize.sh):
    python3 tools/format-fixtures.py [FORMAT ...]
"""
import json, os, subprocess, sys, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOME = os.environ.get("RILL_HOME", os.path.expanduser("~/.cache/rill"))
REQUANT = os.path.join(HOME, "models", "requant")
OUT = os.path.join(ROOT, "crates", "rill-engine", "tests", "data", "formats")
FORMATS = ["Q4_0", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K",
           "IQ4_NL", "IQ4_XS", "F16", "BF16"]
PROMPTS = {
    "code": "<|im_start|>user\nWrite a Python function that returns the n-th Fibonacci number.<|im_end|>\n<|im_start|>assistant\n",
    "explain": "<|im_start|>user\nExplain in simple terms how a rainbow forms.<|im_end|>\n<|im_start|>assistant\n",
    "raw_completion": "The capital of France is",
}
N_PREDICT = 48
PORT = 8097


def post(path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


def peer_bin():
    if os.environ.get("RILL_PEER_BIN"):
        return os.environ["RILL_PEER_BIN"]
    tool = os.path.join(ROOT, "..", "shared", "tools", "peer-llama-cpp.sh")
    return subprocess.check_output([tool], text=True).strip()


def start_server(server, model, extra=()):
    """Starts llama-server on `model` (2 threads, one slot) and waits until it is healthy."""
    proc = subprocess.Popen([server, "-m", model, "-t", "2", "-np", "1", "-c", "2048",
                             "--host", "127.0.0.1", "--port", str(PORT), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=1) as r:
                if r.status == 200:
                    return proc
        except Exception:
            time.sleep(0.1)
    proc.terminate()
    raise RuntimeError(f"llama-server did not start on {model}")


def greedy_case(name, prompt, add_special, n_predict=N_PREDICT, n_probs=2):
    """llama-server's tokens for `prompt` and its greedy continuation with the `n_probs` most
    likely tokens and their log-probabilities at every position."""
    ids = post("/tokenize", {"content": prompt, "add_special": add_special, "parse_special": True})["tokens"]
    r = post("/completion", {"prompt": ids, "n_predict": n_predict, "temperature": 0,
                             "top_k": 1, "n_probs": n_probs, "cache_prompt": False,
                             "ignore_eos": True, "return_tokens": True, "samplers": ["top_k"]})
    probs = r["completion_probabilities"]
    # llama-server leaves out the probabilities of a token that ends in an incomplete UTF-8
    # sequence; such a reference could not be aligned, so it is refused.
    if [p["id"] for p in probs] != r["tokens"]:
        raise RuntimeError(f"{name}: llama-server skipped probabilities (incomplete UTF-8 output)")
    top = [[[t["id"], round(t["logprob"], 5)] for t in p["top_logprobs"][:n_probs]] for p in probs]
    return {
        "name": name,
        "prompt": prompt,
        "prompt_tokens": ids,
        "greedy_tokens": [p["id"] for p in probs],
        "top2": [t[:2] for t in top],
        **({"top5_first": top[:4]} if n_probs >= 5 else {}),
    }


def write_fixture(path, ref):
    """Writes a fixture as the tests read it (one-space indent, UTF-8, trailing newline)."""
    with open(path, "w") as f:
        json.dump(ref, f, indent=1, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")


def reference(fmt, server):
    model = os.path.join(REQUANT, f"SmolLM2-135M-Instruct.{fmt}.gguf")
    proc = start_server(server, model)
    try:
        cases = [greedy_case(name, prompt, False) for name, prompt in PROMPTS.items()]
        return {
            "reference": "llama.cpp llama-server b11434, greedy (temperature 0, top_k 1, ignore_eos), 2 threads",
            "model": os.path.basename(model),
            "made_by": "tools/requantize.sh then tools/format-fixtures.py",
            "cases": cases,
        }
    finally:
        proc.terminate()
        proc.wait()


def main():
    server = os.path.join(peer_bin(), "llama-server")
    os.makedirs(OUT, exist_ok=True)
    for fmt in sys.argv[1:] or FORMATS:
        ref = reference(fmt, server)
        write_fixture(os.path.join(OUT, f"{fmt}.json"), ref)
        print(fmt, [len(c["greedy_tokens"]) for c in ref["cases"]])


if __name__ == "__main__":
    main()
