"""Protobuf messages as the `--json` documents of the `tiergen` command.

protobuf's JSON mapping writes 64-bit integers (int64, uint64, sint64, fixed64, sfixed64 and
their wrappers) as strings, for JavaScript's sake; a credit balance or a seed printed as "400"
makes every `jq` filter and script compare strings. Here they are JSON numbers, as every other
integer is: Python's json, jq 1.7 and most consumers read them exactly. Everything else is the
JSON mapping as protobuf writes it, with the fields' proto names (`account_id`). Map keys stay
strings, as JSON's object keys must be.
"""

from __future__ import annotations

from typing import Any, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

__all__ = ["message_document"]

_INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
#: Well-known wrappers written as their bare (string) value.
_INT64_WRAPPERS = frozenset({"google.protobuf.Int64Value", "google.protobuf.UInt64Value"})


def message_document(message: Message) -> dict[str, Any]:
    """`message` as a JSON-ready dict: the JSON mapping with proto field names, 64-bit
    integers as numbers (found by walking the message's descriptors)."""
    document: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return _numbers(cast(Descriptor, message.DESCRIPTOR), document)


def _numbers(descriptor: Descriptor, document: dict[str, Any]) -> dict[str, Any]:
    """`document` (a message of type `descriptor`) with its 64-bit integers as numbers."""
    for field in descriptor.fields:
        if field.name in document:
            document[field.name] = _field(field, document[field.name])
    return document


def _field(field: FieldDescriptor, value: Any) -> Any:
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        item = entry.fields_by_name["value"]
        return {key: _single(item, element) for key, element in value.items()}
    if field.is_repeated:
        return [_single(field, element) for element in value]
    return _single(field, value)


def _single(field: FieldDescriptor, value: Any) -> Any:
    """One value of `field` (not a whole repeated field or map)."""
    if field.type in _INT64_TYPES:
        return int(value)
    kind = field.message_type
    if kind is None:
        return value
    if kind.full_name in _INT64_WRAPPERS:
        return int(value)
    # Other well-known types (Timestamp, Duration, Struct, Any) keep their own JSON shapes.
    if isinstance(value, dict) and not kind.full_name.startswith("google.protobuf."):
        return _numbers(kind, value)
    return value
