"""The hub on the in-process broker, started and closed around each test that asks for it."""

from tests.unit.channels.hub_fakes import hub

__all__ = ["hub"]
