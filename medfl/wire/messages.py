"""Message types of the agent <-> coordinator protocol and their bodies.

Direction and body keys (``body`` is the msgpack map in the envelope header; weights travel
as raw tensor frames, never pickled):

- HELLO (agent -> coordinator): name, version, models (list), min_parties, train_samples,
  val_samples. Sent until WELCOME arrives, and again after an ``unknown_peer`` error.
- WELCOME (coordinator -> agent): coordinator (its name).
- HEARTBEAT (agent -> coordinator): empty; keeps the session alive between rounds.
- JOB_OFFER (coordinator -> agent): the job spec (see :mod:`medfl.jobspec`).
- JOB_ACCEPT / JOB_REFUSE (agent -> coordinator): {} / reason. A refusal quotes the local
  policy that forbids the job or round.
- TRAIN (coordinator -> agent): participants, local_epochs, batch_size, lr, momentum,
  weight_decay, fedprox_mu, attempt; tensors = the global weights.
- UPDATE (agent -> coordinator): num_samples, train_loss, seconds; tensors = trained weights.
- EVALUATE (coordinator -> agent): {}; tensors = the new global weights.
- METRICS (agent -> coordinator): n, auc, accuracy, loss (on the agent's validation split).
- SECAGG_KEYS (agent -> coordinator): phase, attempt, c_public, s_public (secure aggregation,
  round 0; TRAIN and EVALUATE of a secure job carry ``secure``: the round's parameters).
- SECAGG_ROSTER (coordinator -> agent): phase, attempt, keys {agent: [c_public, s_public]},
  graph_seed, degree, threshold, nonce.
- SECAGG_SHARES (agent -> coordinator): phase, attempt, sealed {receiver: AEAD ciphertext}.
- SECAGG_DELIVERY (coordinator -> agent): phase, attempt, sealed {sender: AEAD ciphertext}.
- MASKED_INPUT (agent -> coordinator): phase, attempt; tensors = {"masked": uint32/uint64 vector}.
- SECAGG_UNMASK_REQUEST (coordinator -> agent): phase, attempt, survivors, dropped.
- SECAGG_UNMASK (agent -> coordinator): phase, attempt, self_mask_shares, key_shares.
- ERROR (either way): code, message, in_reply_to (the offending seq, or None).
- BYE (agent -> coordinator): {}; the agent is shutting down.
- ENROLL (agent -> coordinator, over an invitation's key; :mod:`medfl.wire.invitation`):
  invitation (the file's signed fields and mac), public_key (the agent's own Z85 key).
- ENROLLED (coordinator -> agent): fingerprint, name, coordinator; the agent's key is approved
  and the invitation spent. A refusal is an ERROR saying why (used, expired, edited, ...).

Encrypted inference (:mod:`medfl.smpc`; the model server's and the dealer's own sockets):

- SMPC_REQUEST (data owner -> model server): model, images, party_key (raw X25519, 32 bytes).
- SMPC_QUEUED (model server -> data owner): session, position (requests are served in order).
- SMPC_ANNOUNCE (model server -> data owner): session, description (registry name, kwargs,
  in_shape, frac_bits, calibration ranges: data, never code), dealer_key, images, rounds.
- DEALER_REQUEST (model server -> dealer): session, plan (kinds and shapes), party_keys.
- SMPC_MATERIAL (dealer -> model server, relayed to the data owner for party 0): session,
  party, seq, last; tensors c = ChaCha20-Poly1305 ciphertext sealed to that party alone.
- SMPC_SHARE (either compute party): session, step; tensors s = one share of one opening.
- SMPC_DONE (data owner -> model server): session; the session is closed.
- SMPC_ABORT (any party): session, code, message.

Compatibility rules: message types and body fields are never removed or re-purposed; new
fields are optional and ignored by older peers; a change that breaks these rules bumps
:data:`PROTOCOL_VERSION`, which each side checks on every message.

Versions: 1, the first; 2, a tensor larger than :data:`medfl.wire.envelope.FRAME_BYTES` travels
as several consecutive frames (its header spec says how many). Version 2 peers read version 1
messages; a version 1 peer refuses version 2 ones with UNSUPPORTED_VERSION.
"""

from __future__ import annotations

import enum

__all__ = ["PROTOCOL_VERSION", "REFUSED_RETRY_MAX_S", "SUPPORTED_VERSIONS", "MessageType"]

PROTOCOL_VERSION = 2
SUPPORTED_VERSIONS = frozenset({1, PROTOCOL_VERSION})

#: an agent whose CURVE handshake was refused (its key not approved yet) reconnects with a
#: back-off that doubles from 2 s up to this cap; ``medfl-coordinator nodes approve`` quotes it
#: as the longest wait before a just-approved agent connects. Kept short: a refused try costs
#: the coordinator one handshake and one SQLite write, and the operator is waiting.
REFUSED_RETRY_MAX_S = 10.0


class MessageType(enum.StrEnum):
    """The kinds of envelope on the wire (values are the lower-case names sent in ``type``).

    References
    ----------
    .. [1] The message table in this module's docstring; ZeroMQ RFC 23/ZMTP for framing.
    """

    HELLO = "hello"
    WELCOME = "welcome"
    HEARTBEAT = "heartbeat"
    JOB_OFFER = "job_offer"
    JOB_ACCEPT = "job_accept"
    JOB_REFUSE = "job_refuse"
    TRAIN = "train"
    UPDATE = "update"
    EVALUATE = "evaluate"
    METRICS = "metrics"
    SECAGG_KEYS = "secagg_keys"
    SECAGG_ROSTER = "secagg_roster"
    SECAGG_SHARES = "secagg_shares"
    SECAGG_DELIVERY = "secagg_delivery"
    MASKED_INPUT = "masked_input"
    SECAGG_UNMASK_REQUEST = "secagg_unmask_request"
    SECAGG_UNMASK = "secagg_unmask"
    ERROR = "error"
    BYE = "bye"
    ENROLL = "enroll"
    ENROLLED = "enrolled"
    SMPC_REQUEST = "smpc_request"
    SMPC_QUEUED = "smpc_queued"
    SMPC_ANNOUNCE = "smpc_announce"
    DEALER_REQUEST = "dealer_request"
    SMPC_MATERIAL = "smpc_material"
    SMPC_SHARE = "smpc_share"
    SMPC_DONE = "smpc_done"
    SMPC_ABORT = "smpc_abort"
