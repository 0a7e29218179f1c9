"""Generated Riva request messages: any value in every field, built by hypothesis from the message's
own protobuf descriptor (the classes nvidia-riva-client ships), so a field Riva adds is generated
too. A servicer may answer OK or refuse with a status the client can act on; UNKNOWN or INTERNAL
(an exception that escaped) is a defect."""

from __future__ import annotations

import os
from functools import lru_cache

from hypothesis import strategies as st

ALLOWED = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "OUT_OF_RANGE"}
EXAMPLES = int(os.environ.get("NIMBUILD_API_EXAMPLES") or 8) * 5  # per RPC; make fuzz runs 500
_SCALARS = {
    "TYPE_STRING": st.text(max_size=40) | st.sampled_from(["en-US", "de-DE", "en", "de", ""]),
    "TYPE_BYTES": st.binary(max_size=2048) | st.sampled_from([b"RIFF\x00\x00\x00\x00WAVE", b"fLaC", b"OggS"]),
    "TYPE_BOOL": st.booleans(),
    "TYPE_FLOAT": st.floats(width=32, allow_nan=True),
    "TYPE_DOUBLE": st.floats(allow_nan=True),
}
_INTS = {"TYPE_INT32": 31, "TYPE_SINT32": 31, "TYPE_SFIXED32": 31, "TYPE_INT64": 63, "TYPE_SINT64": 63,
         "TYPE_SFIXED64": 63, "TYPE_UINT32": 32, "TYPE_FIXED32": 32, "TYPE_UINT64": 64, "TYPE_FIXED64": 64}


@lru_cache(maxsize=None)  # one strategy per field: built anew for every draw, generation crawled
def _field_values(field, depth: int):
    kind = _type_name(field.type)
    if kind == "TYPE_MESSAGE":
        return messages(field.message_type, depth + 1) if depth < 3 else st.none()
    if kind == "TYPE_ENUM":
        numbers = [v.number for v in field.enum_type.values]
        return st.sampled_from(numbers) | st.integers(-5, 50)  # a number the enum does not name, too
    if kind in _INTS:
        bits = _INTS[kind]
        low = 0 if kind.startswith(("TYPE_UINT", "TYPE_FIXED")) else -(1 << bits)
        return st.sampled_from([0, 1, 8000, 16000, 22050, 48000, 192000, 192001]) | st.integers(low, (1 << bits) - 1)
    return _SCALARS[kind]


def _type_name(number: int) -> str:
    from google.protobuf.descriptor import FieldDescriptor

    return next(name for name in dir(FieldDescriptor) if name.startswith("TYPE_") and getattr(FieldDescriptor, name) == number)


@st.composite
def _message(draw, descriptor, depth: int):
    from google.protobuf import message_factory

    cls = message_factory.GetMessageClass(descriptor)
    message = cls()
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue  # left unset: the default, as a client that does not know the field sends it
        values = _field_values(field, depth)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            entries = draw(st.dictionaries(st.text(max_size=12), st.text(max_size=20), max_size=3))
            getattr(message, field.name).update(entries)
        elif _repeated(field):
            items = [v for v in draw(st.lists(values, max_size=3)) if v is not None]
            target = getattr(message, field.name)
            if field.message_type is not None:
                for item in items:
                    target.add().CopyFrom(item)
            else:
                target.extend(items)
        else:
            value = draw(values)
            if value is None:
                continue
            if field.message_type is not None:
                getattr(message, field.name).CopyFrom(value)
            else:
                setattr(message, field.name, value)
    return message


def _repeated(field) -> bool:
    flag = getattr(field, "is_repeated", None)  # newer protobuf; `label` before it
    return flag if isinstance(flag, bool) else field.label == field.LABEL_REPEATED


@lru_cache(maxsize=None)
def messages(descriptor, depth: int = 0):
    return _message(descriptor, depth)


def status_of(call, request, streaming: bool = False) -> tuple[str, str]:
    """(the status name, its details) of a call: unary, or a stream of `request` (a list) read to its end."""
    import grpc

    try:
        if streaming:
            for _ in call(iter(request), timeout=30):
                pass
        else:
            call(request, timeout=30)
        return "OK", ""
    except grpc.RpcError as e:
        return e.code().name, e.details() or ""


def answered_as_documented(port: int, stub_class, unary: dict, streaming: dict | None = None) -> None:
    """EXAMPLES generated requests to each method named (method -> request message class; a
    streaming method gets 1 to 4 of them): every answer OK or an ALLOWED status with a message."""
    import grpc
    from hypothesis import given, settings

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = stub_class(channel)
    try:
        for method, message, many in [(m, c, False) for m, c in unary.items()] + \
                                     [(m, c, True) for m, c in (streaming or {}).items()]:
            generated = messages(message.DESCRIPTOR)

            @settings(max_examples=EXAMPLES, deadline=None, database=None)
            @given(st.lists(generated, min_size=1, max_size=4) if many else generated)
            def answered(request):
                code, details = status_of(getattr(stub, method), request, streaming=many)
                assert code in ALLOWED and (code == "OK" or details), f"{method}: {code} {details!r}"

            answered()
    finally:
        channel.close()
