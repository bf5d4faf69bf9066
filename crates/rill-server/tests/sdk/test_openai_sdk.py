"""The official OpenAI Python SDK against a real `rill serve` (run by .ci/run).

Usage: python test_openai_sdk.py PATH_TO_RILL_BINARY
Starts the server on a free port with an API key, waits for /ready, then drives chat and
completions, streaming and not, with usage, logprobs, stop, seed and max_completion_tokens,
and checks typed errors. Exits non-zero on the first failure.
"""

import json
import sys

import openai

from rill_serve import check, serve

KEY = "sk-rill-test"


def main():
    with serve(sys.argv[1], KEY) as base:
        run(openai.OpenAI(base_url=base + "/v1", api_key=KEY), base)
    print("openai sdk: all checks passed")


def run(client, base):
    models = client.models.list()
    model = models.data[0].id
    msgs = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Name three colours."}]

    # Chat, not streamed.
    r = client.chat.completions.create(model=model, messages=msgs, max_tokens=24, temperature=0)
    text = r.choices[0].message.content
    check(r.object == "chat.completion" and r.id.startswith("chatcmpl-"), f"chat object/id: {r.object} {r.id}")
    check(text and r.choices[0].message.role == "assistant", "chat content")
    check(r.choices[0].finish_reason in ("stop", "length"), f"finish_reason {r.choices[0].finish_reason}")
    check(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, "usage sums")
    check(r.model == model, "model echoed")

    # Chat, streamed with usage: same greedy text, usage chunk last.
    chunks = list(client.chat.completions.create(
        model=model, messages=msgs, max_tokens=24, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    check(streamed == text, f"stream {streamed!r} != {text!r}")
    check(chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == r.usage.completion_tokens, "usage chunk")
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    check(finishes == [r.choices[0].finish_reason], f"one finish_reason: {finishes}")
    check(chunks[-1].model_extra.get("timings", {}).get("ttft_ms", 0) > 0, "timings in the usage chunk")

    # max_completion_tokens, stop, seed, logprobs.
    r2 = client.chat.completions.create(model=model, messages=msgs, max_completion_tokens=3, temperature=0)
    check(r2.usage.completion_tokens == 3 and r2.choices[0].finish_reason == "length", "max_completion_tokens")
    word = text.split()[1]
    r3 = client.chat.completions.create(model=model, messages=msgs, max_tokens=24, temperature=0, stop=[word])
    check(word not in r3.choices[0].message.content and r3.choices[0].finish_reason == "stop", "stop")
    a = client.chat.completions.create(model=model, messages=msgs, max_tokens=16, temperature=0.9, seed=42)
    b = client.chat.completions.create(model=model, messages=msgs, max_tokens=16, temperature=0.9, seed=42)
    check(a.choices[0].message.content == b.choices[0].message.content, "seed reproducibility")
    lp = client.chat.completions.create(model=model, messages=msgs, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2)
    content = lp.choices[0].logprobs.content
    check(len(content) >= 1 and len(content[0].top_logprobs) == 2, "chat logprobs")
    check(abs(content[0].logprob - content[0].top_logprobs[0].logprob) < 1e-4, "greedy token is the top logprob")

    # Completions, both ways.
    c1 = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0, logprobs=2)
    check(c1.object == "text_completion" and c1.choices[0].text, "completion text")
    check(len(c1.choices[0].logprobs.tokens) == c1.usage.completion_tokens, "completion logprobs")
    cs = list(client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0,
                                        stream=True, stream_options={"include_usage": True}))
    check("".join(c.choices[0].text for c in cs if c.choices) == c1.choices[0].text, "streamed completion")

    # Typed errors.
    try:
        client.chat.completions.create(model=model, messages=msgs, temperature=7)
        check(False, "temperature=7 must fail")
    except openai.BadRequestError as e:
        check(e.status_code == 400 and e.body.get("param") == "temperature", f"400 names the param: {e.body}")
    try:
        openai.OpenAI(base_url=base + "/v1", api_key="wrong").models.list()
        check(False, "a wrong key must fail")
    except openai.AuthenticationError as e:
        check(e.status_code == 401, "401")
    print(json.dumps({"model": model, "text": text}))


if __name__ == "__main__":
    main()
