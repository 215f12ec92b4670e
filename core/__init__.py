"""Helpers shared by every package: device, dtype and seed resolution (``core.runtime``), the
flat-parameter function types (``core.types``), the config-value checks (``core.checks``) and the
comments of nested config keys (``core.config_docs``).
Imports nothing from the other project packages."""
