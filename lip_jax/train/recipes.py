"""Named training recipes that the config files under experiments/configs/ build on."""

from lip_jax.train.config import default_config


def imagenet_paper(model: str):
    """The paper's ImageNet recipe (official main.py + Makefile) for `model`.

    SGD momentum 0.9, lr 0.1 per 256 images, weight decay 1e-4 on every parameter, 90
    epochs, x0.1 at epochs 30/60/80, RandomResizedCrop 224 + flip; eval resize 256, center
    crop 224; plain cross-entropy, float32, total batch 256 (8 GPUs x 32 in the paper),
    BatchNorm statistics over each GPU's 32 images (DDP with plain BatchNorm).
    """
    c = default_config()
    c.model = model
    c.dataset = "imagenet2012"
    c.data_dir = ""  # --config.data_dir=YOUR_TFDS_DATA_DIR
    c.image_size = 224
    c.batch_size = 256
    c.eval_batch_size = 1000
    c.num_epochs = 90.0
    c.optimizer = "sgd"
    c.learning_rate = 0.1
    c.lr_reference_batch = 256
    c.weight_decay = 1e-4
    c.schedule = "step"
    c.decay_epochs = (30, 60, 80)
    c.decay_factor = 0.1
    c.label_smoothing = 0.0
    c.bn_group_size = 32
    c.dtype = "float32"
    c.num_threads = 16
    c.log_every_steps = 100
    c.checkpoint_every_secs = 600.0
    return c


def imagenet_modern(model: str):
    """`imagenet_paper` with bf16 compute, cosine decay after 5 warmup epochs, label
    smoothing 0.1, Nesterov momentum and batch 1024 (lr scaled linearly); BatchNorm keeps
    the paper's groups of 32 images, as large-batch SGD recipes do (Goyal et al., 2017)."""
    c = imagenet_paper(model)
    c.dtype = "bfloat16"
    c.batch_size = 1024
    c.optimizer = "nesterov"
    c.schedule = "cosine"
    c.warmup_epochs = 5.0
    c.label_smoothing = 0.1
    return c
