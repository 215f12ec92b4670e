"""Helpers shared by every package: device, dtype and seed resolution (``core.runtime``) and the
flat-parameter function types (``core.types``). Imports nothing from the other project packages."""
