"""Example domain, critical tier: taking an order and charging for it."""

from __future__ import annotations

import logging

from . import critical
from ._work import simulate
from .inventory import reserve_stock
from .notifications import send_email

logger = logging.getLogger(__name__)


@critical
def place_order(order_id: str, customer_email: str, lines: list[dict[str, str | int]]) -> None:
    """Reserve every line, then confirm by email (default tier, it can wait a little)."""
    simulate(2, 8)
    for line in lines:
        reserve_stock.send(order_id, str(line["sku"]), int(line["qty"]))
    send_email.send(customer_email, f"Order {order_id} confirmed", f"{len(lines)} line(s) reserved.")


@critical(max_retries=3)
def charge_payment(order_id: str, amount_cents: int, currency: str = "EUR") -> None:
    simulate(5, 20)
    logger.debug("Charged %d %s for order %s.", amount_cents, currency, order_id)
