"""The harness's error types: bad configuration and bad input data, each naming what to change.

* :class:`ConfigError` — a config value out of range or of the wrong type; the message names the key
  (``trainer.batch_size``, ``data.heldout_size``, …) and the allowed values.
* :class:`DataError` — bad input data; the message names the file and the record (group, chain, molecule, …).

Both are ``ValueError``\\ s, so code that already catches those keeps working.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DataError"]


class ConfigError(ValueError):
    """A config value out of range; the message names the key and the allowed range."""


class DataError(ValueError):
    """Bad input data; the message names the file and the record (group, chain, molecule, …)."""
