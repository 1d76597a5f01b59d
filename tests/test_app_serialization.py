"""fluxcore.app serialization and upcasting: round trips of each payload kind, type names and
revisions, upcaster chains (rename, drop, loops) applied to messages, streams and snapshots."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec
import pytest

from fluxcore.app import (
    Microclient,
    SerializationError,
    Serializer,
    TestFixture,
    Upcast,
    aggregate,
    apply,
    handle_event,
    payload,
    upcaster,
)


class StructPayload(msgspec.Struct):
    name: str
    count: int = 0


@dataclasses.dataclass
class DataPayload:
    name: str
    tags: list[str]


@payload(type="renamed-on-the-wire", revision=3)
class Configured(msgspec.Struct):
    value: int


@pytest.mark.parametrize("value", [
    StructPayload("a", 2), DataPayload("b", ["x", "y"]), Configured(7),
])
def test_classes_round_trip(value: Any) -> None:
    serializer = Serializer()
    encoded = serializer.encode(value)
    assert encoded.type == {StructPayload: "StructPayload", DataPayload: "DataPayload",
                            Configured: "renamed-on-the-wire"}[type(value)]
    assert encoded.revision == (3 if isinstance(value, Configured) else 0)
    assert msgspec.json.decode(encoded.data) == msgspec.to_builtins(value)
    # by the class asked for, and by the type name alone once the class is known
    assert serializer.decode(encoded.data, encoded.type, encoded.revision, type(value)) == value
    assert Serializer().decode(encoded.data, encoded.type, encoded.revision) != value
    assert serializer.decode(encoded.data, encoded.type, encoded.revision) == value


def test_pydantic_round_trip() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Model(pydantic.BaseModel):  # type: ignore[misc, name-defined]
        name: str
        size: int

    serializer = Serializer()
    encoded = serializer.encode(Model(name="m", size=3))
    assert encoded.type == "Model"
    assert serializer.decode(encoded.data, "Model", 0, Model) == Model(name="m", size=3)


def test_dicts_lists_and_bytes() -> None:
    serializer = Serializer()
    as_json = serializer.encode({"a": [1, 2]})
    assert (as_json.type, as_json.data) == ("json", b'{"a":[1,2]}')
    assert serializer.decode(as_json.data, as_json.type, 0) == {"a": [1, 2]}
    assert serializer.encode([1, "x"], type="Pair").type == "Pair"
    raw = serializer.encode(b"\x00\xff")
    assert (raw.type, raw.data) == ("bytes", b"\x00\xff")
    assert serializer.decode(raw.data, raw.type, 0) == b"\x00\xff"
    assert serializer.decode(b"not json", "Anything", 0, bytes) == b"not json"


def test_bad_payloads_get_clear_errors() -> None:
    serializer = Serializer()
    with pytest.raises(SerializationError, match="cannot encode a object"):
        serializer.encode(object())
    with pytest.raises(SerializationError, match="does not decode into StructPayload"):
        serializer.decode(b'{"name": 5}', "StructPayload", 0, StructPayload)
    with pytest.raises(SerializationError, match="not JSON"):
        serializer.decode(b"{", "Unknown", 0)
    serializer.register(StructPayload)

    @payload(type="StructPayload")
    class Clash(msgspec.Struct):
        x: int

    with pytest.raises(ValueError, match="two payload classes"):
        serializer.register(Clash)


# -- upcasting ------------------------------------------------------------------------------

@payload(revision=2)
class Customer(msgspec.Struct):
    full_name: str
    country: str


@upcaster("Customer", 0)
def customer_0_to_1(data: dict[str, Any]) -> dict[str, Any]:
    return {"full_name": data.pop("name"), **data}


@upcaster("Customer", 1)
def customer_1_to_2(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "country": data.get("country", "NL")}


@upcaster("Client", 5)
def client_renamed(data: dict[str, Any]) -> Upcast:
    return Upcast("Customer", 0, data)


@upcaster("Obsolete", 0)
def obsolete_dropped(data: dict[str, Any]) -> None:
    return None


def upcasting_app() -> Microclient:
    return Microclient("upcast").register(customer_0_to_1, customer_1_to_2, client_renamed,
                                          obsolete_dropped, Customer)


def test_upcaster_chains() -> None:
    serializer = upcasting_app().serializer
    assert serializer.decode(b'{"name": "Ann"}', "Customer", 0) == Customer("Ann", "NL")
    assert serializer.decode(b'{"full_name": "Bo", "country": "BE"}', "Customer", 1) == \
        Customer("Bo", "BE")
    assert serializer.decode(b'{"full_name": "Cy", "country": "DE"}', "Customer", 2) == \
        Customer("Cy", "DE")
    # a rename to another type, then that type's chain
    assert serializer.decode(b'{"name": "Di"}', "Client", 5) == Customer("Di", "NL")
    found = serializer.read(b"{}", "Obsolete", 0, lambda _name: None)
    assert found is None


def test_upcaster_loop_and_duplicates_are_errors() -> None:
    @upcaster("Ping", 0)
    def ping(data: Any) -> Upcast:
        return Upcast("Ping", 0, data)

    app = Microclient("loop").register(ping)
    with pytest.raises(ValueError, match="loop"):
        app.serializer.decode(b"{}", "Ping", 0)
    with pytest.raises(ValueError, match="registered already"):
        app.register(ping)


def test_handlers_and_aggregates_see_upcast_payloads() -> None:
    seen: list[Any] = []

    @handle_event
    def on_customer(event: Customer) -> None:
        seen.append(event)

    @aggregate(snapshot_every=2)
    class Registry(msgspec.Struct):
        names: list[str]

        @apply
        @staticmethod
        def first(event: Customer) -> Registry:
            return Registry([event.full_name])

    app = upcasting_app().register(on_customer)
    fixture = TestFixture(app)
    memory = fixture.memory
    assert memory is not None
    # messages: an old revision and a renamed type are upcast; a dropped one never arrives
    for data, ptype, rev in [(b'{"name": "Ann"}', "Customer", 0), (b'{"name": "Bo"}', "Client", 5),
                             (b"{}", "Obsolete", 0)]:
        fixture._drive(memory._deliver(_event_type(), None,
                                       memory._message(_encoded(data, ptype, rev), None)))
    assert seen == [Customer("Ann", "NL"), Customer("Bo", "NL")]
    # event streams: an old event in the stream is upcast when the aggregate loads
    memory.streams["reg-1"] = [memory._message(_encoded(b'{"name": "Cy"}', "Customer", 0),
                                               None)]
    memory.streams["reg-1"][0].index = 0
    assert app.load(Registry, "reg-1").state == Registry(["Cy"])
    # snapshots: stored with their class's type and revision, upcast when read back
    memory.values["$snapshot_reg-2"] = (
        b'{"sequence": 0, "type": "Registry", "revision": 0, "state": {"names": ["old"]}}')

    @upcaster("Registry", 0)
    def registry_0_to_1(data: dict[str, Any]) -> dict[str, Any]:
        return {"names": [n.upper() for n in data["names"]]}

    app.register(registry_0_to_1)
    assert app.load(Registry, "reg-2").state == Registry(["OLD"])


def _event_type() -> Any:
    from fluxcore.client import MessageType

    return MessageType.EVENT


def _encoded(data: bytes, ptype: str, revision: int) -> Any:
    from fluxcore.app.serialization import Encoded

    return Encoded(data, ptype, revision)


@dataclasses.dataclass
class Tagged:
    name: str
    tags: list[str]


def test_handlers_take_dataclasses_pydantic_dicts_and_bytes() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Person(pydantic.BaseModel):  # type: ignore[misc, name-defined]
        name: str

    seen: list[Any] = []
    app = Microclient("kinds")

    @app.handle_command
    def on_tagged(command: Tagged) -> Tagged:
        seen.append(command)
        return Tagged(command.name.upper(), command.tags)

    def on_person(person: Any) -> None:
        seen.append(person)

    # A class local to this test: its annotation cannot be a string looked up later.
    on_person.__annotations__["person"] = Person
    app.consumer("people").handle_event(on_person)

    @app.handle_query
    def on_anything(query: dict[str, Any]) -> bytes:
        return repr(sorted(query)).encode()

    fixture = TestFixture(app)
    fixture.when_command(Tagged("a", ["x"])).expect_result(Tagged("A", ["x"]))
    fixture.when_event(Person(name="pat"))
    fixture.when_query({"b": 1, "a": 2}).expect_result(b"['a', 'b']")
    assert seen == [Tagged("a", ["x"]), Person(name="pat")]



def test_an_annotation_out_of_scope_is_a_clear_error() -> None:
    class Local(msgspec.Struct):
        x: int

    def handler(payload: Local) -> None: ...

    with pytest.raises(TypeError, match="not in scope"):
        Microclient("scope").register(handle_event(handler))
