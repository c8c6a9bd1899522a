"""Learning-rate schedules and the optimizer (optax)."""

import collections

import optax


def make_schedule(config, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
    """Peak `learning_rate * batch_size / lr_reference_batch`, optional linear warmup, then
    "step" (x`decay_factor` at each of `decay_epochs`, as PyTorch's MultiStepLR: an epoch
    given twice, or two that fall on one step, decay twice) or "cosine" decay to 0."""
    peak = config.learning_rate * config.batch_size / config.lr_reference_batch
    warmup = int(config.warmup_epochs * steps_per_epoch)
    if config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total_steps, 1))
    steps = collections.Counter(int(e * steps_per_epoch) for e in config.decay_epochs)
    decay = optax.piecewise_constant_schedule(
        peak, {step: config.decay_factor ** count for step, count in steps.items()})
    if not warmup:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup),
                                 lambda step: decay(step + warmup)], [warmup])


def make_optimizer(config, schedule: optax.Schedule) -> optax.GradientTransformation:
    """PyTorch's SGD: weight decay added to the gradient of every parameter, then momentum
    (`buf = m * buf + g`, `p -= lr * buf`), optionally Nesterov."""
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(schedule, momentum=config.momentum, nesterov=config.optimizer == "nesterov"))
