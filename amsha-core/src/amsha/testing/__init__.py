"""Testing helpers for Amsha plugins and apps, shipped with amsha-core.

Contract suites, one per plugin kind: subclass one in your tests, supply the fixture that
builds your backend, and run pytest (see each class for its fixtures)::

    from amsha.testing import ProviderContract, StateStoreContract, OrchestratorContract, ObserverContract

amsha-core also registers a pytest plugin (entry point ``pytest11``) with the
``amsha_session_factory`` fixture.
"""

from __future__ import annotations

from .contracts import ObserverContract, OrchestratorContract, ProviderContract, StateStoreContract
from .runcontrol import RunControlContract

__all__ = ["ObserverContract", "OrchestratorContract", "ProviderContract", "RunControlContract", "StateStoreContract"]
