"""Helpers shared by every package: device, dtype and seed resolution (``core.runtime``), the
flat-parameter function types (``core.types``) and the config-value checks (``core.checks``).
Imports nothing from the other project packages."""
