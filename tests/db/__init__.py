"""Tests against real database servers; each skips with a reason when its server is down."""
