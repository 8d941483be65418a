"""Dask's listeners in a training job accept only the job's own hosts.

The scheduler, every worker and every nanny of a job listen on the job's network, with
no authentication: a peer that can connect can run code there (a worker's or nanny's
``run`` handler, a submitted task) or join as a fake worker. smserve starts each of them
with ``--preload modelapp.training.dask_peers`` (and ``--preload-nanny``); importing this
module replaces Dask's ``tcp://`` backend in that process by one whose listeners close,
before Dask's handshake, every connection whose peer address is not one of
``PEERS_VARIABLE`` (the resolved addresses of the job's hosts, set by ``cluster.py``) or
the loopback address. The VPC's source/destination checks stop a peer from forging one of
those addresses.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from typing import Any

from distributed.comm import registry
from distributed.comm.tcp import TCPBackend, TCPListener

# Dask's processes configure only the ``distributed`` loggers: a child of theirs is seen.
logger = logging.getLogger("distributed.smserve_peers")

# Comma-separated IP addresses of the job's hosts, in the Dask processes' environment.
PEERS_VARIABLE = "SMSERVE_DASK_PEERS"
LOOPBACK = ("127.0.0.1", "::1")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse(address: str) -> Address | None:
    """An IP address (an IPv4 address mapped into IPv6 as its IPv4 self); None when it
    is not one."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def allowed_peers(value: str | None = None) -> frozenset[Address]:
    """The addresses ``PEERS_VARIABLE`` names, and the loopback address."""
    if value is None:
        value = os.environ.get(PEERS_VARIABLE, "")
    names = [*LOOPBACK, *(a.strip() for a in value.split(",") if a.strip())]
    return frozenset(ip for ip in map(parse, names) if ip is not None)


class JobTCPListener(TCPListener):
    """Dask's TCP listener, closing connections from outside the job at once."""

    peers: frozenset[Address] = frozenset()

    async def _handle_stream(self, stream: Any, address: tuple) -> None:
        peer = parse(str(address[0]))
        if peer is None or peer not in self.peers:
            logger.warning(
                "Refused a Dask connection from %s: not one of the job's hosts.",
                address[0],
            )
            stream.close()
            return
        await super()._handle_stream(stream, address)


class JobTCPBackend(TCPBackend):
    _listener_class = JobTCPListener


def install(value: str | None = None) -> None:
    """Make ``tcp://`` listeners of this process accept only the job's hosts."""
    JobTCPListener.peers = allowed_peers(value)
    registry.backends["tcp"] = JobTCPBackend()


# A preload takes effect on import: the scheduler, the nanny and the worker import it in
# their constructors, before they listen.
install()


def dask_setup(server: Any) -> None:
    """Dask's preload entry point; the work is done on import."""
    logger.info(
        "Dask %s accepts connections only from %s.",
        type(server).__name__,
        ", ".join(sorted(map(str, JobTCPListener.peers))),
    )
