"""Encrypted inference over the network: one party's run, the data owner, the model server, the dealer service."""

from medfl.smpc.session.client import ImageReport, SessionReport, infer_remote, softmax_positive
from medfl.smpc.session.party import (
    ImageResult,
    Link,
    PartyChannel,
    PartyRunner,
    PlanRecorder,
    ReplayDealer,
    describe,
    expect,
    trace_plan,
)
from medfl.smpc.session.provider import DealerService, Material, make_material, seal_chunks
from medfl.smpc.session.server import ModelServer, ServedModel
from medfl.smpc.session.stages import TRANSITIONS, SessionRecord, Stage

__all__ = ["TRANSITIONS", "DealerService", "ImageReport", "ImageResult", "Link", "Material", "ModelServer",
           "PartyChannel", "PartyRunner", "PlanRecorder", "ReplayDealer", "ServedModel", "SessionRecord",
           "SessionReport", "Stage", "describe", "expect", "infer_remote", "make_material", "seal_chunks",
           "softmax_positive", "trace_plan"]
