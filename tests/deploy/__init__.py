"""Deployment: the Bento build and an MLflow tracking server on PostgreSQL."""
