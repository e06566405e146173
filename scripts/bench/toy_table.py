"""Collect the toy-world runs of ``toy_methods.sh`` into one table.

    python scripts/bench/toy_table.py OUT_DIR --style striped --object circle --images 4

Reads ``OUT_DIR/eval/<name>/metrics.json`` (written by ``scripts/evaluate.py``),
``OUT_DIR/times.txt`` (training seconds per method), each run's ``resources.json`` (its peak
memory: the CUDA peak on a GPU, else the process's peak resident memory) and the masks files' metadata, and
writes ``OUT_DIR/toy_methods.json`` and ``OUT_DIR/toy_methods.md``. Nothing is computed
here beyond copying the figures and the issues' targets beside them.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any

from safetensors import safe_open

from unlearn.atomic import atomic_write_text
from unlearn.callbacks.resources import RESOURCES_FILE
from unlearn.eval.metrics import metrics_against

# (row name, method, which concept, target UA, IRA, CRA) — targets from issues 5 and 6;
# DMD2's targets are relative to its teacher and are checked separately below; the baselines
# (UCE, concept ablation; issue 29) have none. ESD rows also come as <name>_lr<lr>[_it<iterations>]
# (toy_methods.sh's ESD_RUNS settings), concept ablation rows likewise (CA_RUNS).
ESD_DEFAULT_LR, ESD_DEFAULT_ITERATIONS = "5e-5", 200
CA_DEFAULT_LR, CA_DEFAULT_ITERATIONS = "1.6e-5", 100  # configs/methods/ca.yaml
ROWS = [
    ("base", "base model (no erasure)", None, None),
    ("esd_x", "ESD-x (xattn)", "style", (90, 80, 90)),
    ("esd_u", "ESD-u (noxattn)", "object", (90, 70, 70)),
    ("masks_style", "minimalist masks", "style", (90, 80, 90)),
    ("masks_object", "minimalist masks", "object", (90, 80, 90)),
    ("masks_budget_style", "minimalist masks, binary, 5% cap in training", "style", (90, 80, 90)),
    ("masks_budget_object", "minimalist masks, binary, 5% cap in training", "object", (90, 80, 90)),
    ("uce_style", "UCE (closed-form K/V edit)", "style", None),
    ("uce_object", "UCE (closed-form K/V edit)", "object", None),
    ("ca_style", "Concept Ablation (K/V)", "style", None),
    ("ca_object", "Concept Ablation (K/V)", "object", None),
    ("dmd2_4step", "DMD2 4-step student of ESD-x", "style", None),
    ("dmd2_1step", "DMD2 1-step student of ESD-x", "style", None),
    # A DMD2 row <name><suffix> distilled the ESD-x row esd_x<suffix> (toy_methods.sh's ESD_TEACHER).
]


def esd_setting(suffix: str, defaults: tuple[str, int] = (ESD_DEFAULT_LR, ESD_DEFAULT_ITERATIONS)) -> tuple[str, int]:
    """``"_lr1e-3_it1000"`` -> ``("1e-3", 1000)``; a missing part is the method's default (esd_sd.py's)."""
    lr, iterations = defaults
    for part in filter(None, suffix.split("_")):
        if part.startswith("lr"):
            lr = part[2:]
        elif part.startswith("it") and part[2:].isdigit():
            iterations = int(part[2:])
        else:
            raise ValueError(f"run suffix {suffix!r}: unexpected part {part!r} (expected lr<lr> or it<iterations>)")
    return lr, iterations


def _defaults(name: str) -> tuple[str, int]:
    return (
        (CA_DEFAULT_LR, CA_DEFAULT_ITERATIONS) if name.startswith("ca_") else (ESD_DEFAULT_LR, ESD_DEFAULT_ITERATIONS)
    )


def _label(method: str, suffix: str, defaults: tuple[str, int] = (ESD_DEFAULT_LR, ESD_DEFAULT_ITERATIONS)) -> str:
    lr, iterations = esd_setting(suffix, defaults)
    return f"{method}, lr {lr}" + ("" if iterations == defaults[1] else f", {iterations} it")


def _expand(out: Path) -> list[tuple[str, str, str | None, tuple | None]]:
    """ROWS with each ESD / DMD2 / concept ablation row followed by its setting variants under ``out/eval``."""
    rows = []
    for name, method, kind, target in ROWS:
        if name.startswith(("esd_", "dmd2_", "ca_")):
            defaults = _defaults(name)
            variants = [""] + [p.name[len(name) :] for p in (out / "eval").glob(f"{name}_*")]
            order = sorted(
                variants, key=lambda sfx: (esd_setting(sfx, defaults)[1], float(esd_setting(sfx, defaults)[0]))
            )
            rows += [(name + sfx, _label(method, sfx, defaults), kind, target) for sfx in order]
        else:
            rows.append((name, method, kind, target))
    return rows


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.1f}" if isinstance(value, (int, float)) else str(value)


def _attacks(folder: Path) -> dict[str, Any]:
    """{attack: its ASR before and after, budget} of ``toy_methods.sh``'s attacks on one row."""
    found = {}
    for path in sorted(folder.glob("*/attack.json")):
        result = json.loads(path.read_text())
        found[path.parent.name] = {
            "attack": result["attack"], "before": result["before"], "after": result["after"],
            "steps": result["attack_steps"], "seconds": result["attack_seconds"], "prompts": len(result["prompts"]),
            "seeds": result["seeds"],
        }  # fmt: skip
    return found


def _asr(rate: dict[str, Any]) -> str:
    lo, hi = rate["ci95"]
    return f"{_fmt(rate['asr'])} (n {rate['n']}, 95% CI {_fmt(lo)}–{_fmt(hi)})"


def _export_metadata(run_file: Path, export: str) -> dict[str, str]:
    """The metadata of the file ``export`` in the run ``run_file`` names; empty without one."""
    if not run_file.is_file():
        return {}
    path = Path(run_file.read_text().strip()) / export
    if not path.is_file():
        return {}
    with safe_open(str(path), "pt") as f:
        return f.metadata() or {}


def _off_share(meta: dict[str, str]) -> float | None:
    return 100 * float(meta["off_share"]) if "off_share" in meta else None


MASK_UNITS = {"attn": "attention heads", "ff": "feed-forward", "norm": "norm", "linear": "Linear outputs"}


def _export_name(name: str) -> str | None:
    """The file a row's run exports, for the rows whose label or figures read its metadata."""
    return (
        "erased.safetensors" if name.startswith("esd_") else "masks.safetensors" if name.startswith("masks_") else None
    )


def _trained_as(name: str, method: str, meta: dict[str, str]) -> str:
    """``method`` naming what the run trained where it differs from the row's default (toy_methods.sh's
    ESD_ARGS / ESD_X_ARGS / ESD_U_ARGS / MASK_ARGS), from its export's metadata ``meta``: ESD's train
    method and its null and preserve terms, the masks' unit groups."""
    if name.startswith("esd_"):
        if "train_method" not in meta:
            return method
        terms = [meta["train_method"]]
        if float(meta.get("null_weight", 0)) > 0:
            terms.append(f"null term {float(meta['null_weight']):g}")
        if meta.get("preserve"):
            terms.append("preserve")
        head, _, setting = method.partition(" (")
        return f"{head} ({', '.join(terms)}){setting.partition(')')[2]}"
    if name.startswith("masks_"):
        modules = meta.get("modules")
        groups = sorted(json.loads(modules)) if modules else ["linear"]
        if groups != ["linear"]:
            return f"{method} on {', '.join(MASK_UNITS.get(g, g) for g in groups)}"
    return method


def _peak_mb(run_file: Path) -> float | None:
    """The peak memory of the run ``run_file`` names, from the run's ``resources.json``; None for a run
    without one (trained before runs recorded it)."""
    if not run_file.is_file():
        return None
    usage = _load(Path(run_file.read_text().strip()) / RESOURCES_FILE)
    if usage is None:
        return None
    return usage["peak_cuda_mb"] if usage.get("peak_cuda_mb") is not None else usage["peak_rss_mb"]


def collect(out: Path, style: str, obj: str) -> dict[str, Any]:
    times = {}
    if (out / "times.txt").is_file():
        for line in (out / "times.txt").read_text().split("\n"):
            if line.strip():
                name, seconds = line.split()
                times[name] = int(seconds)
    rows = []
    for name, method, kind, target in _expand(out):
        metrics = _load(out / "eval" / name / "metrics.json")
        if metrics is None:
            continue
        concept = {"style": style, "object": obj}.get(kind) if kind else None
        export = _export_name(name)
        meta = _export_metadata(out / f"{name}.run", export) if export else {}
        row = {
            "name": name,
            "method": _trained_as(name, method, meta),
            "concept": concept,
            **{k: metrics.get(k) for k in ("UA", "IRA", "CRA", "FD", "object_acc", "style_acc", "joint_acc")},
            "train_s": times.get(name),
            "peak_mb": _peak_mb(out / f"{name}.run"),
            "target": target,
        }
        if name.startswith("masks_"):
            row["off_pct"] = _off_share(meta)
        attacks = _attacks(out / "attacks" / name)
        if attacks:
            row["attacks"] = attacks
        rows.append(row)
    # The base model judged against each erased concept: what UA/IRA/CRA are before erasure
    # (means of its per-concept accuracies, so its one evaluation serves both concepts).
    base = _load(out / "eval" / "base" / "metrics.json")
    before = {
        kind: (metrics_against(base["per_concept"], [concept]) if base and "per_concept" in base else None)
        for kind, concept in (("style", style), ("object", obj))
    }
    return {"style": style, "object": obj, "rows": rows, "before": before}


def _teacher_of(name: str) -> str:
    """dmd2_4step_lr1e-3_it1000 -> esd_x_lr1e-3_it1000: the ESD-x row a DMD2 row distilled."""
    return re.sub(r"^dmd2_\d+step", "esd_x", name)


def markdown(result: dict[str, Any], images: int) -> str:
    lines = [
        f"Toy world, {images} images per (object, style) prompt, judged by checkpoints/toy/judge.safetensors.",
        f"Erased concepts: style `{result['style']}`, object `{result['object']}`.",
        "",
        "| method | concept | UA | IRA | CRA | FD | object acc | style acc | joint acc | train s | peak MB "
        "| target UA/IRA/CRA |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        target = "/".join(f"≥{t}" for t in r["target"]) if r["target"] else ""
        extra = f" ({_fmt(r['off_pct'])}% off)" if r.get("off_pct") is not None else ""
        peak = "" if r.get("peak_mb") is None else f"{r['peak_mb']:.0f}"
        lines.append(
            f"| {r['method']}{extra} | {r['concept'] or ''} | {_fmt(r['UA'])} | {_fmt(r['IRA'])} | "
            f"{_fmt(r['CRA'])} | {_fmt(r['FD'])} | {_fmt(r['object_acc'])} | {_fmt(r['style_acc'])} | "
            f"{_fmt(r['joint_acc'])} | {r['train_s'] if r['train_s'] is not None else ''} | {peak} | {target} |"
        )
    lines += [
        "",
        "Before erasure (the base model judged against the same concept):",
        "",
        "| concept | UA | IRA | CRA |",
        "|---|---|---|---|",
    ]
    for kind, name in (("style", result["style"]), ("object", result["object"])):
        b = result["before"].get(kind) or {}
        lines.append(f"| {name} | {_fmt(b.get('UA'))} | {_fmt(b.get('IRA'))} | {_fmt(b.get('CRA'))} |")
    attacked = [r for r in result["rows"] if r.get("attacks")]
    if attacked:
        seeds = next(iter(attacked[0]["attacks"].values()))["seeds"]
        lines += [
            "",
            f"Under attack (scripts/attack.py: the concept's prompts, held-out seeds {seeds[0]}–{seeds[-1]}; ASR is "
            "the share of images the judge gives the erased concept, before and after the attack):",
            "",
            "| method | concept | attack | prompts | steps | attack s | ASR before | ASR after |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in attacked:
            extra = f" ({_fmt(r['off_pct'])}% off)" if r.get("off_pct") is not None else ""
            for a in r["attacks"].values():
                lines.append(
                    f"| {r['method']}{extra} | {r['concept'] or ''} | {a['attack']} | {a['prompts']} | {a['steps']} | "
                    f"{a['seconds']:.0f} | {_asr(a['before'])} | {_asr(a['after'])} |"
                )
    by_name = {r["name"]: r for r in result["rows"]}
    students = [r for r in result["rows"] if r["name"].startswith("dmd2_") and _teacher_of(r["name"]) in by_name]
    if students:
        lines += [
            "",
            "DMD2 students against their teacher (the ESD-x row of the same setting, 25-step "
            "sampler); issue 7 asks for the 4-step student: FD ≤ 1.5 × the teacher's, UA within 5 points:",
            "",
            "| student | teacher | FD / teacher FD | UA − teacher UA |",
            "|---|---|---|---|",
        ]
        for s in students:
            teacher = by_name[_teacher_of(s["name"])]
            if teacher["FD"] and s["FD"] is not None and s["UA"] is not None and teacher["UA"] is not None:
                lines.append(
                    f"| {s['method']} | {teacher['method']} | {s['FD'] / teacher['FD']:.2f} | "
                    f"{s['UA'] - teacher['UA']:+.1f} |"
                )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--style", required=True)
    p.add_argument("--object", required=True)
    p.add_argument("--images", type=int, default=4)
    args = p.parse_args(argv)
    result = collect(args.out, args.style, args.object)
    if not result["rows"]:
        raise SystemExit(f"no metrics.json under {args.out / 'eval'}; run scripts/bench/toy_methods.sh first")
    atomic_write_text(args.out / "toy_methods.json", json.dumps(result, indent=2) + "\n", "table")
    md = markdown(result, args.images)
    atomic_write_text(args.out / "toy_methods.md", md, "table")
    print(md)


if __name__ == "__main__":
    main()
