"""Validates the custom resources of deploy/k8s (ServiceMonitor, InferencePool) against their
CRDs' schemas, vendored in crd-schemas/ (see its README), strictly: like `kubectl apply
--validate=strict`, a field the schema does not list is an error (objects that list
`properties` get `additionalProperties: false` unless they say otherwise or preserve unknown
fields). Run by validate.sh with the venv that has `kubernetes-validate` (PyYAML, jsonschema).
    python3 validate_crs.py FILE.yaml...
Exits non-zero if a resource of a kind with a schema fails; other kinds are skipped.
"""

import glob
import json
import os
import sys

import jsonschema
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))


def strict(s):
    if isinstance(s, dict):
        s = {k: strict(v) for k, v in s.items()}
        if ("properties" in s and "additionalProperties" not in s
                and not s.get("x-kubernetes-preserve-unknown-fields")):
            s["additionalProperties"] = False
        return s
    if isinstance(s, list):
        return [strict(v) for v in s]
    return s


def schemas():
    out = {}
    for path in glob.glob(os.path.join(HERE, "crd-schemas", "*.json")):
        doc = json.load(open(path))
        out[(f"{doc['group']}/{doc['version']}", doc["kind"])] = strict(doc["schema"])
    return out


def main(files):
    known, failed = schemas(), 0
    for f in files:
        for obj in yaml.safe_load_all(open(f)):
            if not obj:
                continue
            key = (obj.get("apiVersion"), obj.get("kind"))
            if key not in known:
                continue
            errors = sorted(jsonschema.Draft7Validator(known[key]).iter_errors(obj), key=str)
            for e in errors:
                print(f"ERROR {f}: {key[1]} {'.'.join(map(str, e.absolute_path))}: {e.message}")
            failed += bool(errors)
            if not errors:
                print(f"{f}: {key[1]} ({key[0]}) is valid against its CRD schema")
    return failed


if __name__ == "__main__":
    sys.exit(1 if main(sys.argv[1:]) else 0)
