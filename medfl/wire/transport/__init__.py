"""ZeroMQ channels: a ROUTER at the coordinator, a DEALER at each agent (agents connect out).

With keys, both sides run CurveZMQ (encryption, integrity, mutual authentication): the server
(:mod:`medfl.wire.transport.server`) guards its socket with the ZAP allow-list of
:mod:`medfl.wire.auth`, the client (:mod:`medfl.wire.transport.client`) pins the server's
public key. Without keys the same classes speak plaintext (NULL mechanism): the in-process twin
over ``inproc://`` endpoints and tests of the plain path. The limits and options both ends share
are :mod:`medfl.wire.transport.sockets`.

In-process twin: with ``inproc://`` endpoints, ``keys=None`` and one shared context the same
classes run without the network (no CURVE, no ZMQ_MAXMSGSIZE: libzmq applies neither to
inproc; the application limit, replay guard and error replies still hold).

References
----------
.. [1] ZeroMQ RFC 23/ZMTP (heartbeats), RFC 26/CURVEZMQ.
"""

from medfl.wire.transport.client import ClientChannel
from medfl.wire.transport.server import Incoming, ServerChannel
from medfl.wire.transport.sockets import SocketLimits

__all__ = ["ClientChannel", "Incoming", "ServerChannel", "SocketLimits"]
