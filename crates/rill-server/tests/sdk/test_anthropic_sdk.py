"""The official Anthropic Python SDK against a real `rill serve` (run by .ci/run).

Usage: python test_anthropic_sdk.py PATH_TO_RILL_BINARY
Starts the server on a free port with an API key (the SDK sends it as `x-api-key`), waits for
/ready, then drives the Messages API: `messages.create` streamed and not, `messages.stream`
(text_stream, get_final_message), every stop_reason, `messages.count_tokens`, and typed errors.
Exits non-zero on the first failure.
"""

import json
import sys

import anthropic

from rill_serve import check, serve

KEY = "sk-rill-test"
SYSTEM = "You are brief."


def main():
    with serve(sys.argv[1], KEY) as base:
        run(anthropic.Anthropic(base_url=base, api_key=KEY, max_retries=0), base)
    print("anthropic sdk: all checks passed")


def run(client, base):
    model = "smollm2"
    msgs = [{"role": "user", "content": "Name three colours."}]

    # Not streamed.
    r = client.messages.create(model=model, system=SYSTEM, messages=msgs, max_tokens=24, temperature=0,
                               metadata={"user_id": "sdk-test"})
    check(r.type == "message" and r.role == "assistant" and r.id.startswith("msg_"), f"message: {r}")
    check(len(r.content) == 1 and r.content[0].type == "text" and r.content[0].text, f"content: {r.content}")
    text = r.content[0].text
    check(r.stop_reason in ("end_turn", "max_tokens") and r.stop_sequence is None, f"stop_reason {r.stop_reason}")
    check(r.usage.input_tokens > 0 and 0 < r.usage.output_tokens <= 24, f"usage {r.usage}")

    # messages.stream: the same greedy text, and the accumulated final message.
    with client.messages.stream(model=model, system=SYSTEM, messages=msgs, max_tokens=24, temperature=0) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    check(streamed == text, f"stream {streamed!r} != {text!r}")
    check(final.content[0].text == text, "final message text")
    check(final.stop_reason == r.stop_reason, f"final stop_reason {final.stop_reason}")
    check(final.usage.input_tokens == r.usage.input_tokens, "final input_tokens")
    check(final.usage.output_tokens == r.usage.output_tokens, "final output_tokens")

    # create(stream=True): Anthropic's raw event sequence.
    events = list(client.messages.create(model=model, system=SYSTEM, messages=msgs, max_tokens=24,
                                         temperature=0, stream=True))
    kinds = [e.type for e in events if e.type != "ping"]
    check(kinds[:2] == ["message_start", "content_block_start"], f"opening {kinds[:2]}")
    check(kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"], f"closing {kinds[-3:]}")
    check(set(kinds[2:-3]) == {"content_block_delta"}, f"deltas {kinds}")
    check(events[0].message.usage.input_tokens == r.usage.input_tokens, "message_start input_tokens")

    # count_tokens: the prompt's tokens, as message_start reports them.
    # (SDKs before `messages.count_tokens` left beta have it as `beta.messages.count_tokens`.)
    count = getattr(client.messages, "count_tokens", None) or client.beta.messages.count_tokens
    n = count(model=model, system=SYSTEM, messages=msgs)
    check(n.input_tokens == r.usage.input_tokens, f"count_tokens {n.input_tokens} != {r.usage.input_tokens}")

    # Every stop_reason.
    r2 = client.messages.create(model=model, messages=msgs, system=SYSTEM, max_tokens=3, temperature=0)
    check(r2.stop_reason == "max_tokens" and r2.usage.output_tokens == 3, f"max_tokens: {r2.stop_reason}")
    word = text.split()[1]
    r3 = client.messages.create(model=model, messages=msgs, system=SYSTEM, max_tokens=24, temperature=0,
                                stop_sequences=[word])
    check(r3.stop_reason == "stop_sequence" and r3.stop_sequence == word, f"stop_sequence: {r3}")
    check(word not in r3.content[0].text and text.startswith(r3.content[0].text), "text stops before the sequence")
    r4 = client.messages.create(model=model, messages=[{"role": "user", "content": "Say hello."}], system=SYSTEM,
                                max_tokens=200, temperature=0)
    check(r4.stop_reason == "end_turn" and r4.usage.output_tokens < 200, f"end_turn: {r4.stop_reason}")

    # Typed errors.
    try:
        client.messages.create(model=model, messages=msgs, max_tokens=8,
                               tools=[{"name": "f", "input_schema": {"type": "object"}}])
        check(False, "tools must fail")
    except anthropic.BadRequestError as e:
        check(e.status_code == 400 and e.body["error"]["type"] == "invalid_request_error", f"400 shape: {e.body}")
        check(e.body["error"]["message"].startswith("tools: "), f"names tools: {e.body}")
    try:
        client.messages.create(model=model, max_tokens=8, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}])
        check(False, "an image must fail")
    except anthropic.BadRequestError as e:
        check(e.body["error"]["message"].startswith("messages[0].content[0].type: "), f"names the block: {e.body}")
    try:
        client.messages.create(model=model, messages=msgs, max_tokens=8, temperature=1.5)
        check(False, "temperature 1.5 must fail")
    except anthropic.BadRequestError as e:
        check("temperature" in e.message, f"names temperature: {e.message}")
    try:
        anthropic.Anthropic(base_url=base, api_key="wrong", max_retries=0).messages.create(
            model=model, messages=msgs, max_tokens=8)
        check(False, "a wrong key must fail")
    except anthropic.AuthenticationError as e:
        check(e.status_code == 401 and e.body["error"]["type"] == "authentication_error", f"401: {e.body}")
    print(json.dumps({"model": model, "text": text, "input_tokens": r.usage.input_tokens}))


if __name__ == "__main__":
    main()
