"""LIP layers as Flax Linen modules."""

from lip_jax.linen.logits import (BottleneckLogit, BottleneckTrunk, InstanceNorm, LogitHead,
                                  ProjectionLogit, SimplifiedLogit)
from lip_jax.linen.pooling import LIP

__all__ = ["LIP", "BottleneckLogit", "BottleneckTrunk", "InstanceNorm", "LogitHead",
           "ProjectionLogit", "SimplifiedLogit"]
