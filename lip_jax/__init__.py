"""lip_jax: Local Importance-based Pooling (Gao, Wang, Wu, ICCV 2019) in JAX and Flax."""

from lip_jax.ops import (average_pool, lan_pool, lip_pool, periodic_weights, soft_gate,
                         soft_pool, tempered_max_pool, window_share)

__all__ = ["average_pool", "lan_pool", "lip_pool", "periodic_weights", "soft_gate",
           "soft_pool", "tempered_max_pool", "window_share"]
__version__ = "0.1.0"
