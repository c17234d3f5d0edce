"""Checks every example of an OpenAPI 3.1 document against the schema it illustrates: a
schema's own `example`/`examples`, and a media type's `example` against its `schema`.
Formats (uuid, date-time, date, email) are checked too. Prints each invalid example and
exits 1 when there is one.

Usage: python check_examples.py DOCUMENT.json
"""

import json
import sys

from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

ROOT = "urn:openapi-document"


def rooted(node):
    """The node with its local `$ref`s made absolute, so they resolve in the document."""
    if isinstance(node, dict):
        return {
            key: ROOT + value
            if key == "$ref" and isinstance(value, str) and value.startswith("#")
            else rooted(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [rooted(item) for item in node]
    return node


def main(path):
    with open(path, encoding="utf-8") as file:
        document = json.load(file)
    registry = Registry().with_resource(
        ROOT, Resource.from_contents(document, default_specification=DRAFT202012)
    )
    invalid = []

    def check(schema, example, where):
        schema = {k: v for k, v in schema.items() if k not in ("example", "examples")}
        validator = Draft202012Validator(
            rooted(schema), registry=registry, format_checker=FormatChecker()
        )
        for error in validator.iter_errors(example):
            at = "/".join(str(p) for p in error.absolute_path)
            invalid.append(f"{where}: at /{at}: {error.message[:300]}")

    for name, schema in document.get("components", {}).get("schemas", {}).items():
        if "example" in schema:
            check(schema, schema["example"], f"schema {name}")
        for i, example in enumerate(schema.get("examples", [])):
            check(schema, example, f"schema {name} examples[{i}]")
    for route, item in document.get("paths", {}).items():
        for method, operation in item.items():
            media = [("request", t, m) for t, m in
                     operation.get("requestBody", {}).get("content", {}).items()]
            for status, answer in operation.get("responses", {}).items():
                media += [(status, t, m) for t, m in answer.get("content", {}).items()]
            for what, content_type, medium in media:
                if "example" in medium:
                    check(medium.get("schema", {}), medium["example"],
                          f"{method.upper()} {route} {what} {content_type}")
    for line in invalid:
        print(line)
    return 1 if invalid else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
