"""Constants shared with gcnn.data."""

from __future__ import annotations

# Targets equal to IGNORE_INDEX are padding or unscored context (docs/design.md). This must equal
# gcnn.data.IGNORE_INDEX; tests/test_models.py checks that once gcnn.data exists.
IGNORE_INDEX = -100
