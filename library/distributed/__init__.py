"""Ray Data scale-out: inputs, the actor, result tables and the runner."""
