"""Training commands of the shipped models (``python -m core.training.<model>``)."""
