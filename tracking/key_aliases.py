"""Original config keys renamed here: accepted under the old name, with a deprecation note.

An experiment declares the old key in its config scope with the value None, and its
``validate`` calls :func:`resolve_alias`. Sacred cannot tell a default from a value the
user set, so an alias that is set wins over the new key.
"""
from __future__ import annotations

import warnings


def resolve_alias(config: dict, old: str, new: str) -> object:
    """The value of ``new``, or of the deprecated ``old`` when that is not None (with a FutureWarning).

    Keys are dotted paths into ``config`` (``"sgld_config.nbeta"``).
    """
    def get(key):
        node = config
        for part in key.split("."):
            node = node[part]
        return node

    value = get(old)
    if value is None:
        return get(new)
    warnings.warn(f"config key {old!r} is the original's name, deprecated here; use {new!r} (got {value!r})",
                  FutureWarning, stacklevel=2)
    return value
