"""Validates OCSF events for tests/formats_reference.rs.

Reads a JSON list of [name, event] on stdin; prints one line per event,
"NAME<TAB>valid" or "NAME<TAB>invalid: reasons". Each event is checked against
the JSON Schema (draft 2020-12) that PyPI's ocsf-json-schema builds from the OCSF
schema it ships, for the event's class (class_uid), version (metadata.version)
and profiles (metadata.profiles): unknown attributes, types, enums, required
attributes, IP address patterns. Then the rules a JSON Schema does not carry:
type_uid = class_uid * 100 + activity_id, category_uid and the captions
(class_name, category_name, activity_name, type_name, severity, disposition,
status, direction) matching their ids.
"""

import json
import sys

import jsonschema
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

SCHEMAS = {}


def ocsf(version):
    if version not in SCHEMAS:
        raw = get_ocsf_schema(version=version)
        SCHEMAS[version] = (raw, OcsfJsonSchemaEmbedded(raw))
    return SCHEMAS[version]


def class_of(raw, class_uid):
    for name, cls in raw["classes"].items():
        if cls.get("uid") == class_uid:
            return name, cls
    raise KeyError(f"no class {class_uid}")


def caption(attrs, attr, value):
    enum = attrs.get(attr, {}).get("enum", {})
    entry = enum.get(str(value))
    return entry and entry.get("caption")


def semantic_problems(raw, event):
    out = []
    name, cls = class_of(raw, event["class_uid"])
    attrs = cls["attributes"]
    activity = event.get("activity_id")
    if event.get("type_uid") != event["class_uid"] * 100 + activity:
        out.append(f"type_uid {event.get('type_uid')} is not class_uid * 100 + activity_id")
    if event.get("class_name") != cls["caption"]:
        out.append(f"class_name {event.get('class_name')!r} is not {cls['caption']!r}")
    if event.get("category_uid") != cls["category_uid"]:
        out.append(f"category_uid {event.get('category_uid')} is not {cls['category_uid']}")
    if event.get("category_name") != cls["category_name"]:
        out.append(f"category_name {event.get('category_name')!r} is not {cls['category_name']!r}")
    want = caption(attrs, "activity_id", activity)
    # 99 (Other) takes a name of the producer's own.
    if activity != 99 and event.get("activity_name") != want:
        out.append(f"activity_name {event.get('activity_name')!r} is not {want!r}")
    if event.get("type_name") != f"{cls['caption']}: {event.get('activity_name')}":
        out.append(f"type_name {event.get('type_name')!r}")
    for id_attr, name_attr in [("severity_id", "severity"), ("disposition_id", "disposition"), ("status_id", "status")]:
        if id_attr in event:
            want = caption(attrs, id_attr, event[id_attr])
            if event.get(name_attr) != want:
                out.append(f"{name_attr} {event.get(name_attr)!r} is not {want!r} ({id_attr} {event[id_attr]})")
    info = event.get("connection_info")
    if info is not None:
        conn = raw["objects"]["network_connection_info"]["attributes"]
        want = caption(conn, "direction_id", info.get("direction_id"))
        if info.get("direction") != want:
            out.append(f"connection_info.direction {info.get('direction')!r} is not {want!r}")
    return out


def check(event):
    version = event["metadata"]["version"]
    raw, schemas = ocsf(version)
    class_name, _ = class_of(raw, event["class_uid"])
    schema = schemas.get_class_schema(class_name=class_name, profiles=event["metadata"].get("profiles", []))
    validator = jsonschema.Draft202012Validator(schema)
    problems = [f"{'/'.join(map(str, e.absolute_path)) or '(event)'}: {e.message}" for e in validator.iter_errors(event)]
    return problems + semantic_problems(raw, event)


def main():
    for name, event in json.load(sys.stdin):
        try:
            problems = check(event)
        except Exception as e:  # a missing class or version is a failure too
            problems = [f"{type(e).__name__}: {e}"]
        verdict = "valid" if not problems else "invalid: " + "; ".join(problems)
        print(f"{name}\t{verdict}".replace("\n", " "))


main()
