"""Helpers shared by every package; ``core.checks`` holds the config-value checks."""
