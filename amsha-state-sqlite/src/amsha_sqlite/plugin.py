"""Entry point module of amsha-state-sqlite (group `amsha`).

It registers no backend yet: the state store `sqlite` is still to be built. Kept tiny on purpose:
plugin modules are imported at session creation, so heavy imports belong in the adapter
module that a factory imports only when the backend is selected.
"""

AMSHA_PLUGIN_API = "1.0"
