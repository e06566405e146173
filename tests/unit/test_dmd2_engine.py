"""DMD2Engine: copies, backward simulation, the two time-scale updates, resume and the GAN head."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch

from unlearn.callbacks import ExportArtifacts, ToyBenchmark
from unlearn.data.canvas import CANVAS
from unlearn.diffusion.samplers import FewStepSampler
from unlearn.networks.lora import merged_state_dict

from .dmd2_helpers import build_engine, changed, snapshot, trainer

PROMPTS = ["a striped circle", "a dotted star"]
OBJECTIVE = "model.params.objective_config.params"
LORA2 = "{target: unlearn.networks.lora.NetworkCopy, params: {lora_rank: 2}}"
TOY_META = {"objects": list(CANVAS.objects), "styles": list(CANVAS.styles)}
JUDGE = str(Path(__file__).resolve().parents[2] / "checkpoints" / "toy" / "judge.safetensors")


@pytest.fixture(scope="module")
def engine():
    return build_engine()


def test_copies_start_as_the_teacher_and_only_the_teacher_is_frozen(engine):
    x = torch.randn(2, 3, 16, 16)
    sigma = torch.full((2,), 3.0)
    cond = engine.conditioning_for(PROMPTS)
    with torch.no_grad():
        teacher = engine.denoise(x, sigma, cond)
        assert torch.equal(engine.student_denoise(x, sigma, cond), teacher)
        assert torch.equal(engine.denoiser(engine.objective.critic, x, sigma, cond), teacher)
    assert not any(p.requires_grad for p in engine.network.parameters())
    assert not any(p.requires_grad for p in engine.conditioner.parameters())
    assert all(p.requires_grad for p in engine.generator.parameters())
    # The teacher is registered once (as `network`), not again inside the objective.
    assert not any(k.startswith("objective.teacher") for k in engine.state_dict())


def test_lora_critic_shares_the_teacher_weights():
    eng = build_engine(f"model.params.critic_copy={LORA2}", f"model.params.generator_copy={LORA2}")
    teacher_w = eng.network.unet.conv_in.weight
    assert eng.objective.critic.unet.conv_in.weight is teacher_w  # the same tensor, not a copy
    assert eng.generator.unet.conv_in.weight is teacher_w
    trainable = [n for n, p in eng.objective.critic.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    n_all = sum(p.numel() for p in eng.parameters())  # shared tensors count once
    n_teacher = sum(p.numel() for p in eng.network.parameters()) + sum(p.numel() for p in eng.conditioner.parameters())
    assert n_all < 1.5 * n_teacher
    # Merged export: plain diffusers names, and the same function as the LoRA generator.
    with torch.no_grad():
        for p in eng.generator.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    merged = merged_state_dict(eng.generator)
    assert set(merged) == set(eng.network.unet.state_dict())
    plain = build_engine()  # same architecture, full copies
    plain.generator.unet.load_state_dict(merged)
    x, sigma, cond = torch.randn(1, 3, 16, 16), torch.full((1,), 2.0), eng.conditioning_for(PROMPTS[:1])
    with torch.no_grad():
        assert torch.allclose(plain.student_denoise(x, sigma, cond), eng.student_denoise(x, sigma, cond), atol=1e-5)


def test_backward_simulation_gives_the_generators_own_intermediate_inputs(engine):
    cond = engine.conditioning_for(PROMPTS)
    sigmas = engine.student_sampler.get_sigmas()
    torch.manual_seed(1)
    x0, s0 = engine.generator_inputs(cond, 2, step=0)
    torch.manual_seed(1)
    noise = torch.randn(2, 3, 16, 16)
    assert torch.equal(s0, sigmas[0].expand(2)) and torch.allclose(x0, noise * (1 + sigmas[0] ** 2).sqrt())

    torch.manual_seed(1)
    x2, s2 = engine.generator_inputs(cond, 2, step=2)
    assert x2.shape == (2, 3, 16, 16) and torch.equal(s2, sigmas[2].expand(2))
    # Replay: x̂_0 = G(noise), x_1 = x̂_0 + sigma_1 eps, x̂_1 = G(x_1), x_2 = x̂_1 + sigma_2 eps'.
    torch.manual_seed(1)
    with torch.no_grad():
        x = torch.randn(2, 3, 16, 16) * (1 + sigmas[0] ** 2).sqrt()
        for i in range(2):
            x = engine.student_denoise(x, sigmas[i].expand(2), cond) + sigmas[i + 1] * torch.randn(2, 3, 16, 16)
    assert torch.allclose(x2, x, atol=1e-5)
    # Not pure noise: neither the step-0 input nor the same noise scaled to sigma_2.
    assert not torch.allclose(x2, x0, atol=1e-3)
    assert not torch.allclose(x2, noise * (1 + sigmas[2] ** 2).sqrt(), atol=1e-3)


class Recorder(pl.Callback):
    """Which of generator / critic changed in each iteration."""

    def __init__(self):
        self.history: list[tuple[bool, bool]] = []
        self.optimizer_steps: list[int] = []  # index of the optimizer, in the order they stepped

    def on_before_optimizer_step(self, trainer, module, optimizer):  # where gradients are clipped
        self.optimizer_steps.append(trainer.optimizers.index(optimizer))

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.g, self.c = snapshot(module.generator), snapshot(module.objective.critic)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.history.append((changed(self.g, module.generator), changed(self.c, module.objective.critic)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Four iterations with dfake_gen_update_ratio 2, recorded, then saved as a checkpoint."""
    root = tmp_path_factory.mktemp("dmd2")
    eng = build_engine("model.params.dfake_gen_update_ratio=2")
    teacher = snapshot(eng.network)
    rec = Recorder()
    tr = trainer(root, max_steps=4, callbacks=[rec, ExportArtifacts()])
    tr.fit(eng)
    tr.save_checkpoint(root / "four.ckpt")
    return eng, tr, rec, teacher, root


def test_critic_updates_ratio_times_per_generator_update_and_the_teacher_never_changes(trained):
    eng, tr, rec, teacher, root = trained
    assert tr.global_step == 4  # global steps count iterations, i.e. critic updates
    assert (eng.generator_updates, eng.critic_updates) == (2, 4)
    assert [g for g, _ in rec.history] == [True, False, True, False]  # G first, at iterations 0 and 2
    assert all(c for _, c in rec.history)  # the critic at every iteration
    assert rec.optimizer_steps == [0, 1, 1, 0, 1, 1]  # both go through the clipping hook, G before the critic
    assert not changed(teacher, eng.network)
    assert (root / "student.safetensors").is_file()


def test_resume_restores_both_optimizers_and_the_update_counts(trained):
    _, _, _, _, root = trained
    saved = torch.load(root / "four.ckpt", map_location="cpu", weights_only=True)
    assert saved["dmd2"] == {"generator_updates": 2, "critic_updates": 4} and len(saved["optimizer_states"]) == 2

    resumed = build_engine("model.params.dfake_gen_update_ratio=2", seed=1)
    tr = trainer(root / "resumed", max_steps=5)
    tr.fit(resumed, ckpt_path=str(root / "four.ckpt"))
    assert tr.global_step == 5
    assert (resumed.generator_updates, resumed.critic_updates) == (3, 5)  # iteration 4 updates G
    opt_g, opt_c = tr.optimizers
    assert {int(s["step"]) for s in opt_g.state.values()} == {3}  # Adam's counts continued, not restarted
    assert {int(s["step"]) for s in opt_c.state.values()} == {5}


def test_gan_classifier_trains_on_bottleneck_features(tmp_path):
    real = (
        "model.params.real_data_config={target: unlearn.data.canvas_datamodule.CanvasDataset, "
        "params: {length: 16, image_size: 16}}"
    )
    eng = build_engine(f"{OBJECTIVE}.gan_classifier=true", real, "model.params.dfake_gen_update_ratio=1")
    objective = eng.objective
    x, sigma, cond = torch.randn(2, 3, 16, 16), torch.full((2,), 1.0), eng.conditioning_for(PROMPTS)
    feats = objective.features.features(eng.denoiser, objective.critic, x, sigma, cond)
    assert feats.shape == (2, 32, 8, 8)  # the smoke UNet's mid block: widest block at 8 x 8
    with torch.no_grad():  # outside `features` the hook does nothing
        assert torch.equal(eng.denoiser(objective.critic, x, sigma, cond), eng.denoise(x, sigma, cond))
    head = snapshot(objective.cls_head)
    tr = trainer(tmp_path, max_steps=2)
    tr.fit(eng)
    assert changed(head, objective.cls_head)
    assert {"train/loss_gan_g", "train/loss_gan_d", "train/d_real"} <= set(tr.logged_metrics)
    objective.features.remove()
    with pytest.raises(ValueError, match="did not run"):
        objective.logits(x, cond)


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="model.params.real_data_config: gan_classifier needs real images"):
        build_engine(f"{OBJECTIVE}.gan_classifier=true")
    with pytest.raises(ValueError, match="timesteps"):
        build_engine("model.params.generator_timesteps=[249,999]")


def test_sampling_uses_the_student(engine):
    sampler = engine.make_sampler(num_steps=None, guidance_scale=7.5)
    assert isinstance(sampler, FewStepSampler) and sampler.timesteps == [999, 749, 499, 249]
    assert engine.make_sampler(num_steps=1).timesteps == [999]
    with pytest.raises(ValueError, match="few-step"):
        engine.make_sampler("euler")
    pair = engine.generate(PROMPTS, seeds=[0, 1])
    assert pair.shape == (2, 3, 16, 16)
    assert torch.allclose(engine.generate(PROMPTS[1:], seeds=[1])[0], pair[1], atol=1e-4)  # batch-independent
    assert torch.equal(engine.generate(PROMPTS, seeds=[0, 1]), pair)
    four = engine.generate(PROMPTS, seeds=[0, 1], decode=False)
    one = engine.generate(PROMPTS, seeds=[0, 1], num_steps=1, decode=False)
    assert one.shape == (2, 3, 16, 16) and not torch.allclose(one, four)


def test_teacher_weights_and_masks_reach_the_right_networks(tmp_path):
    from unlearn.engine.export import save_erased_weights
    from unlearn.hooks.io import save_masks
    from unlearn.hooks.manager import MaskManager

    base = build_engine()
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    erased = save_erased_weights(
        tmp_path / "erased.safetensors",
        {name: torch.zeros_like(base.network.unet.get_parameter(name))},
        {"method": "esd", "concept": "striped"},
    )
    manager = MaskManager.from_configs(
        [{"target": "unlearn.hooks.linear.LinearHooker", "params": {"module_regex": r"attn2\.to_v$"}}]
    ).register(base.network)
    masks = save_masks(
        manager,
        tmp_path / "masks.safetensors",
        values={k: torch.zeros_like(v) for k, v in manager.mask_values().items()},
    )
    manager.remove()

    eng = build_engine(f"model.params.teacher_weights={erased}", f"model.params.teacher_masks={masks}")
    for net in (eng.network, eng.generator, eng.objective.critic):  # the copies were made from the erased teacher
        assert not net.unet.get_parameter(name).any()
    assert eng.erased_concepts == ["striped"]
    x, sigma, cond = torch.randn(1, 3, 16, 16), torch.full((1,), 2.0), eng.conditioning_for(PROMPTS[:1])
    with torch.no_grad():  # the masks act on the teacher only
        assert not torch.allclose(eng.denoise(x, sigma, cond), eng.student_denoise(x, sigma, cond))
        assert torch.equal(eng.denoiser(eng.objective.critic, x, sigma, cond), eng.student_denoise(x, sigma, cond))


def _benchmark(monkeypatch, eng, fake, **params) -> ToyBenchmark:
    """A `ToyBenchmark` of ``eng`` (given the toy canvas metadata) whose benchmark is ``fake``."""
    import unlearn.eval.toy_benchmark as toy_benchmark

    monkeypatch.setattr(toy_benchmark, "run_toy_benchmark", fake)
    monkeypatch.setattr(eng, "metadata", TOY_META)
    return ToyBenchmark(judge=JUDGE, **params)


def _at_step(root: Path, step: int) -> SimpleNamespace:
    """What the callback reads of the trainer at global step ``step``."""
    return SimpleNamespace(default_root_dir=str(root), is_global_zero=True, global_step=step)


def test_train_end_benchmarks_the_student_and_the_teacher(monkeypatch, tmp_path):
    import json

    calls, images = [], []

    def fake_benchmark(model, out_dir, sampler=None, **kwargs):
        images.append(model.generate(["a striped circle"], seeds=[0], sampler=sampler))
        calls.append((type(model).__name__, Path(out_dir), type(sampler).__name__, kwargs["erased"], images[-1].shape))
        metrics = {"FD": float(len(calls)), "UA": 50.0}
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "metrics.json").write_text(json.dumps(metrics))
        return metrics

    eng = build_engine("model.params.dfake_gen_update_ratio=2")
    benchmark = _benchmark(monkeypatch, eng, fake_benchmark, concepts="striped", before=True)
    trainer(tmp_path, max_steps=2, callbacks=[ExportArtifacts(), benchmark]).fit(eng)
    assert (tmp_path / "student.safetensors").is_file()
    shape = (1, 3, 16, 16)
    # the teacher (its own sampler) into eval/before/ at the start, the student at the end
    assert calls == [
        ("DMD2Engine", tmp_path / "eval" / "before", "EulerSampler", ["striped"], shape),
        ("DMD2Engine", tmp_path / "eval", "FewStepSampler", ["striped"], shape),
    ]
    assert torch.equal(images[0], eng.teacher_generate(["a striped circle"], seeds=[0]))
    assert torch.equal(images[1], eng.generate(["a striped circle"], seeds=[0]))
    assert not torch.allclose(images[0], images[1], atol=1e-3)
    table = (tmp_path / "eval" / "before_after.md").read_text()
    assert "| FD | 1.00 | 2.00 |" in table


def test_every_n_steps_benchmarks_the_student_during_training(trained, monkeypatch, tmp_path):
    import json

    eng = trained[0]
    calls = []

    def fake_benchmark(model, out_dir, sampler=None, **kwargs):
        modes = []  # the generator's mode while it samples
        hook = model.generator.register_forward_pre_hook(lambda module, args: modes.append(module.training))
        try:
            model.generate(["a striped circle"], seeds=[0], sampler=sampler)
        finally:
            hook.remove()
        calls.append((Path(out_dir).name, type(sampler).__name__, set(modes)))
        return {"FD": 10.0 + len(calls), "UA": 100.0 - 25 * len(calls), "IRA": 50.0, "CRA": float("nan")}

    benchmark = _benchmark(monkeypatch, eng, fake_benchmark, before=True, every_n_steps=2)
    benchmark.setup(_at_step(tmp_path, 0), eng, "fit")
    eng.train()
    for step in (1, 2, 3, 4):
        benchmark.on_train_batch_end(_at_step(tmp_path, step), eng, None, None, 0)
    # the student only (no teacher), in eval mode, at iterations 2 and 4; training mode restored
    assert calls == [("step_2", "FewStepSampler", {False}), ("step_4", "FewStepSampler", {False})]
    assert eng.training and eng.generator.training
    rows = [json.loads(line) for line in (tmp_path / "eval" / "progress.jsonl").read_text().splitlines()]
    assert [(r["step"], r["UA"], r["FD"]) for r in rows] == [(2, 75.0, 11.0), (4, 50.0, 12.0)]
    table = (tmp_path / "eval" / "progress.md").read_text().splitlines()
    assert table[0] == "| step | UA | IRA | CRA | FD |"
    assert table[3].startswith("| 4 | ") and table[3].endswith("| 50.0 | 50.0 | n/a | 12.0 |")


def test_final_student_benchmarked_by_a_progress_evaluation_is_not_benchmarked_again(trained, monkeypatch, tmp_path):
    import json

    eng = trained[0]
    calls = []

    def fake_benchmark(model, out_dir, sampler=None, **kwargs):
        calls.append((type(sampler).__name__, Path(out_dir).relative_to(tmp_path).as_posix()))
        metrics = {"FD": 10.0 + len(calls), "UA": 90.0}
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "metrics.json").write_text(json.dumps(metrics))
        (Path(out_dir) / "grid.png").write_bytes(b"png %d" % len(calls))
        return metrics

    benchmark = _benchmark(monkeypatch, eng, fake_benchmark, before=False, every_n_steps=2)
    benchmark.setup(_at_step(tmp_path, 0), eng, "fit")
    benchmark.on_train_batch_end(_at_step(tmp_path, 4), eng, None, None, 0)
    benchmark.on_train_end(_at_step(tmp_path, 4), eng)
    # the final student's files come from its progress benchmark (the teacher: eval/before/ at the start)
    assert calls == [("FewStepSampler", "eval/step_4")]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == {"FD": 11.0, "UA": 90.0}
    assert (tmp_path / "eval" / "grid.png").read_bytes() == b"png 1"
    # a run ending between progress benchmarks benchmarks its final student
    calls.clear()
    benchmark.on_train_end(_at_step(tmp_path, 5), eng)
    assert calls == [("FewStepSampler", "eval")]


@pytest.mark.parametrize("every", [0, -3, 1.5, True, "10"])
def test_every_n_steps_must_be_a_positive_integer(every):
    from unlearn.config import instantiate_from_config

    with pytest.raises(ValueError, match="lightning.callbacks.toy_benchmark.params.every_n_steps: expected a positive"):
        instantiate_from_config(
            {"target": "unlearn.callbacks.ToyBenchmark", "params": {"every_n_steps": every}},
            _path="lightning.callbacks.toy_benchmark",
        )


def test_teacher_generate_samples_the_teacher_not_the_student():
    from unlearn.engine import generation
    from unlearn.engine.diffusion import DiffusionEngine

    engine = build_engine()
    with torch.no_grad():  # make the student differ from the teacher
        for p in engine.generator.parameters():
            p.add_(0.05)
    teacher = engine.teacher_generate(PROMPTS, seeds=[0, 1], decode=False)
    sampler = DiffusionEngine.make_sampler(engine)
    with torch.no_grad():
        noise = generation.seeded_noise([0, 1], engine.latent_shape)
        expected = sampler(engine.denoise, noise, engine.conditioning_for(PROMPTS), engine.unconditional_for([""] * 2))
    assert torch.allclose(teacher, expected, atol=1e-6)
    assert not torch.allclose(teacher, engine.generate(PROMPTS, seeds=[0, 1], num_steps=4, decode=False), atol=1e-3)
