"""The `live` fixture: a real server for the tests in this folder."""

from tests.integration.channels.live import live

__all__ = ["live"]
