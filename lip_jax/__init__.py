"""lip_jax: Local Importance-based Pooling (Gao, Wang, Wu, ICCV 2019) in JAX and Flax."""

from lip_jax.blur import blur_pool
from lip_jax.dpp import dpp_pool
from lip_jax.ops import (average_pool, lan_pool, lip_pool, periodic_weights, soft_gate,
                         soft_pool, tempered_max_pool, window_share)
from lip_jax.regions import adaptive_lip_pool, global_lip_pool, roi_lip_pool

__all__ = ["adaptive_lip_pool", "average_pool", "blur_pool", "dpp_pool", "global_lip_pool",
           "lan_pool", "lip_pool", "periodic_weights", "roi_lip_pool", "soft_gate",
           "soft_pool", "tempered_max_pool", "window_share"]
__version__ = "0.1.0"
