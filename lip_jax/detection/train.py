"""Training and inference steps of a `FasterRCNN`: pure functions of (state, batch).

Batches are `{"image": uint8 (N, H, W, C), "boxes": (N, M, 4), "labels": (N, M)}` as
`lip_jax.data.detection_shapes.load` gives them; images are standardised with the
dataset's `mean` and `std` (pixel units). The state is the library's `TrainState`.
"""

import jax
import jax.numpy as jnp
import optax

from lip_jax.train.steps import TrainState, normalize


def make_optimizer(learning_rate: float, total_steps: int, warmup_steps: int,
                   weight_decay: float = 1e-4, clip_norm: float = 10.0):
    """SGD with momentum 0.9 (PyTorch's coupled weight decay, as the library's trainer),
    a linear warmup to `learning_rate` then cosine decay to 0, gradients clipped to global
    norm `clip_norm`. Returns `(optimizer, schedule)`."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps,
                                                  total_steps)
    return optax.chain(optax.clip_by_global_norm(clip_norm),
                       optax.add_decayed_weights(weight_decay),
                       optax.sgd(schedule, momentum=0.9)), schedule


def init_state(key, batch: dict, *, model, tx, mean, std) -> TrainState:
    """Variables of `model` initialised on `batch` (any batch of the right shapes) and the
    optimizer's state."""
    params_key, sample_key = jax.random.split(key)
    variables = model.init({"params": params_key, "sample": sample_key},
                           normalize(batch["image"], mean, std), batch["boxes"],
                           batch["labels"], method=model.losses)
    return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                      batch_stats=variables.get("batch_stats", {}),
                      opt_state=tx.init(variables["params"]))


def train_step(state: TrainState, batch: dict, key, *, model, tx, mean, std):
    """One step on the sum of the four losses; `key` draws the anchor and RoI samples.
    Returns the new state and `{loss, each loss, grad_norm}`."""

    def loss_fn(params):
        losses, updates = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            normalize(batch["image"], mean, std), batch["boxes"], batch["labels"],
            rngs={"sample": key}, mutable=["batch_stats"], method=model.losses)
        return sum(losses.values()), (losses, updates.get("batch_stats", {}))

    (loss, (losses, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    state = state.replace(step=state.step + 1, batch_stats=batch_stats, opt_state=opt_state,
                          params=optax.apply_updates(state.params, updates))
    return state, dict(losses, loss=loss, grad_norm=optax.tree.norm(grads))


def detect(state: TrainState, images, *, model, mean, std) -> dict:
    """`model.detect` on uint8 `images` with the state's variables (BatchNorm's running
    statistics)."""
    return model.apply({"params": state.params, "batch_stats": state.batch_stats},
                       normalize(images, mean, std), method=model.detect)
