"""Defaults the parser names in its help, kept apart so building it imports nothing heavy."""

from __future__ import annotations

from typing import Final

#: ``dev --idp-only`` listens here unless told otherwise, so its printed config stays valid.
IDP_ONLY_PORT: Final = 8600
#: Where ``status`` looks without --url or --config: the ops port DESIGN.md gives ``ops_listen``.
DEFAULT_OPS_URL: Final = "http://127.0.0.1:9700"
