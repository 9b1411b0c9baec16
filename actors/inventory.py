"""Example domain, critical tier: stock reservations that an order waits on."""

from __future__ import annotations

import logging

from . import critical
from ._work import simulate

logger = logging.getLogger(__name__)


@critical
def reserve_stock(order_id: str, sku: str, qty: int) -> None:
    if qty <= 0:
        raise ValueError(f"order {order_id}: quantity must be positive")
    simulate(2, 10)
    logger.debug("Reserved %d x %s for order %s.", qty, sku, order_id)


@critical
def release_stock(order_id: str, sku: str, qty: int) -> None:
    simulate(2, 10)
    logger.debug("Released %d x %s for order %s.", qty, sku, order_id)
