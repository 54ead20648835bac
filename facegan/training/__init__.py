"""The shared training loop: phases, state, schedule, checkpoints, data-parallel helpers."""
