"""Model families: building blocks (``nets``), stage 1's encoders, normalizing flows, Plan 1's image
GANs and Plan 2's vector GANs. Each family is a frozen config dataclass, a registry of variants and
a ``from_checkpoint`` that rebuilds a model from its file. May import ``runtime``, ``dataio``,
``training`` (the GAN protocol and losses) and the root's ``CL_loss_function``."""
