"""The official Anthropic Python SDK against a real `rill serve` (run by .ci/run).

Usage: python test_anthropic_sdk.py PATH_TO_RILL_BINARY
Starts the server on a free port with an API key (the SDK sends it as `x-api-key`), waits for
/ready, then drives the Messages API: `messages.create` streamed and not, `messages.stream`
(text_stream, get_final_message), every stop_reason, `messages.count_tokens`, forced `tool_use`
blocks (whole and through `messages.stream`, input valid against the schema), a `tool_result`
turn answered, and typed errors.
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

    # Tools: a forced tool_use block, whole and streamed, then its result answered.
    tools = [{"name": "get_weather", "description": "The weather in a city",
              "input_schema": {"type": "object", "properties": {
                  "city": {"type": "string", "maxLength": 30},
                  "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                  "required": ["city", "unit"]}}]
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    for choice in ({"type": "any"}, {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}):
        t = client.messages.create(model=model, messages=ask, tools=tools, tool_choice=choice, max_tokens=80,
                                   temperature=0)
        uses = [b for b in t.content if b.type == "tool_use"]
        check(t.stop_reason == "tool_use" and uses, f"tool_use ({choice}): {t}")
        for u in uses:
            check(u.name == "get_weather" and u.id.startswith("toolu_"), f"tool_use block {u}")
            check(set(u.input) == {"city", "unit"} and isinstance(u.input["city"], str)
                  and u.input["unit"] in ("celsius", "fahrenheit"), f"input valid against the schema: {u.input}")
        with client.messages.stream(model=model, messages=ask, tools=tools, tool_choice=choice, max_tokens=80,
                                    temperature=0) as stream:
            final = stream.get_final_message()
        streamed = [(b.name, b.input) for b in final.content if b.type == "tool_use"]
        check(streamed == [(u.name, u.input) for u in uses], f"streamed tool_use {streamed}")
        check(final.stop_reason == "tool_use", f"streamed stop_reason {final.stop_reason}")
    answered = client.messages.create(model=model, tools=tools, max_tokens=20, temperature=0, messages=ask + [
        {"role": "assistant", "content": [{"type": "tool_use", "id": uses[0].id, "name": "get_weather",
                                           "input": uses[0].input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id,
                                      "content": "21 degrees and sunny"}]}],
        tool_choice={"type": "none"})
    check(answered.content[0].type == "text" and answered.stop_reason in ("end_turn", "max_tokens"),
          f"a tool result answered: {answered}")
    n = count(model=model, messages=ask, tools=tools)
    check(n.input_tokens > count(model=model, messages=ask).input_tokens, "tools count as prompt tokens")

    # Typed errors.
    try:
        client.messages.create(model=model, messages=msgs, max_tokens=8,
                               tools=[{"name": "f", "input_schema": {"type": "string"}}])
        check(False, "a non-object input_schema must fail")
    except anthropic.BadRequestError as e:
        check(e.status_code == 400 and e.body["error"]["type"] == "invalid_request_error", f"400 shape: {e.body}")
        check(e.body["error"]["message"].startswith("tools[0].input_schema: "), f"names the schema: {e.body}")
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
