"""LIP, DPP and region-LIP layers as Flax NNX modules (variable trees as `lip_jax.linen`)."""

from lip_jax.nnx.logits import (BottleneckLogit, BottleneckTrunk, InstanceNorm, LogitHead,
                                ProjectionLogit, SimplifiedLogit)
from lip_jax.nnx.pooling import DPP, LIP
from lip_jax.nnx.regions import AdaptiveLIP, GlobalLIP, RoILIP

__all__ = ["LIP", "DPP", "GlobalLIP", "AdaptiveLIP", "RoILIP", "BottleneckLogit",
           "BottleneckTrunk", "InstanceNorm", "LogitHead", "ProjectionLogit", "SimplifiedLogit"]
