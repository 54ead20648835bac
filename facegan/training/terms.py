"""Names of the loss terms the training phases report: how train_stats.json and dvclive log them, and how the
evaluation and the report find the adversarial terms (a module of its own, so that reading these names does
not make those stages depend on the training code)."""

G_ADVERSARIAL = "G/adversarial"
G_PATH_LENGTH = "G/path_length"
D_ADVERSARIAL = "D/adversarial"
D_DRIFT = "D/drift"
D_GRADIENT_PENALTY = "D/gradient_penalty"
D_CONSISTENCY = "D/consistency"
D_R1 = "D/r1"
D_R2 = "D/r2"  # R3GAN's zero-centred penalty on fakes
