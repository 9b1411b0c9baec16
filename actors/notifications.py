"""Example domain, default tier: messages to people, which may wait seconds, not minutes."""

from __future__ import annotations

import logging

from . import default
from ._work import simulate

logger = logging.getLogger(__name__)


@default(queue="email")
def send_email(to: str, subject: str, body: str) -> None:
    simulate(20, 60)
    logger.debug("Sent %r to %s.", subject, to)


@default(circuit="telegram")  # the bot API down: messages wait for it (deferred), no retries burned
def notify(chat_id: int, text: str) -> None:
    simulate(10, 30)
    logger.debug("Notified chat %d.", chat_id)
