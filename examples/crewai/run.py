"""Run the example crew through Amsha: tokens stream as CrewAI works, then the outputs,
the events CrewAI's lifecycle became, and the metrics.

    python examples/crewai/run.py --topic "tide pools" [--background]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from amsha import ExecutionSession

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--topic", default="tide pools")
    parser.add_argument("--background", action="store_true", help="run detached and poll the handle")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))  # the tool module next to this file

    with ExecutionSession(HERE / "amsha.yaml") as session:
        if args.background:
            handle = session.run(inputs={"topic": args.topic}, mode="background")
            while not handle.done():
                print(f"status: {handle.status()}", flush=True)
                time.sleep(0.5)
        else:
            handle = session.run(inputs={"topic": args.topic})
            for token in handle.stream_text():
                print(token, end="", flush=True)
            print()
        result = handle.result(timeout=120)

    print("\noutputs:")
    for name, output in result.outputs.items():
        print(f"  {name}: {output[:70]}...")
    print("events:", ", ".join(e.kind for e in handle.stream() if not e.kind.startswith("llm.token")))
    total = result.metrics.to_dict()["total"]
    print(f"metrics: {total['calls']} LLM calls, {total['input_tokens']} in / {total['output_tokens']} out tokens")
    assert result.outputs["reporting_task"].startswith("Tide pools are busy places")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
