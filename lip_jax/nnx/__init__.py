"""Flax NNX: the LIP, DPP and region-LIP layers (variable trees as `lip_jax.linen`) and the
model zoo (`create_model`, `load_variables`, `linen_variables`)."""

from lip_jax.nnx.batch_norm import BatchNorm
from lip_jax.nnx.logits import (BottleneckLogit, BottleneckTrunk, InstanceNorm, LogitHead,
                                ProjectionLogit, SimplifiedLogit)
from lip_jax.nnx.pooling import DPP, LIP
from lip_jax.nnx.regions import AdaptiveLIP, GlobalLIP, RoILIP
from lip_jax.nnx.zoo import create_model, linen_variables, load_variables

__all__ = ["LIP", "DPP", "GlobalLIP", "AdaptiveLIP", "RoILIP", "BatchNorm", "BottleneckLogit",
           "BottleneckTrunk", "InstanceNorm", "LogitHead", "ProjectionLogit", "SimplifiedLogit",
           "create_model", "linen_variables", "load_variables"]
