"""The official OpenAI Python SDK against a real `rill serve` (run by .ci/run).

Usage: python test_openai_sdk.py PATH_TO_RILL_BINARY
Starts the server on a free port with an API key, waits for /ready, then drives chat and
completions, streaming and not, with usage, logprobs, stop, seed and max_completion_tokens;
tool calls (required, named, auto, none, tool results in the history), streamed and not;
structured outputs (the SDK's pydantic `parse`, json_schema over many schemas, json_object
streamed); and checks typed errors. Exits non-zero on the first failure.
"""

import json
import re
import sys

import openai
import pydantic

from mini_schema import errors, self_test
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

    self_test()
    tool_calls(client, model)
    structured_outputs(client, model)


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Current local time in an IANA timezone",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"],
                   "additionalProperties": False}}}
BOOK = {"type": "function", "function": {
    "name": "book_table", "description": "Book a restaurant table",
    "parameters": {"type": "object", "properties": {
        "restaurant": {"type": "string", "maxLength": 40}, "guests": {"type": "integer", "minimum": 1, "maximum": 12},
        "dishes": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3},
        "outdoor": {"type": "boolean"}},
        "required": ["restaurant", "guests", "dishes", "outdoor"]}}}
TOOLS = [WEATHER, TIME, BOOK]


def closed(params):
    """A tool's parameters as rill enforces them: an object that lists `properties` and says
    nothing of others allows no extra property (rill's documented default for tools)."""
    if "properties" in params and "additionalProperties" not in params:
        return {**params, "additionalProperties": False}
    return params


def valid_call(name, arguments, tools, what):
    """A call names one of `tools` and its arguments are a JSON object valid against that tool's
    parameters; returns the parsed arguments."""
    by_name = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    check(name in by_name, f"{what}: {name} is not one of {sorted(by_name)}")
    try:
        args = json.loads(arguments)
    except ValueError as e:
        raise AssertionError(f"{what}: arguments {arguments!r} are not JSON: {e}")
    why = errors(args, closed(by_name[name]))
    check(not why, f"{what}: {name}({arguments}) against its parameters: {why}")
    check(not re.search(r"\s", re.sub(r'"(?:[^"\\]|\\.)*"', "", arguments)),
          f"{what}: arguments are compact JSON: {arguments!r}")
    return args


def assembled(chunks):
    """A streamed answer: (content, calls as [(name, arguments)], ids, finish_reasons), the tool
    call fragments joined by index; checks the fragments' shape on the way."""
    content, calls, ids, finishes = "", {}, {}, []
    for c in chunks:
        if not c.choices:
            continue
        d = c.choices[0].delta
        content += d.content or ""
        for tc in d.tool_calls or []:
            if tc.index not in calls:
                check(tc.id and tc.type == "function" and tc.function.name, f"first fragment names the call: {tc}")
                check(tc.function.arguments == "", f"first fragment's arguments are empty: {tc}")
                check(tc.index == len(calls), f"call indexes count up from 0: {tc.index} after {sorted(calls)}")
                calls[tc.index] = [tc.function.name, ""]
                ids[tc.index] = tc.id
            else:
                check(tc.id is None and tc.function and tc.function.name is None,
                      f"later fragments carry arguments only: {tc}")
                calls[tc.index][1] += tc.function.arguments or ""
        if c.choices[0].finish_reason:
            finishes.append(c.choices[0].finish_reason)
    return content, [tuple(calls[i]) for i in sorted(calls)], [ids[i] for i in sorted(ids)], finishes


def tool_calls(client, model):
    ask = [{"role": "user", "content": "What is the weather in Paris, and what time is it in Tokyo?"}]
    base = dict(model=model, messages=ask, tools=TOOLS, temperature=0, max_tokens=160)
    named = {"type": "function", "function": {"name": "book_table"}}

    # Forced calls, not streamed and streamed: the same greedy calls, valid arguments.
    for choice, parallel in [("required", True), ("required", False), (named, True)]:
        what = f"tool_choice={choice if isinstance(choice, str) else 'named'} parallel={parallel}"
        r = client.chat.completions.create(**base, tool_choice=choice, parallel_tool_calls=parallel)
        m = r.choices[0].message
        check(r.choices[0].finish_reason == "tool_calls", f"{what}: finish_reason {r.choices[0].finish_reason}")
        check(m.tool_calls and m.content is None, f"{what}: calls and no content: {m}")
        check(len({c.id for c in m.tool_calls}) == len(m.tool_calls), f"{what}: call ids are distinct")
        for c in m.tool_calls:
            check(c.type == "function" and c.id, f"{what}: call shape {c}")
            valid_call(c.function.name, c.function.arguments, TOOLS, what)
        if choice is named:
            check([c.function.name for c in m.tool_calls] == ["book_table"], f"{what}: one call of the named function")
        if not parallel:
            check(len(m.tool_calls) == 1, f"{what}: one call without parallel_tool_calls: {m.tool_calls}")
        chunks = list(client.chat.completions.create(**base, tool_choice=choice, parallel_tool_calls=parallel,
                                                     stream=True))
        content, calls, ids, finishes = assembled(chunks)
        check(content == "", f"{what}: streamed content {content!r}")
        check(finishes == ["tool_calls"], f"{what}: streamed finish_reasons {finishes}")
        unstreamed = [(c.function.name, c.function.arguments) for c in m.tool_calls]
        check(calls == unstreamed, f"{what}: streamed {calls} != {unstreamed}")
        check(len(set(ids)) == len(ids) and not set(ids) & {c.id for c in m.tool_calls}, f"{what}: fresh ids")

    # auto: the model calls when the conversation shows it calling...
    def call(i, city):
        return {"id": f"call_{i}", "type": "function",
                "function": {"name": "get_weather", "arguments": json.dumps({"city": city, "unit": "celsius"})}}
    shown = [{"role": "user", "content": "Weather in London?"},
             {"role": "assistant", "content": None, "tool_calls": [call(1, "London")]},
             {"role": "user", "content": "Weather in Rome?"},
             {"role": "assistant", "content": None, "tool_calls": [call(2, "Rome")]},
             {"role": "user", "content": "Weather in Paris?"}]
    auto = dict(model=model, messages=shown, tools=[WEATHER], tool_choice="auto", parallel_tool_calls=False,
                temperature=0, max_tokens=100)
    r = client.chat.completions.create(**auto)
    m = r.choices[0].message
    check(r.choices[0].finish_reason == "tool_calls" and m.tool_calls, f"auto: a call expected: {r}")
    check(len(m.tool_calls) == 1 and m.tool_calls[0].function.name == "get_weather", f"auto: {m.tool_calls}")
    args = valid_call("get_weather", m.tool_calls[0].function.arguments, [WEATHER], "auto")
    check(args["city"] == "Paris", f"auto: the call asks for Paris: {args}")
    content, calls, _, finishes = assembled(client.chat.completions.create(**auto, stream=True))
    check(finishes == ["tool_calls"] and calls == [("get_weather", m.tool_calls[0].function.arguments)],
          f"auto streamed: {calls} {finishes} {content!r}")
    check((content or None) == m.content, f"auto streamed content {content!r} != {m.content!r}")

    # ...and answers in text when it does not.
    plain = dict(model=model, messages=[{"role": "user", "content": "What is the weather like in Paris today?"}],
                 tools=[WEATHER], tool_choice="auto", temperature=0, max_tokens=60)
    r = client.chat.completions.create(**plain)
    m = r.choices[0].message
    check(r.choices[0].finish_reason in ("stop", "length") and m.content and not m.tool_calls, f"auto text: {r}")
    content, calls, _, finishes = assembled(client.chat.completions.create(**plain, stream=True))
    check(content == m.content and not calls and finishes == [r.choices[0].finish_reason],
          f"auto text streamed: {content!r}")

    # none: text, even where required would call.
    r = client.chat.completions.create(**base, tool_choice="none")
    check(r.choices[0].message.content and not r.choices[0].message.tool_calls
          and r.choices[0].finish_reason in ("stop", "length"), f"tool_choice none: {r}")

    # A tool result in the history, tools still offered: the turn is answered.
    result = shown[:2] + [{"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 14, "sky": "rain"}'}]
    r = client.chat.completions.create(model=model, messages=result, tools=[WEATHER], temperature=0, max_tokens=60)
    m, finish = r.choices[0].message, r.choices[0].finish_reason
    if m.tool_calls:
        check(finish == "tool_calls", f"tool result turn: finish_reason {finish}")
        for c in m.tool_calls:
            valid_call(c.function.name, c.function.arguments, [WEATHER], "tool result turn")
    else:
        check(finish in ("stop", "length") and isinstance(m.content, str) and m.content.strip(),
              f"tool result turn: {r}")

    # Bad tools: 400s naming the field.
    for kwargs, param in [
        (dict(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}}), "tool_choice"),
        (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]),
         "tools[0].function.parameters"),
    ]:
        try:
            client.chat.completions.create(model=model, messages=ask, max_tokens=4, **kwargs)
            check(False, f"{kwargs} must fail")
        except openai.BadRequestError as e:
            check(e.status_code == 400 and e.body.get("param") == param, f"400 names {param}: {e.body}")
    print(json.dumps({"tool_calls": "ok", "auto": args}))


class Pet(pydantic.BaseModel):
    name: str
    species: str
    age: int
    vaccinated: bool


class Owner(pydantic.BaseModel):
    name: str
    pets: list[Pet]


# 20 schemas for json_schema: (strict, schema). Strings are short and numbers few, so that a
# sampled answer ends well within max_tokens (a number's fraction has no bound: SmolLM2 at
# temperature 0.8 sometimes writes digits until max_tokens, about 1 answer in 100 seen).
def string(max_length=16):
    return {"type": "string", "maxLength": max_length}


def integer(lo, hi):
    return {"type": "integer", "minimum": lo, "maximum": hi}


def number(lo, hi):
    return {"type": "number", "minimum": lo, "maximum": hi}


def array(items, lo=0, hi=None):
    a = {"type": "array", "items": items, "minItems": lo}
    return a if hi is None else {**a, "maxItems": hi}


def obj(props, required=None, extra=False):
    """An object of `props`, all required unless said; no other property unless `extra`."""
    o = {"type": "object", "properties": props, "required": list(props) if required is None else required}
    return o if extra else {**o, "additionalProperties": False}


SCHEMAS = [
    (True, obj({"name": string(), "age": integer(0, 120)})),
    (False, obj({"colour": {"enum": ["red", "green", "blue"]}}, extra=True)),
    (True, obj({"tags": array(string(12), 2, 4)})),
    (True, obj({"person": obj({"name": string(), "address": obj({
        "street": string(24), "city": string(), "zip": integer(1000, 99999)})})})),
    (False, obj({"is_open": {"type": "boolean"}, "reason": string(30)})),
    (True, obj({"temperature": number(-50, 60), "unit": {"enum": ["C", "F"]}})),
    (True, obj({"first": string(), "middle": {"anyOf": [string(12), {"type": "null"}]}, "last": string()})),
    (False, array(integer(1, 9), 3, 3)),
    (True, obj({"order": array(obj({"sku": string(8), "qty": integer(1, 99)}), 1, 3)})),
    (False, obj({"stars": {"enum": [1, 2, 3, 4, 5]}, "review": string(24)})),
    (True, obj({"a": obj({"b": obj({"c": {"type": "boolean"}, "d": array({"type": "null"}, 0, 2)})})})),
    (False, obj({"score": {"type": ["number", "null"], "minimum": 0, "maximum": 10}, "player": string()})),
    (True, obj({"version": {"const": 2}, "name": string()})),
    (False, obj({"airport": {"type": "string", "pattern": "^[A-Z]{3}$"}, "gate": integer(1, 60)})),
    (True, obj({"matrix": array(array(integer(-9, 9), 2, 2), 2, 2)})),
    (False, obj({"ok": {"type": "boolean"}, "count": integer(0, 1000), "ratio": number(0, 1),
                 "level": {"enum": ["low", "mid", "high"]}})),
    (True, obj({"shape": {"anyOf": [obj({"kind": {"const": "circle"}, "radius": number(0, 100)}),
                                    obj({"kind": {"const": "square"}, "side": integer(1, 100)})]}})),
    (False, {"enum": ["yes", "no", "maybe"]}),
    (False, obj({"title": string(30), "subtitle": string(30), "pages": integer(1, 2000)}, required=["title"])),
    (True, obj({"values": array({"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 100}, 0, 5),
                "label": {"type": ["string", "null"], "maxLength": 10}})),
]


def structured_outputs(client, model):
    # The SDK's pydantic helper: a strict json_schema from the model class, parsed back.
    parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
    msgs = [{"role": "system", "content": "You reply in JSON."},
            {"role": "user", "content": "Alice has a dog named Rex, aged 3, and a cat named Tom, aged 5."}]
    r = parse(model=model, messages=msgs, response_format=Owner, temperature=0, max_tokens=200)
    check(r.choices[0].finish_reason == "stop", f"parse: finish_reason {r.choices[0].finish_reason}")
    parsed = r.choices[0].message.parsed
    check(isinstance(parsed, Owner) and all(isinstance(p, Pet) for p in parsed.pets), f"parse: {parsed!r}")

    # json_schema over many schemas, sampled: every answer parses and validates.
    outputs = []
    for i, (strict, schema) in enumerate(SCHEMAS):
        fmt = {"type": "json_schema", "json_schema": {"name": f"schema_{i}", "schema": schema, "strict": strict}}
        r = client.chat.completions.create(
            model=model, temperature=0.8, seed=100 + i, max_tokens=200, response_format=fmt,
            messages=[{"role": "user", "content": "Invent an example answer in JSON."}])
        text = r.choices[0].message.content
        check(r.choices[0].finish_reason == "stop", f"schema {i}: finish_reason {r.choices[0].finish_reason}: {text!r}")
        try:
            value = json.loads(text)
        except ValueError as e:
            raise AssertionError(f"schema {i}: {text!r} is not JSON: {e}")
        why = errors(value, schema)
        check(not why, f"schema {i}: {text} against {json.dumps(schema)}: {why}")
        outputs.append(text)

    # json_object, streamed: the joined content is a JSON object.
    chunks = list(client.chat.completions.create(
        model=model, temperature=0, max_tokens=200, stream=True, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Return a JSON object with the name and colour of a cat."}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    check(finishes == ["stop"], f"json_object streamed: finish_reasons {finishes}: {text!r}")
    check(isinstance(json.loads(text), dict), f"json_object streamed: {text!r}")
    print(json.dumps({"parsed": parsed.model_dump(), "json_schema": outputs[:3], "json_object": text}))


if __name__ == "__main__":
    main()
