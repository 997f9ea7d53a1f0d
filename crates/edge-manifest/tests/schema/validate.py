#!/usr/bin/env python3
"""Checks deployment manifests against Microsoft's JSON schemas (SchemaStore copies in ../schemas).

Usage: validate.py template|deployment FILE...
  template:   a deployment.template.json   (azure-iot-edge-deployment-template-4.0)
  deployment: a generated deployment       (azure-iot-edge-deployment-2.0)

Exit status: 0 all valid, 1 some file is invalid (each error printed with its JSON path), 2 bad usage.
Needs the PyPI package jsonschema (4.x); schemas are loaded from disk only, never from the network."""

import json
import pathlib
import sys

import jsonschema

SCHEMAS = pathlib.Path(__file__).resolve().parent.parent / "schemas"
BASE = "https://json.schemastore.org/"
MAIN = {
    "template": "azure-iot-edge-deployment-template-4.0.json",
    "deployment": "azure-iot-edge-deployment-2.0.json",
}


def load_schemas():
    return {p.name: json.loads(p.read_text()) for p in SCHEMAS.glob("*.json")}


def validator_for(kind):
    schemas = load_schemas()
    main = schemas[MAIN[kind]]
    try:  # jsonschema >= 4.18: the referencing library
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT4

        registry = Registry().with_resources(
            (BASE + name, Resource.from_contents(s, default_specification=DRAFT4)) for name, s in schemas.items()
        )
        return jsonschema.Draft4Validator(main, registry=registry)
    except ImportError:  # older jsonschema 4.x
        store = {BASE + name: s for name, s in schemas.items()}
        resolver = jsonschema.RefResolver(base_uri=BASE + MAIN[kind], referrer=main, store=store)
        return jsonschema.Draft4Validator(main, resolver=resolver)


def main(argv):
    if len(argv) < 3 or argv[1] not in MAIN:
        print(__doc__, file=sys.stderr)
        return 2
    validator = validator_for(argv[1])
    bad = 0
    for name in argv[2:]:
        doc = json.loads(pathlib.Path(name).read_text())
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
        for e in errors:
            print(f"{name}: {'->'.join(str(p) for p in e.path)}: {e.message}")
        if errors:
            bad += 1
        else:
            print(f"{name}: valid ({MAIN[argv[1]]})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
