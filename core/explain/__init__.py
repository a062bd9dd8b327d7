"""Explanations of a scenario model's output (saliency maps); no UI, progress by callback."""
