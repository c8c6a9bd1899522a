"""The `lip-jax` command (also `python -m lip_jax`)."""

import argparse


def demo(args):
    """Shows LIP's special cases against the classical pools they stand for."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from lip_jax import linen as L, ops

    x = jax.random.uniform(jax.random.key(args.seed), (2, 15, 15, 8), minval=-1.0)
    geometry = ((3, 3), (2, 2), ((1, 1), (1, 1)))
    rows = [("lip_pool, logits 0", ops.lip_pool(x, jnp.zeros(()), *geometry),
             "avg_pool (pad excluded)",
             nn.avg_pool(x, *geometry, count_include_pad=False))]
    for beta in (4.0, 16.0, 40.0):
        rows.append((f"lip_pool, logits {beta:g} x", ops.tempered_max_pool(x, *geometry, beta=beta),
                     "max_pool", nn.max_pool(x, *geometry)))
    layer = L.LIP(L.ProjectionLogit())
    variables = layer.init(jax.random.key(1), x)
    rows.append(("LIP(ProjectionLogit) at init", layer.apply(variables, x),
                 "avg_pool (pad excluded)", rows[0][3]))
    print(f"input {tuple(x.shape)}, window 3x3, stride 2, padding 1 -> output "
          f"{tuple(rows[0][1].shape)}")
    print(f"{'LIP form':<30} {'classical pool':<26} {'max |difference|':>16}")
    for name, out, ref_name, ref in rows:
        print(f"{name:<30} {ref_name:<26} {float(jnp.abs(out - ref).max()):16.2e}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="lip-jax", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("demo", help=demo.__doc__)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=demo)
    args = parser.parse_args(argv)
    args.run(args)
