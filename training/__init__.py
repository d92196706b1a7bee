"""Training loops the stages share: the one adversarial loop every GAN variant (and flow matching,
without a discriminator) trains through, with its model protocol and losses (``gans``), and the
data regimes of a self-consuming loop (``loop_regimes``). May import ``runtime`` and ``dataio``;
never a model family: models plug into the loop through its protocol."""
