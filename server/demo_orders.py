"""An order service as a microclient: the example README.md leads with; the demo runs it."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import msgspec

from fluxcore.app import (
    FunctionalError,
    Microclient,
    RoutingKey,
    aggregate,
    apply,
    assert_legal,
    periodic,
)


class PlaceOrder(msgspec.Struct):
    order_id: Annotated[str, RoutingKey]  # commands of one order stay in order
    items: list[str]


class ShipOrder(msgspec.Struct):
    order_id: Annotated[str, RoutingKey]


class OrderPlaced(msgspec.Struct):
    order_id: str
    items: list[str]


class OrderShipped(msgspec.Struct):
    order_id: str


class GetOrder(msgspec.Struct):
    order_id: str


class OrderView(msgspec.Struct):
    order_id: str
    items: list[str]
    shipped: bool = False


class RemindUnshipped(msgspec.Struct):
    pass


class IllegalCommand(FunctionalError):
    """The requester gets this class back, raised."""


@aggregate(snapshot_every=100)
class Order(msgspec.Struct):
    order_id: str
    items: list[str]
    shipped: bool = False

    @apply
    @staticmethod
    def placed(event: OrderPlaced) -> Order:
        return Order(event.order_id, event.items)

    @apply
    def on_shipped(self, event: OrderShipped) -> Order:
        return msgspec.structs.replace(self, shipped=True)

    @assert_legal
    def can_ship(self: Order | None, command: ShipOrder) -> None:
        if self is None:
            raise IllegalCommand("no such order")
        if self.shipped:
            raise IllegalCommand("already shipped")


app = Microclient("orders", "127.0.0.1:8765", token="dev")
views = app.consumer("order-views")  # a second consumer: the projection


@app.handle_command
def place(command: PlaceOrder) -> str:
    order = app.load(Order, command.order_id)
    if order.state is not None:
        raise IllegalCommand("order exists")
    order.apply(OrderPlaced(command.order_id, command.items))  # committed when this returns
    return command.order_id


@app.handle_command
def ship(command: ShipOrder) -> None:
    order = app.load(Order, command.order_id)
    order.assert_legal(command).apply(OrderShipped(command.order_id))


@views.handle_event
def project(event: OrderPlaced | OrderShipped) -> None:
    key = f"order-view/{event.order_id}"
    if isinstance(event, OrderPlaced):
        app.store_value(key, OrderView(event.order_id, event.items))
    else:
        view = app.get_value(key, OrderView)
        if view is not None:
            app.store_value(key, msgspec.structs.replace(view, shipped=True))


@app.handle_query
def get_order(query: GetOrder) -> OrderView | None:
    return app.get_value(f"order-view/{query.order_id}", OrderView)


reminders: list[str] = []


@app.handle_schedule
@periodic(every=timedelta(hours=1))
def remind(job: RemindUnshipped) -> None:
    reminders.append(f"checked at {app.now():%H:%M}")


if __name__ == "__main__":
    app.run()  # until SIGINT or SIGTERM
