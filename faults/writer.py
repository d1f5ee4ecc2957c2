"""A writer for the ``kills`` area: commits versions of one state and appends one event per
version to a store, printing ``ack N`` once each write has returned, until it is killed.

    python writer.py file|sqlite PATH
"""

from __future__ import annotations

import sys

from amsha.errors import StateNotFoundError


def expected(version: int) -> dict[str, object]:
    """What version ``version`` holds (the checker rebuilds it)."""
    return {"version": version, "blob": f"{version:08d}" * 64, "list": list(range(version % 17))}


def main() -> None:
    kind, path = sys.argv[1], sys.argv[2]
    if kind == "sqlite":
        from amsha_sqlite.store import SqliteStore

        store = SqliteStore(path)
    else:
        from amsha.builtins.stores import FileStore

        store = FileStore(path)
    try:
        version = store.get_state("kill-state").version
    except StateNotFoundError:
        version = 0
    while True:
        version = store.put_state("kill-state", expected(version + 1), expected_version=version)
        store.append_events("kill-run", [{"seq": version, "kind": "test", "data": {"v": version}}])
        print(f"ack {version}", flush=True)


if __name__ == "__main__":
    main()
