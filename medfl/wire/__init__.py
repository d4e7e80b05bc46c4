"""The wire: envelopes, CURVE keys, the ZAP allow-list and ROUTER/DEALER channels."""

from medfl.wire.envelope import Envelope, SequenceGuard, decode, encode
from medfl.wire.keys import (
    KeyPair,
    check_fingerprint,
    fingerprint,
    generate_keypair,
    read_keypair,
    read_public_key,
    write_keypair,
)
from medfl.wire.messages import PROTOCOL_VERSION, MessageType
from medfl.wire.transport import ClientChannel, Incoming, ServerChannel, SocketLimits

__all__ = [
    "PROTOCOL_VERSION",
    "ClientChannel",
    "Envelope",
    "Incoming",
    "KeyPair",
    "MessageType",
    "SequenceGuard",
    "ServerChannel",
    "SocketLimits",
    "check_fingerprint",
    "decode",
    "encode",
    "fingerprint",
    "generate_keypair",
    "read_keypair",
    "read_public_key",
    "write_keypair",
]
