"""Write a run's monitor curve (``metafit train`` with ``train.monitor_every_seconds``) as a result file.

Usage::

    python scripts/run_curve.py RUN_DIR --out results/NAME.json

The file holds the ``"monitor"`` rows of ``RUN_DIR/metrics.jsonl`` (step, training seconds,
accuracy and its 95% half-width on the fixed test episodes), the final evaluation of
``RUN_DIR/eval.json`` and, as its provenance, the run's own (``RUN_DIR/provenance.json``: the
``metafit train`` command, commit and machine) with this script's command added.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def curve(run: Path) -> dict:
    rows = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("kind") == "monitor":
            rows.append({k: r[k] for k in ("step", "train_seconds", "accuracy", "accuracy_ci95", "episodes") if k in r})
    if not rows:
        raise SystemExit(f"{run}/metrics.jsonl has no monitor rows (train with train.monitor_every_seconds > 0)")
    ev = json.loads((run / "eval.json").read_text())
    res = ev["results"][0]
    acc = res["metrics"]["accuracy"]
    calls = json.loads((run / "provenance.json").read_text())["invocations"]
    prov = dict(calls[-1])
    prov["command"] = f"{prov['command']}; python scripts/run_curve.py {' '.join(sys.argv[1:])}"
    return {
        "provenance": prov,
        "benchmark": "monitor_curve",
        "run": run.name,
        "config_name": ev.get("name"),
        "rows": rows,
        "final": f"{res['n_way']}-way {res['k_shot']}-shot {100 * acc['mean']:.2f} ± {100 * acc['ci95']:.2f}% "
        f"on {acc['n']} episodes at step {ev['step']:,}",
        "final_eval": res,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    a.out.write_text(json.dumps(curve(a.run), indent=1) + "\n")


if __name__ == "__main__":
    main()
