"""ESD (FineTuneEngine + ESDObjective) on the tiny smoke model: selection, frozen teacher, loss,
trajectories, export."""

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from tests.unit.esd_helpers import make_engine, smoke_params
from unlearn.data.canvas import CANVAS
from unlearn.engine.export import apply_erased_weights, load_erased_weights
from unlearn.engine.finetune import FineTuneEngine

TOY_META = {"objects": list(CANVAS.objects), "styles": list(CANVAS.styles)}


def train(engine: FineTuneEngine, steps: int, lr: float = 1e-3, batch=None) -> list[float]:
    opt = torch.optim.Adam(engine.trainable_parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        b = batch if batch is not None else engine.erasure_batch()[0]
        loss = engine.objective(engine.student_eps, engine.teacher_eps, b).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def engine():
    return make_engine(negative_guidance=4.0)


def test_only_selected_parameters_train(engine):
    trainable = {n for n, p in engine.named_parameters() if p.requires_grad}
    assert trainable == {"network.unet." + n for n in engine.selected}
    assert len(engine.selected) == 20 and all(".attn2." in n for n in engine.selected)
    optimizer = engine.configure_optimizers()[0]
    assert type(optimizer) is torch.optim.Adam
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 20
    # the frozen copy holds only the selected tensors, not a second network
    assert len(list(engine.teacher.buffers())) == 20


def test_loss_equals_hand_computation(engine):
    batch, _ = engine.erasure_batch()
    out = engine.objective(engine.student_eps, engine.teacher_eps, batch)
    x, s = batch.x, batch.sigma
    with torch.no_grad():
        e0 = engine.teacher_eps(x, s, batch.null)
        ec = engine.teacher_eps(x, s, batch.concept)
        pred = engine.student_eps(x, s, batch.concept)
    assert torch.allclose(out.loss, ((pred - (e0 - 4.0 * (ec - e0))) ** 2).mean(), rtol=1e-4, atol=1e-10)


def test_teacher_stays_frozen_while_student_learns():
    engine = make_engine(negative_guidance=4.0)
    batch, _ = engine.erasure_batch()
    original = {n: p.detach().clone() for n, p in engine.network.named_parameters()}
    with torch.no_grad():
        teacher_before = engine.teacher_eps(batch.x, batch.sigma, batch.concept)
        student_before = engine.student_eps(batch.x, batch.sigma, batch.concept)
    losses = train(engine, 6, batch=batch)
    with torch.no_grad():
        teacher_after = engine.teacher_eps(batch.x, batch.sigma, batch.concept)
        student_after = engine.student_eps(batch.x, batch.sigma, batch.concept)
    assert torch.equal(teacher_after, teacher_before)
    assert not torch.allclose(student_after, student_before)
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.5 * losses[0]
    for name, value in engine.teacher.tensors().items():
        assert torch.equal(value, original[name])
    changed = {n for n, p in engine.network.named_parameters() if not torch.equal(p, original[n])}
    assert changed == {"unet." + n for n in engine.selected}


def test_v_prediction_eps_by_hand():
    params = smoke_params()
    params["denoiser_config"]["params"]["scaling_config"] = {"target": "unlearn.diffusion.scalings.VScaling"}
    engine = make_engine(**params)
    x, sigma = torch.randn(2, 3, 16, 16), engine.denoiser.sigmas[[100, 700]]
    cond = engine.conditioning_for(["striped", ""])
    with torch.no_grad():
        v = engine.network(x / (sigma**2 + 1).sqrt()[:, None, None, None], torch.tensor([100.0, 700.0]), cond)
        s = sigma[:, None, None, None]
        x0 = x / (s**2 + 1) - v * s / (s**2 + 1).sqrt()
        assert torch.allclose(engine.teacher_eps(x, sigma, cond), (x - x0) / s, atol=1e-5)


def test_pool_serves_each_trajectory_once_at_its_own_step():
    engine = make_engine(template="custom", prompt_templates=["{concept}", "a {concept} thing"])
    pool = engine.pool
    args = (engine.teacher_denoise, engine._sampler_conds, engine.train_latent_shape)
    first = [pool.take(1, *args) for _ in range(4)]
    assert pool.refills == 1 and pool.remaining == 0 and pool.x.shape == (4, 3, 16, 16)
    for i, b in enumerate(first):  # handed out in order, each once, with its own step and prompt
        assert torch.equal(b.x[0], pool.x[i]) and int(b.step[0]) == int(pool.steps[i])
        assert b.sigma[0] == pool.sigmas[pool.steps[i]] and int(b.prompt[0]) == int(pool.prompts[i])
    pool.take(1, *args)
    assert pool.refills == 2  # exhausted -> refilled from fresh noise, never reused
    again = make_engine(template="custom", prompt_templates=["{concept}", "a {concept} thing"])
    b2 = again.pool.take(1, again.teacher_denoise, again._sampler_conds, again.train_latent_shape)
    assert torch.equal(b2.x, first[0].x) and torch.equal(b2.step, first[0].step)  # seeded


def test_preserve_source_own_draws_preserve_latents_from_their_own_trajectories():
    engine = make_engine(preserve="dotted,solid", separator=",", preserve_source="own", preserve_step_range=[2, 5])
    batch, _ = engine.erasure_batch()
    own = engine.preserve_pool
    assert own.refills == 1 and own.num_prompts == 2 and engine.pool.num_prompts == len(engine.prompts)
    assert torch.equal(batch.preserve_x, own.x[:1]) and torch.equal(batch.preserve_sigma, own.sigmas[own.steps[:1]])
    assert not torch.equal(batch.preserve_x, batch.x)
    table = engine._conds()["preserve"]["crossattn"]  # (2, L, D)
    assert torch.equal(batch.preserve["crossattn"][0], table[int(own.prompts[0])])
    # the preserve pool samples with the preserve prompts: same noise and step as a one-trajectory run
    from unlearn.engine.generation import build_sampler

    sampler = build_sampler(engine.trajectory_sampler_config)
    sigmas = sampler.get_sigmas(engine.pool.num_steps)
    cond, uc = engine._preserve_sampler_conds(own.prompts[:1])
    from unlearn.engine.trajectories import sample_to_steps

    alone = sample_to_steps(sampler, engine.teacher_denoise, own.noise[:1], own.steps[:1].cpu(), sigmas, cond, uc)
    assert torch.allclose(alone, own.x[:1], rtol=1e-4, atol=1e-4)
    assert set(own.steps.tolist()) <= {2, 3, 4}
    assert make_engine(preserve="dotted").erasure_batch()[0].preserve_x is None  # default: the concept's x_t


def test_own_preserve_latents_follow_step_range_unless_set():
    engine = make_engine(ddim_steps=4, step_range=[0, 1], preserve="dotted", preserve_source="own", pool_size=8)
    engine.erasure_batch()
    assert set(engine.pool.steps.tolist()) == {0} and set(engine.preserve_pool.steps.tolist()) == {0}
    meta = engine.erased_metadata()
    assert meta["step_range"] == [0, 1] and meta["preserve_step_range"] == [0, 1]
    every = make_engine(
        ddim_steps=4,
        step_range=[0, 1],
        preserve="dotted",
        preserve_source="own",
        preserve_step_range=[0, 4],
        pool_size=8,
    )
    every.erasure_batch()
    assert set(every.pool.steps.tolist()) == {0}  # the erasure stays where step_range says
    assert every.preserve_pool.step_range == (0, 4) and len(set(every.preserve_pool.steps.tolist())) > 1
    assert every.erased_metadata()["preserve_step_range"] == [0, 4]


def test_step_range_limits_the_steps_of_x_t():
    engine = make_engine(ddim_steps=10, step_range=[2, 4], pool_size=8)
    pool = engine.pool
    pool.take(1, engine.teacher_denoise, engine._sampler_conds, engine.train_latent_shape)
    assert set(pool.steps.tolist()) <= {2, 3} and len(set(pool.steps.tolist())) == 2  # 8 draws: both occur
    assert engine.erased_metadata()["step_range"] == [2, 4]
    assert make_engine(ddim_steps=10).erased_metadata()["step_range"] == [0, 10]


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_shrinking_batch_equals_one_trajectory_at_a_time(engine, sampler):
    from unlearn.engine.trajectories import sample_to_steps

    s = engine.make_sampler(sampler, 6, 3.0)
    sigmas = s.get_sigmas(6)
    noise, stop = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([2, 5, 0, 3])
    cond, uc = engine._sampler_conds(torch.tensor([0, 0, 0, 0]))
    batched = sample_to_steps(s, engine.teacher_denoise, noise, stop, sigmas, cond, uc)
    for i in range(4):
        one = {k: v[i : i + 1] for k, v in cond.items()}, {k: v[i : i + 1] for k, v in uc.items()}
        alone = s(engine.teacher_denoise, noise[i : i + 1], *one, sigmas=sigmas, end_step=int(stop[i]))
        assert torch.allclose(batched[i : i + 1], alone, rtol=1e-4, atol=1e-4)  # |x| ~ sigma_max ~ 15
    assert torch.allclose(batched[2], noise[2] * torch.sqrt(1 + sigmas[0] ** 2))  # t = 0: the scaled noise


def test_export_then_apply_is_bit_identical(tmp_path):
    trained = make_engine(negative_guidance=4.0)
    train(trained, 2)
    path = trained.export(tmp_path)
    tensors, meta = load_erased_weights(path)
    assert sorted(tensors) == sorted(trained.selected)
    assert meta["train_method"] == "xattn" and meta["concept"] == "striped" and meta["negative_guidance"] == "4.0"
    assert meta["loss_weighting"] == "eps"  # the paper's loss unless loss_weighting_config is set
    fresh = make_engine()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10.0, 500.0])
    cond = trained.conditioning_for(["striped", "a circle"])
    with torch.no_grad():
        assert not torch.equal(fresh.network(x, t, cond), trained.network(x, t, cond))
        assert apply_erased_weights(fresh, path)["train_method"] == "xattn"
        assert torch.equal(fresh.network(x, t, cond), trained.network(x, t, cond))
    # plain diffusers: names are the UNet's own state-dict keys
    missing, unexpected = make_engine().network.unet.load_state_dict(tensors, strict=False)
    assert unexpected == [] and len(missing) == len(fresh.network.unet.state_dict()) - 20


def test_apply_errors_name_file_and_parameter(tmp_path, engine):
    from safetensors.torch import save_file

    with pytest.raises(FileNotFoundError, match="no such file: .*nope.safetensors"):
        apply_erased_weights(engine, tmp_path / "nope.safetensors")
    (tmp_path / "corrupt.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read .*corrupt.safetensors"):
        apply_erased_weights(engine, tmp_path / "corrupt.safetensors")
    name = engine.selected[0]
    before = dict(engine.network.unet.named_parameters())[name].clone()
    save_file(
        {name: torch.zeros_like(before), "up_blocks.9.attn2.to_k.weight": torch.zeros(2)},
        str(tmp_path / "foreign.safetensors"),
    )
    with pytest.raises(ValueError, match="'up_blocks.9.attn2.to_k.weight' is not in the model"):
        apply_erased_weights(engine, tmp_path / "foreign.safetensors")
    assert torch.equal(dict(engine.network.unet.named_parameters())[name], before)  # untouched
    save_file({name: torch.zeros(3, 3)}, str(tmp_path / "shape.safetensors"))
    with pytest.raises(ValueError, match=f"'{name}' has shape \\(3, 3\\)"):
        apply_erased_weights(engine, tmp_path / "shape.safetensors")


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"train_method": "crossattn"}, "train_method: unknown 'crossattn'"),
        ({"concept": "stripy", "metadata": TOY_META}, "unknown concept 'stripy'; known objects"),
        ({"concept": "striped,,dotted", "separator": ","}, "concept: empty"),
        ({"concept": "striped", "separator": ""}, "separator"),
        ({"batch_size": 5}, r"model.params.batch_size: expected an integer in \[1, 4\] \(the trajectory source"),
        (
            {"sampler": {"target": "unlearn.diffusion.samplers.PLMSSampler"}},
            "model.params.trajectory_sampler_config.target: module 'unlearn.diffusion.samplers' has no attribute "
            "'PLMSSampler'",
        ),
        ({"ddim_steps": 0}, "model.params.trajectory_sampler_config.params.num_steps: expected a positive integer"),
        (
            {"step_range": [3, 3]},
            r"model.params.trajectory_config.params.step_range: expected \[lo, hi\] with "
            r"0 <= lo < hi <= the sampler's num_steps",
        ),
        ({"step_range": [0, 7], "ddim_steps": 6}, r"<= the sampler's num_steps \(6\), got \[0, 7\]"),
        ({"step_range": 5}, r"model.params.trajectory_config.params.step_range: expected \[lo, hi\].*got 5"),
        ({"null_weight": -0.5}, r"model.params.objective_config.params.null_weight: expected a number >= 0, got -0.5"),
        ({"null_weight": "1"}, r"model.params.objective_config.params.null_weight: expected a number >= 0, got '1'"),
        (
            {"preserve_weight": -2},
            r"model.params.objective_config.params.preserve_weight: expected a number >= 0, "
            r"got -2",
        ),
        ({"preserve_source": "theirs"}, r"model.params.preserve_source: expected one of \['concept', 'own'\]"),
        (
            {"preserve": "dotted", "preserve_step_range": [0, 2]},
            r"model.params.preserve_step_range applies to preserve_source: own",
        ),
        (
            {"preserve": "dotted", "preserve_source": "own", "preserve_step_range": [0, 99]},
            r"model.params.preserve_step_range: expected \[lo, hi\]",
        ),
        (
            {"loss_weighting_config": {"target": "unlearn.diffusion.loss_weighting.VWeightin"}},
            "model.params.objective_config.params.weighting.target: .*did you mean "
            "unlearn.diffusion.loss_weighting.VWeighting",
        ),
    ],
)
def test_bad_settings_are_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        make_engine(**kw)


def test_loss_weighting_from_config():
    from unlearn.diffusion.loss_weighting import VWeighting

    weighted = make_engine(loss_weighting_config={"target": "unlearn.diffusion.loss_weighting.VWeighting"})
    assert isinstance(weighted.objective.weighting, VWeighting)
    assert make_engine().objective.weighting is None  # the paper's loss by default


def test_toy_and_sd_concepts():
    toy = make_engine(concept="striped,arrow", separator=",", metadata=TOY_META)
    assert toy.concepts == ["striped", "arrow"] and "a striped pattern" in toy.prompts and "an arrow" in toy.prompts
    assert make_engine(concept="Van Gogh").prompts == ["Van Gogh"]  # not a toy model: any concept


def test_before_after_benchmark_wiring(tmp_path, monkeypatch):
    import unlearn.eval.toy_benchmark as toy_benchmark
    from unlearn.callbacks import ToyBenchmark

    calls = []

    def fake_benchmark(model, erased, out_dir, images_per_prompt, batch_size, sampler, model_concepts, **kw):
        calls.append((list(erased), images_per_prompt, model_concepts))
        metrics = {"UA": 10.0 * len(calls), "IRA": 90.0, "CRA": 80.0, "FD": 1.5}
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "metrics.json").write_text(json.dumps(metrics))
        return metrics

    monkeypatch.setattr(toy_benchmark, "run_toy_benchmark", fake_benchmark)
    engine = make_engine(metadata=TOY_META)
    judge = str(Path(__file__).resolve().parents[2] / "checkpoints" / "toy" / "judge.safetensors")
    benchmark = ToyBenchmark(images_per_prompt=1, num_steps=2, judge=judge, before=True)
    pl.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=str(tmp_path),
        callbacks=[benchmark],
    ).fit(engine)
    assert calls[0] == (["striped"], 1, (TOY_META["objects"], TOY_META["styles"]))
    assert json.loads((tmp_path / "eval" / "before" / "metrics.json").read_text())["UA"] == 10.0
    table = (tmp_path / "eval" / "before_after.md").read_text()
    assert "| UA | 10.00 | 20.00 |" in table and "| FD | 1.50 | 1.50 |" in table


@pytest.mark.parametrize(
    "params, match",
    [
        ({"images": 2}, "cannot build unlearn.callbacks.ToyBenchmark: .*unexpected keyword argument 'images'"),
        ({"images_per_prompt": 0}, "images_per_prompt: expected a positive integer, got 0"),
    ],
)
def test_benchmark_settings_are_checked(params, match):
    from unlearn.config import ConfigError, instantiate_from_config

    with pytest.raises(ConfigError, match=r"lightning.callbacks.toy_benchmark.*" + match):
        instantiate_from_config(
            {"target": "unlearn.callbacks.ToyBenchmark", "params": params}, _path="lightning.callbacks.toy_benchmark"
        )


def test_diffusers_folder_export(tmp_path):
    from unlearn.networks.unet import build_unet

    engine = make_engine(export_diffusers=True)
    train(engine, 1)
    engine.export(tmp_path)
    unet = build_unet(pretrained_path=str(tmp_path))  # the run dir works as a pipeline folder (unet/)
    ours = engine.network.unet.state_dict()
    assert all(torch.equal(v, ours[k]) for k, v in unet.state_dict().items())
