"""The CLI is tested against the same API world as tests/api: its users, tokens and grants
open the API the CLI's tokens are checked against."""

from tests.api.conftest import client, store_engine_api, world

__all__ = ["client", "store_engine_api", "world"]
