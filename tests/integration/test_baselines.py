"""End to end: UCE and concept ablation run through main.py on the smoke model, with toy canvas
metadata: run directory, configs, checkpoint, ``erased.safetensors`` and the toy benchmark
callback (its scoring replaced by a stub); bad input is one line naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unlearn import cli
from unlearn.data.canvas import CANVAS

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "toy" / "smoke.yaml")
METHODS = ROOT / "configs" / "methods"
NO_RECIPE = "model.params.loss_fn_config=null"  # the smoke model without its own training loss
TOY = f"model.params.metadata={{objects: [{', '.join(CANVAS.objects)}], styles: [{', '.join(CANVAS.styles)}]}}"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def benchmark_calls(monkeypatch):
    """The toy benchmark's scoring as a stub that records its calls and writes fixed metrics."""
    import unlearn.eval.toy_benchmark as toy_benchmark

    calls = []

    def fake_benchmark(model, erased, out_dir, images_per_prompt, batch_size, sampler, model_concepts, **kw):
        params = {n: p.detach().clone() for n, p in model.network.named_parameters()}
        calls.append((list(erased), Path(out_dir).name, params))
        metrics = {"UA": 10.0 * len(calls), "IRA": 90.0, "CRA": 80.0, "FD": 1.5}
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "metrics.json").write_text(json.dumps(metrics))
        return metrics

    monkeypatch.setattr(toy_benchmark, "run_toy_benchmark", fake_benchmark)
    return calls


def _main(method: str, logdir: Path, *extra: str) -> Path:
    return cli.main(["--base", SMOKE, str(METHODS / f"{method}.yaml"), NO_RECIPE, *extra, "--logdir", str(logdir)])


def test_uce_is_a_one_step_run_with_export_and_benchmark(tmp_path, benchmark_calls):
    from unlearn.engine.export import load_erased_weights

    run = _main("uce", tmp_path, "concept=striped", TOY)
    tensors, meta = load_erased_weights(run / "erased.safetensors")
    assert len(tensors) == 8 and all(n.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for n in tensors)
    assert meta["method"] == "uce" and meta["concept"] == "striped" and meta["iterations"] == "1"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 1
    project = next((run / "configs").glob("*-project.yaml")).read_text()
    assert "unlearn.engine.closed_form.ClosedFormEngine" in project and "unlearn.editors.uce.UCEEditor" in project
    # the benchmark saw the original before the edit and the edited model after it
    (before_concepts, before_dir, before), (after_concepts, _, after) = benchmark_calls
    assert before_concepts == after_concepts == ["striped"] and before_dir == "before"
    originals = {n: ckpt["state_dict"]["teacher." + f"unet.{n}".replace(".", "-")] for n in tensors}  # FrozenCopy
    assert all(torch.equal(before["unet." + n], originals[n]) for n in tensors)
    assert all(
        torch.equal(after["unet." + n], v) and not torch.equal(v, before["unet." + n]) for n, v in tensors.items()
    )
    assert "| UA | 10.00 | 20.00 |" in (run / "eval" / "before_after.md").read_text()
    # resuming the finished run edits nothing again
    stamp = (run / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    cli.main(["--resume", str(run)])
    assert (run / "checkpoints" / "last.ckpt").stat().st_mtime_ns == stamp


def test_concept_ablation_trains_through_main_py(tmp_path):
    from unlearn.engine.export import load_erased_weights
    from unlearn.engine.loading import load_model

    run = _main(
        "ca",
        tmp_path,
        "concept=striped",
        "anchor=dotted",
        TOY,
        "iterations=2",
        "ddim_steps=3",
        "batch_size=2",
        "lr=1e-3",
        "lightning.callbacks.toy_benchmark=null",
    )
    tensors, meta = load_erased_weights(run / "erased.safetensors")
    assert len(tensors) == 8 and all(n.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for n in tensors)
    assert meta["method"] == "ca" and meta["anchor"] == "dotted" and meta["iterations"] == "2"
    assert meta["anchor_prompts"].startswith("something in dotted style")
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    originals = {n: ckpt["state_dict"]["teacher." + f"unet.{n}".replace(".", "-")] for n in tensors}
    assert all(not torch.equal(v, originals[n]) for n, v in tensors.items())  # two steps changed them
    erased = load_model(run=run)
    assert all(torch.equal(erased.network.unet.get_parameter(n), v) for n, v in tensors.items())


@pytest.mark.parametrize(
    "method, extra, message",
    [
        ("ca", [], "missing mandatory value(s) ['concept']"),
        ("uce", [], "missing mandatory value(s) ['concept']"),
        (
            "ca",
            ["concept=striped", "anchor=zebra", TOY],
            "model.params.anchor (from ${anchor}): 'zebra' is not a toy canvas style",
        ),
        (
            "ca",
            ["concept=striped", "anchor=circle", TOY],
            "model.params.anchor (from ${anchor}): 'circle' is a toy object, 'striped'",
        ),
        (
            "uce",
            ["concept=circle", "anchor=dotted", TOY],
            "model.params.anchor (from ${anchor}): 'dotted' is a toy style, 'circle'",
        ),
        ("ca", ["concept=cat"], "model.params.anchor (from ${anchor}): missing: 'cat' is not a toy canvas concept"),
        ("uce", ["concept=striped", "lamb=-1"], "model.params.editor_config.params.lamb (from ${lamb}): "),
        (
            "uce",
            ["concept=striped", "lightning.trainer.max_steps=3"],
            "lightning.trainer.max_steps: a closed-form edit",
        ),
    ],
)
def test_bad_input_is_one_line_naming_the_key(method, extra, message, tmp_path, capsys):
    argv = ["--base", SMOKE, str(METHODS / f"{method}.yaml"), NO_RECIPE, *extra, "--logdir", str(tmp_path)]
    assert cli.run(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err) == 1 and message in err[0], err
