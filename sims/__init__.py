"""The SimPy world: loss channels, radio profiles, broadcast bounds and fleet files.

See ``docs/simulation.md``.
"""

from .bounds import arq_bound, expected_max_geometric, ideal_code_bound, ideal_code_expected
from .channels import (
    BernoulliChannel,
    Channel,
    GilbertElliottChannel,
    link_losses,
    make_channel,
    rng_stream,
)
from .fleetfile import FaultSpec, FleetFileError, FleetSpec, NodeOverride, load_fleet
from .radio import PROFILES, RadioProfile, profile_with

__all__ = [
    "PROFILES",
    "BernoulliChannel",
    "Channel",
    "FaultSpec",
    "FleetFileError",
    "FleetSpec",
    "GilbertElliottChannel",
    "NodeOverride",
    "RadioProfile",
    "arq_bound",
    "expected_max_geometric",
    "ideal_code_bound",
    "ideal_code_expected",
    "link_losses",
    "load_fleet",
    "make_channel",
    "profile_with",
    "rng_stream",
]
