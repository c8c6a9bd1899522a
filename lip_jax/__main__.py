from lip_jax.cli import main

main()
