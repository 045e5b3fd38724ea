"""One pre-training run: prepared once (configuration, checks, budget, run directory), trained by
Lightning with isoflop's callbacks, checkpointed, resumed exactly, exported."""
