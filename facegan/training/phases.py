"""Names of the loss terms the training phases report (logged by name in train_stats.json and dvclive)."""

G_ADVERSARIAL = "G/adversarial"
D_ADVERSARIAL = "D/adversarial"
D_GRADIENT_PENALTY = "D/gradient_penalty"
D_R1 = "D/r1"
G_PATH_LENGTH = "G/path_length"
