#!/usr/bin/env python3
"""An f64 forward pass of Gemma 3 in numpy, on the GGUF's dequantized weights with no activation
rounding: the arithmetic-free answer that rill's and llama.cpp's top-5 log-probabilities can be
measured against (both round activations to 8 bits, and on Gemma 3 that alone moves them by
tenths). Prints the five most likely next tokens after a fixture case's prompt.
Needs `pip install gguf numpy`; about 30 s for Gemma 3 270M.
    python3 tools/gemma3-f64-reference.py MODEL.gguf [CASE] [FIXTURE.json]
"""
import json, os, sys

import gguf
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    model = sys.argv[1]
    case_name = sys.argv[2] if len(sys.argv) > 2 else "capital"
    fixture = sys.argv[3] if len(sys.argv) > 3 else os.path.join(
        ROOT, "crates", "rill-engine", "tests", "data", "models", "gemma3-270m.json")
    case = next(c for c in json.load(open(fixture))["cases"] if c["name"] == case_name)
    ids = case["prompt_tokens"]
    r = gguf.GGUFReader(model)
    meta = {k: f.contents() for k, f in r.fields.items() if k.startswith("gemma3.")}
    tensors = {t.name: t for t in r.tensors}

    def w(name):
        t = tensors[name]
        return np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float64)

    dim, n_layers = meta["gemma3.embedding_length"], meta["gemma3.block_count"]
    n_heads, n_kv = meta["gemma3.attention.head_count"], meta["gemma3.attention.head_count_kv"]
    hd, eps = meta["gemma3.attention.key_length"], meta["gemma3.attention.layer_norm_rms_epsilon"]
    window, base = meta.get("gemma3.attention.sliding_window", 0), meta["gemma3.rope.freq_base"]
    n = len(ids)

    def rms(v, g):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + eps) * g

    def rope(v, b):  # neox pairs (i, i + hd/2)
        half = hd // 2
        ang = np.arange(n)[:, None] * (b ** (-np.arange(half) * 2.0 / hd))[None, :]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        x0, x1 = v[..., :half], v[..., half:]
        return np.concatenate([x0 * c - x1 * s, x0 * s + x1 * c], -1)

    emb = w("token_embd.weight")
    x = emb[ids] * np.sqrt(float(dim))
    qi, ki = np.arange(n)[:, None], np.arange(n)[None, :]
    for l in range(n_layers):
        p = lambda s: w(f"blk.{l}.{s}.weight")
        local = window > 0 and l % 6 != 5
        h = rms(x, p("attn_norm"))
        q = rms((h @ p("attn_q").T).reshape(n, n_heads, hd), p("attn_q_norm"))
        k = rms((h @ p("attn_k").T).reshape(n, n_kv, hd), p("attn_k_norm"))
        v = (h @ p("attn_v").T).reshape(n, n_kv, hd)
        q = rope(q, 10000.0 if local else base) / np.sqrt(hd)
        k = rope(k, 10000.0 if local else base)
        k = np.repeat(k, n_heads // n_kv, 1)
        v = np.repeat(v, n_heads // n_kv, 1)
        s = np.einsum("qhd,khd->hqk", q, k)
        masked = (ki > qi) | ((qi - ki >= window) if local else False)
        s = np.where(masked, -np.inf, s)
        pr = np.exp(s - s.max(-1, keepdims=True))
        pr /= pr.sum(-1, keepdims=True)
        o = np.einsum("hqk,khd->qhd", pr, v).reshape(n, n_heads * hd)
        x = x + rms(o @ p("attn_output").T, p("post_attention_norm"))
        h = rms(x, p("ffn_norm"))
        g = h @ p("ffn_gate").T
        g = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g ** 3)))
        x = x + rms((g * (h @ p("ffn_up").T)) @ p("ffn_down").T, p("post_ffw_norm"))
    logits = emb @ rms(x[-1], w("output_norm.weight"))
    lp = logits - (np.log(np.exp(logits - logits.max()).sum()) + logits.max())
    print([(int(i), round(float(lp[i]), 4)) for i in np.argsort(-lp)[:5]])


if __name__ == "__main__":
    main()
