"""Amsha runs on a Dask cluster: the client decides where runs execute, Amsha how they behave.

    python run_dask.py                                  # a LocalCluster of 2 worker processes
    python run_dask.py --scheduler tcp://HOST:8786      # an existing cluster of several machines

It starts background runs on the cluster's workers, streams one of them live here (its events
come from the shared store as the worker commits them), cancels another from here (the
worker sees the request within runs.cancel_poll_s and closes its provider stream), and prints
every run's status as the store has it. Any other process can watch or cancel them too:
``amsha runs watch RUN_ID --config amsha.yaml``.

Every worker needs what the config names: amsha-core and the plugins, the environment
variables it reads (API keys), and the store (the sqlite file here is one machine's; across
machines select a store they all reach, see amsha.yaml). Amsha starts no cluster and no
thread of its own: the executor is the client's, handed in.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from amsha import ExecutionSession
from amsha.errors import RunCancelledError
from distributed import Client, LocalCluster

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scheduler", help="address of a running Dask scheduler (default: a LocalCluster)")
    parser.add_argument("--runs", type=int, default=4, help="how many background runs to start")
    args = parser.parse_args()

    cluster = None if args.scheduler else LocalCluster(n_workers=2, threads_per_worker=2, dashboard_address=None)
    with Client(args.scheduler or cluster) as client, ExecutionSession(HERE / "amsha.yaml") as session:
        executor = client.get_executor()
        topics = ["tide pools", "kelp", "owls", "lichen", "moss", "salt marsh"][: max(2, args.runs)]
        handles = [session.run(inputs={"topic": t}, mode="background", executor=executor) for t in topics]

        victim = handles[-1]
        for event in victim.stream():
            if event.kind == "llm.token":  # it has started on a worker: stop it from here
                print(f"cancel {victim.run_id}: {victim.cancel('not needed after all')}")
                break

        print(f"streaming {handles[0].run_id} from its worker:")
        for token in handles[0].stream_text():
            print(token, end="", flush=True)
        print()
        for handle in handles:
            try:
                result = handle.result(timeout=120)
                print(f"{handle.run_id}  {result.status:<9}  {result.outputs['write'][:48]!r}")
            except RunCancelledError as exc:
                print(f"{handle.run_id}  CANCELLED  partial: {exc.result.outputs}")
        for record in session.runs(len(handles)):
            where = f"{record.owner['host']} pid {record.owner['pid']}" if record.owner else "-"
            print(f"  store: {record.run_id}  {record.status:<9}  ran on {where}")
    if cluster is not None:
        cluster.close()


if __name__ == "__main__":
    main()
