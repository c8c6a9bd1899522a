"""Train and eval steps: pure functions of (state, batch), jitted by the loop."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def normalize(images, mean, std):
    """uint8 `(N, H, W, C)` -> float32, standardised per channel (mean/std in pixel units)."""
    return (images.astype(jnp.float32) - jnp.asarray(mean)) / jnp.asarray(std)


def train_step(state: TrainState, batch: dict, *, model, tx, schedule, mean, std,
               num_classes: int, label_smoothing: float):
    """One SGD step on a global batch; returns the new state and scalar metrics."""
    images = normalize(batch["image"], mean, std)
    targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], num_classes), label_smoothing)

    def loss_fn(params):
        logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                      images, train=True, mutable=["batch_stats"])
        logits = logits.astype(jnp.float32)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        return loss, (logits, updates.get("batch_stats", {}))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params,
                                                                              updates),
                              batch_stats=batch_stats, opt_state=opt_state)
    metrics = dict(loss=loss, accuracy=jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
                   grad_norm=optax.tree.norm(grads), learning_rate=schedule(state.step))
    return new_state, metrics


def eval_step(state: TrainState, batch: dict, *, model, mean, std):
    """Sums over the unmasked examples of a batch: loss, top-1 and top-5 hits, count."""
    logits = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                         normalize(batch["image"], mean, std), train=False).astype(jnp.float32)
    labels, mask = batch["label"], batch["mask"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    top5 = jnp.any(jax.lax.top_k(logits, min(5, logits.shape[-1]))[1] == labels[:, None], -1)
    return dict(loss=jnp.sum(loss * mask), top1=jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
                top5=jnp.sum(top5 * mask), count=jnp.sum(mask))
