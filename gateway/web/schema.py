"""JSON Schema of the API's records, generated from the typed records in `gateway/ports.py`.

The OpenAPI document (gateway/web/openapi.py) was written by hand beside the TypedDicts it describes
and had already lost `photo_dropped`; now a field added to a record appears in /api/openapi.json by
itself. Only what the type cannot say (an id's pattern, the fields the web layer adds) is written
by hand, next to the record's name. tests/test_web_api.py checks every field of every record is there.
"""

from __future__ import annotations

import types
from typing import Any, Literal, NotRequired, Union, get_args, get_origin, get_type_hints, is_typeddict

_SCALARS: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def type_schema(tp: Any) -> dict[str, Any]:
    """The JSON Schema of one annotation (str, int, float, bool, None, Literal, X | None, list, dict,
    a nested TypedDict, Any)."""
    if tp is Any:
        return {}
    if tp in _SCALARS:
        return {"type": _SCALARS[tp]}
    if tp is type(None):
        return {"type": "null"}
    origin = get_origin(tp)
    if origin is Literal:
        return {"enum": list(get_args(tp))}
    if origin in (Union, types.UnionType):
        options = [type_schema(a) for a in get_args(tp)]
        if all(set(o) == {"type"} and isinstance(o["type"], str) for o in options):
            return {"type": [o["type"] for o in options]}  # ["integer", "null"]: the compact form
        if all(set(o) == {"enum"} or o == {"type": "null"} for o in options):
            return {"enum": [v for o in options for v in o.get("enum", [None])]}
        nullable = {"type": "null"} in options
        rest = [o for o in options if o != {"type": "null"}]
        if nullable and len(rest) == 1 and rest[0].get("type") == "object":
            return {**rest[0], "type": ["object", "null"]}
        return {"anyOf": options}
    if origin is list:
        (item,) = get_args(tp)
        return {"type": "array", "items": type_schema(item)}
    if origin is dict or tp is dict:
        return {"type": "object"}
    if is_typeddict(tp):
        return record_schema(tp)
    raise TypeError(f"no JSON Schema for {tp!r}")


def record_schema(
    record: Any,
    *,
    overrides: dict[str, dict[str, Any]] | None = None,
    extra: dict[str, dict[str, Any]] | None = None,
    omit: tuple[str, ...] = (),
) -> dict[str, Any]:
    """An object schema with one property per field of the TypedDict `record` (required = its
    required keys). `overrides` replaces a field's generated schema, `extra` adds fields the API
    adds to the record, `omit` drops fields the API leaves out."""
    hints = get_type_hints(record)
    props = {name: type_schema(tp) for name, tp in hints.items() if name not in omit}
    props.update(overrides or {})
    props.update(extra or {})
    # NotRequired is looked for in the annotations themselves: with postponed annotations (ports.py)
    # Python 3.11 puts a NotRequired field among __required_keys__.
    marked = get_type_hints(record, include_extras=True)
    required = [
        k
        for k in hints
        if k in record.__required_keys__ and get_origin(marked[k]) is not NotRequired and k not in omit
    ]
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    return out
