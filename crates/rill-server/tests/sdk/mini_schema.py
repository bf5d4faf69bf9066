"""A tiny JSON Schema validator for the keywords the SDK tests use, so the tests need no
`jsonschema` package: type (a name or a list), enum, const, properties, required,
additionalProperties (false only), items, minItems, maxItems, minimum, maximum,
exclusiveMinimum, exclusiveMaximum, minLength, maxLength, pattern and anyOf. Any other keyword
is an error, so a schema cannot pass by using one this file ignores."""

import re

KNOWN = {
    "type", "enum", "const", "properties", "required", "additionalProperties", "items",
    "minItems", "maxItems", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "minLength", "maxLength", "pattern", "anyOf", "description", "title",
}


def is_type(v, t):
    return {
        "object": lambda: isinstance(v, dict),
        "array": lambda: isinstance(v, list),
        "string": lambda: isinstance(v, str),
        "boolean": lambda: isinstance(v, bool),
        "null": lambda: v is None,
        "integer": lambda: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda: isinstance(v, (int, float)) and not isinstance(v, bool),
    }[t]()


def errors(v, s, path="$"):
    """Why `v` does not match schema `s` (a list of messages; empty when it matches)."""
    unknown = set(s) - KNOWN
    if unknown:
        return [f"{path}: the validator does not know {sorted(unknown)}"]
    if "anyOf" in s:
        if all(errors(v, alt, path) for alt in s["anyOf"]):
            return [f"{path}: {v!r} matches no anyOf branch"]
    if "type" in s:
        types = s["type"] if isinstance(s["type"], list) else [s["type"]]
        if not any(is_type(v, t) for t in types):
            return [f"{path}: {v!r} is not {s['type']}"]
    out = []
    if "enum" in s and not any(v == e and type(v) is type(e) for e in s["enum"]):
        out.append(f"{path}: {v!r} not in {s['enum']}")
    if "const" in s and v != s["const"]:
        out.append(f"{path}: {v!r} != {s['const']!r}")
    if isinstance(v, dict):
        props = s.get("properties", {})
        out += [f"{path}: missing {k!r}" for k in s.get("required", []) if k not in v]
        if s.get("additionalProperties") is False:
            out += [f"{path}: extra {k!r}" for k in v if k not in props]
        for k, sub in props.items():
            if k in v:
                out += errors(v[k], sub, f"{path}.{k}")
    if isinstance(v, list):
        if len(v) < s.get("minItems", 0) or len(v) > s.get("maxItems", len(v)):
            out.append(f"{path}: {len(v)} items")
        if "items" in s:
            for i, x in enumerate(v):
                out += errors(x, s["items"], f"{path}[{i}]")
    if isinstance(v, str):
        if len(v) < s.get("minLength", 0) or len(v) > s.get("maxLength", len(v)):
            out.append(f"{path}: length {len(v)}")
        if "pattern" in s and not re.search(s["pattern"], v):
            out.append(f"{path}: {v!r} !~ {s['pattern']}")
    if is_type(v, "number"):
        if "minimum" in s and v < s["minimum"] or "maximum" in s and v > s["maximum"]:
            out.append(f"{path}: {v} out of [{s.get('minimum')}, {s.get('maximum')}]")
        if "exclusiveMinimum" in s and v <= s["exclusiveMinimum"]:
            out.append(f"{path}: {v} <= {s['exclusiveMinimum']}")
        if "exclusiveMaximum" in s and v >= s["exclusiveMaximum"]:
            out.append(f"{path}: {v} >= {s['exclusiveMaximum']}")
    return out


def self_test():
    """The validator rejects what it must (a validator that accepts everything tests nothing)."""
    s = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}, "e": {"enum": ["a"]},
         "l": {"type": "array", "items": {"type": "string"}, "maxItems": 1}}, "required": ["n"],
         "additionalProperties": False}
    assert not errors({"n": 2, "e": "a", "l": ["x"]}, s)
    for bad in [{"e": "a"}, {"n": 0}, {"n": 1.5}, {"n": True}, {"n": 1, "e": "b"}, {"n": 1, "x": 1},
                {"n": 1, "l": ["x", "y"]}, {"n": 1, "l": [1]}, []]:
        assert errors(bad, s), bad
    assert errors(None, {"anyOf": [{"type": "string"}, {"type": "integer"}]})
    assert not errors(None, {"anyOf": [{"type": "string"}, {"type": "null"}]})
    assert errors(1, {"type": "integer", "format": "int32"})
