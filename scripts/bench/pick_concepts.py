#!/usr/bin/env python
"""Pick the style and the object the toy methods table erases, from the base model alone.

    python scripts/bench/pick_concepts.py BASE_METRICS_JSON --judge J --out concepts.json

Erasing a concept the base model cannot draw measures nothing (UA is 100% before any
erasure), and erasing one the judge gives to degraded images measures the degradation
(`unlearn.eval.judge_sinks`). So the style is the one the base model draws most reliably
other than "solid" (the plain fill) and the judge's sinks, and the object likewise other
than the sinks; ties go to the first in canvas order. Prints "STYLE OBJECT" and writes the
choice with the base accuracies and the sink shares it was made from.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from unlearn.atomic import atomic_write_text
from unlearn.scripting import json_output, run_script

PLAIN_STYLE = "solid"


def pick(per_concept: list[dict], kind: str, excluded: set[str]) -> str:
    """The concept of ``kind`` with the highest accuracy, not in ``excluded``; first on ties."""
    rows = [r for r in per_concept if r["kind"] == kind and r["concept"] not in excluded]
    if not rows:
        raise ValueError(f"no {kind} is left to erase after excluding {sorted(excluded)}")
    return max(rows, key=lambda r: r["accuracy"])["concept"]  # max keeps the first of equals


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base_metrics", help="metrics.json of the base model (scripts/evaluate.py)")
    p.add_argument("--judge", default="checkpoints/toy/judge.safetensors")
    p.add_argument("--out", required=True, help="concepts.json")
    args = p.parse_args(argv)
    out = json_output(args.out)
    from unlearn.eval.judge import load_judge
    from unlearn.eval.judge_sinks import judge_sinks

    per_concept = json.loads(Path(args.base_metrics).read_text())["per_concept"]
    sinks = judge_sinks(load_judge(args.judge))
    choice = {
        "style": pick(per_concept, "style", {PLAIN_STYLE, *sinks["style"]["sinks"]}),
        "object": pick(per_concept, "object", set(sinks["object"]["sinks"])),
        "judge_sinks": sinks,
        "base_accuracy": {r["concept"]: r["accuracy"] for r in per_concept},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(choice, indent=2) + "\n", "concepts")
    print(choice["style"], choice["object"])
    return choice


if __name__ == "__main__":
    run_script(main)
