"""MQTT brokers for tests and rigs, behind one start/stop interface.

``embedded`` (amqtt, in-process, can check JetLinks credentials), ``mosquitto``
(the system binary), ``container`` (mosquitto via testcontainers) and an
``mqtt://host:port`` URL for a broker someone else runs.
"""

from __future__ import annotations

from .base import Broker, BrokerUnavailable
from .container import ContainerBroker
from .embedded import Authenticator, EmbeddedBroker
from .external import ExternalBroker
from .mosquitto import MosquittoBroker

__all__ = [
    "BROKER_CHOICES",
    "Authenticator",
    "Broker",
    "BrokerUnavailable",
    "ContainerBroker",
    "EmbeddedBroker",
    "ExternalBroker",
    "MosquittoBroker",
    "make_broker",
]

BROKER_CHOICES = ("embedded", "mosquitto", "container")

_VALID_SPECS = "'embedded', 'mosquitto', 'container' or an mqtt://host:port URL"


def make_broker(
    spec: str,
    *,
    authenticator: Authenticator | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
) -> Broker:
    """The broker a command-line or ini ``spec`` names (not started yet). ``host`` and
    ``port`` (0: a free one) are where a broker the harness starts listens."""
    spec = spec.strip()
    broker: Broker
    if spec == "embedded":
        return EmbeddedBroker(host, port, authenticator=authenticator)
    if spec == "mosquitto":
        broker = MosquittoBroker(host=host, port=port)
    elif spec == "container":
        broker = ContainerBroker()
    elif "://" in spec:
        try:
            broker = ExternalBroker(spec)
        except ValueError as exc:
            raise ValueError(f"{exc}; a broker is {_VALID_SPECS}") from None
    else:
        raise ValueError(f"unknown broker {spec!r}: use {_VALID_SPECS}")
    if port and spec != "mosquitto":
        raise ValueError(
            f"a listening port ({port}) is for a broker the harness starts; the {broker.kind} "
            "broker listens where it listens"
        )
    if authenticator is not None:
        raise ValueError(
            f"JetLinks auth checking needs the embedded broker; the {broker.kind} broker"
            " cannot run an authenticator"
        )
    return broker
