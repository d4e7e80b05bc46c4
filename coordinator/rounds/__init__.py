"""The federated rounds of a job at the coordinator: the state machine, the plain round and the secure round.

:class:`JobRun` (:mod:`coordinator.rounds.job`) drives one job through synchronous rounds. Its
stages, transition table and the steps every round shares are :mod:`coordinator.rounds.machine`;
the plain round (weights and metrics in the clear) is :mod:`coordinator.rounds.plain`; the secure
round (secure aggregation, the default) is :mod:`coordinator.rounds.secure`, each of its phases a
:class:`~coordinator.rounds.secure_sum.SecureSum` (:mod:`coordinator.rounds.secure_sum`). None of
them touches a socket: they return the messages the daemon (:mod:`coordinator.service`) sends.
"""

from coordinator.rounds.job import JobRun
from coordinator.rounds.machine import Outgoing, Stage

__all__ = ["JobRun", "Outgoing", "Stage"]
