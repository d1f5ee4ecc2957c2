"""The kit tests itself: the contract suites against reference plugins of every kind, and
against each planted bug (``kit/mutants.py``), one at a time.

Passes only if every reference plugin passes its suite and every mutant is killed (at least
one test fails) with failures whose messages all start with ``contract:``. Prints each
mutant's first failure and the score. Run by ``nox -s kit_mutations``, or directly:
``python kit/run_mutations.py`` from the repository root.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from kit.mutants import MUTANTS

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results.json"
        env = {
            **os.environ,
            "KIT_RESULTS": str(results),
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                str(ROOT / "kit" / "suites.py"),
                "-q",
                "-p",
                "no:cacheprovider",
                "-p",
                "kit.harness",
                "--tb=no",
                "-o",
                "console_output_style=classic",
                *sys.argv[1:],
            ],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if not results.exists():
            print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n")
            print("kit_mutations: pytest did not run the suites")
            return 1
        data = json.loads(results.read_text())
    failures: dict[str, list[dict[str, str]]] = data["failures"]
    ok = True
    print("reference plugins:")
    for kind in MUTANTS:
        name = f"Test_{kind}__reference"
        bad = failures.get(name, [])
        ran = data["ran"].get(name, 0)
        print(f"  {kind:13} {'passes' if not bad and ran else 'FAILS'} its suite ({ran} tests)")
        for f in bad:
            ok = False
            print(f"      {f['test']}: {f['message'].splitlines()[0] if f['message'] else f['when']}")
        ok = ok and ran > 0
    print("mutants:")
    killed_total = 0
    total = 0
    per_kind: dict[str, tuple[int, int]] = {}
    for kind, mutants in MUTANTS.items():
        killed_kind = 0
        for mname, (what, _cls) in mutants.items():
            total += 1
            got = failures.get(f"Test_{kind}__{mname}", [])
            contract = bool(got) and all(f["message"].startswith("contract:") for f in got)
            if contract:
                killed_kind += 1
                first = got[0]
                print(
                    f"  killed   {kind}/{mname} ({what})\n           by {first['test']}: {first['message'].splitlines()[0][:160]}"
                )
            elif got:
                ok = False
                first = next(f for f in got if not f["message"].startswith("contract:"))
                print(
                    f"  NOT A CONTRACT MESSAGE  {kind}/{mname}: {first['test']} ({first['when']}): {first['message'][:300]}"
                )
            else:
                ok = False
                print(f"  SURVIVED {kind}/{mname} ({what})")
        per_kind[kind] = (killed_kind, len(mutants))
        killed_total += killed_kind
    score = 100.0 * killed_total / total if total else 0.0
    wall = time.perf_counter() - started
    print("per kind: " + ", ".join(f"{k} {a}/{b}" for k, (a, b) in per_kind.items()))
    print(
        f"mutation score: {score:.0f}% ({killed_total} of {total} mutants killed with contract: messages) in {wall:.0f}s"
    )
    if total < 25:
        print("kit_mutations: fewer than 25 mutants")
        ok = False
    return 0 if ok and killed_total == total else 1


if __name__ == "__main__":
    raise SystemExit(main())
