"""The learner: from trajectories to an optimizer step (trainer, log-probs, rewards, precision)."""
