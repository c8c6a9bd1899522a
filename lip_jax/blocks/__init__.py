"""The zoo's models written once for both front-ends: each family's config, layer
declarations and forward math (`resnet`, `densenet`, `small_cnn`), the declaration types
(`layers`) and BatchNorm's math (`batch_norm`). `lip_jax.linen` and `lip_jax.nnx` build
the declarations into modules of the same names, so both give the same variable tree."""
