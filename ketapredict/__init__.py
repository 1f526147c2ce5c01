"""ketapredict."""
