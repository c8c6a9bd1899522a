"""LIP, DPP and region-LIP layers and the zoo's BatchNorm as Flax Linen modules."""

from lip_jax.linen.batch_norm import BatchNorm
from lip_jax.linen.logits import (BottleneckLogit, BottleneckTrunk, InstanceNorm, LogitHead,
                                  ProjectionLogit, SimplifiedLogit)
from lip_jax.linen.pooling import DPP, LIP
from lip_jax.linen.regions import AdaptiveLIP, GlobalLIP, RoILIP

__all__ = ["LIP", "DPP", "BatchNorm", "GlobalLIP", "AdaptiveLIP", "RoILIP", "BottleneckLogit",
           "BottleneckTrunk", "InstanceNorm", "LogitHead", "ProjectionLogit", "SimplifiedLogit"]
