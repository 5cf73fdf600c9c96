"""Package data: the built-in test sample."""
