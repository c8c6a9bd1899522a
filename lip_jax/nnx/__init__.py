"""LIP layers as Flax NNX modules (same variable trees as `lip_jax.linen`)."""

from lip_jax.nnx.logits import (BottleneckLogit, BottleneckTrunk, InstanceNorm, LogitHead,
                                ProjectionLogit, SimplifiedLogit)
from lip_jax.nnx.pooling import LIP

__all__ = ["LIP", "BottleneckLogit", "BottleneckTrunk", "InstanceNorm", "LogitHead",
           "ProjectionLogit", "SimplifiedLogit"]
