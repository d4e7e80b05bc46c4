"""The two-party engine on shares: openings, Beaver products, truncation, ReLU, and the layers built on them."""

from medfl.smpc.engine.beaver import mask_weight, matmul
from medfl.smpc.engine.channel import Channel, InMemoryChannel
from medfl.smpc.engine.groupnorm import group_norm
from medfl.smpc.engine.layers import (
    Session,
    add,
    avg_pool,
    conv2d,
    divide,
    linear,
    max_pool2d,
    prepare_weight,
    relu_layer,
)
from medfl.smpc.engine.relu import negative_bits, relu
from medfl.smpc.engine.truncation import HEADROOM_BITS, check_headroom, truncate

__all__ = ["HEADROOM_BITS", "Channel", "InMemoryChannel", "Session", "add", "avg_pool", "check_headroom", "conv2d",
           "divide", "group_norm", "linear", "mask_weight", "matmul", "max_pool2d", "negative_bits", "prepare_weight",
           "relu", "relu_layer", "truncate"]
