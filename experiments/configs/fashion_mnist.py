"""The default offline job (what `lip-jax train --workdir DIR` runs without --config)."""

from lip_jax.train.config import default_config


def get_config():
    return default_config()
