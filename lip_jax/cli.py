"""The `lip-jax` command (also `python -m lip_jax`).

    lip-jax train [--config FILE] --workdir DIR [--config.field=value ...]
    lip-jax eval  [--config FILE] --workdir DIR [--config.field=value ...]
    lip-jax convert CHECKPOINT --model NAME --out DIR
    lip-jax models
    lip-jax demo
"""

import argparse
import logging
import sys

PAPER = {"lip_resnet50": (23.9, 5.33), "lip_resnet101": (42.9, 9.06),
         "lip_densenet121": (8.7, 4.13), "resnet50": (25.6, 4.12), "resnet101": (44.5, 7.85),
         "densenet121": (8.0, 2.88)}


def _config(args, overrides):
    from lip_jax.train.config import load_config
    return load_config(args.config, overrides)


def _table(rows: dict) -> str:
    return "\n".join(f"  {k:<16} {v:.4f}" if isinstance(v, float) else f"  {k:<16} {v}"
                     for k, v in rows.items())


def train(args, overrides):
    """Trains (and evaluates) a config in a work directory; resumes if it holds checkpoints."""
    import time

    from lip_jax.train.loop import initialize_distributed, train_and_evaluate
    config = _config(args, overrides)
    initialize_distributed(config)
    start = time.time()
    result = train_and_evaluate(config, args.workdir)
    result["wall_time_s"] = round(time.time() - start, 1)
    print(f"{config.model} on {config.dataset}, work directory {args.workdir}:")
    print(_table(result))


def evaluate(args, overrides):
    """Evaluates the newest checkpoint of a work directory (or config.init_from weights)."""
    from lip_jax.train.loop import evaluate_checkpoint, initialize_distributed
    config = _config(args, overrides)
    initialize_distributed(config)
    print(_table(evaluate_checkpoint(config, args.workdir)))


def read_state_dict(path: str) -> dict:
    """A state_dict from `.pth`/`.pt` (torch), `.npz` or `.safetensors`."""
    if path.endswith((".pth", ".pt")):
        import torch
        state = torch.load(path, map_location="cpu", weights_only=True)
        return state.get("state_dict", state)
    if path.endswith(".npz"):
        import numpy as np
        with np.load(path) as f:
            return dict(f)
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file
        return load_file(path)
    raise ValueError(f"{path}: expected a .pth, .pt, .npz or .safetensors file")


def convert(args, overrides):
    """Converts an official PyTorch checkpoint into weights that eval and training load."""
    from lip_jax import pretrained
    from lip_jax.convert import from_torch_state_dict
    variables = from_torch_state_dict(args.model, read_state_dict(args.checkpoint),
                                      num_classes=args.num_classes)
    pretrained.save_variables(args.out, args.model, variables)
    print(f"wrote {args.model} weights to {args.out}; use them with "
          f"--config.model={args.model} --config.init_from={args.out}")


def models(args, overrides):
    """Parameters and multiply-adds at 224x224 (XLA's cost analysis) beside the paper's."""
    import jax
    import jax.numpy as jnp

    from lip_jax.convert import abstract_variables
    from lip_jax.models import create_model, list_models
    print(f"{'model':<16} {'params (M)':>10} {'GMACs@224':>10} {'paper params':>13} "
          f"{'paper GMACs':>12}")
    for name in list_models():
        model = create_model(name)
        variables = abstract_variables(model)
        params = sum(x.size for x in jax.tree.leaves(variables["params"]))
        images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
        cost = jax.jit(lambda v, x: model.apply(v, x)).lower(variables, images).cost_analysis()
        paper = PAPER.get(name)
        paper_text = f"{paper[0]:>12.1f}M {paper[1]:>11.2f}G" if paper else f"{'-':>13} {'-':>12}"
        print(f"{name:<16} {params / 1e6:>10.3f} {cost['flops'] / 2e9:>10.2f} {paper_text}")


def demo(args, overrides):
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
    parser = argparse.ArgumentParser(prog="lip-jax", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, run in (("train", train), ("eval", evaluate)):
        p = commands.add_parser(name, help=run.__doc__)
        p.add_argument("--config", help="a Python file with get_config(); default: the "
                       "offline Fashion-MNIST job")
        p.add_argument("--workdir", required=True)
        p.set_defaults(run=run)
    p = commands.add_parser("convert", help=convert.__doc__)
    p.add_argument("checkpoint")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--num-classes", type=int, default=1000)
    p.set_defaults(run=convert)
    commands.add_parser("models", help=models.__doc__).set_defaults(run=models)
    p = commands.add_parser("demo", help=demo.__doc__)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=demo)
    args, overrides = parser.parse_known_args(argv)
    if overrides and args.command not in ("train", "eval"):
        parser.error(f"unrecognized arguments: {' '.join(overrides)}")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    for noisy in ("absl", "orbax", "jax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args.run(args, overrides)
