"""Few-step distillation: the DMD direction on a toy Gaussian, the student grid, the critic/student update ratio,
exact resume of every role, each method training its student and only its student, the collapse guard, OSS on a
toy flow, every bad input in one line, and an exported student that a stock diffusers pipeline reproduces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, assert_same_last_checkpoints, compose, killed_and_resumed, run_entry, train_config

from anisora.config.errors import ConfigError
from anisora.diffusion.sampling import SamplerSpec, build_stepper, stock_scheduler
from anisora.diffusion.schedules import few_step_sigmas, median_schedule, oss_search, read_schedule, write_schedule
from anisora.methods.distill.dmd import dmd_gradient, dmd_loss

QUIET = ["trainer.val_every_n_steps=1000", "logger=none", "callbacks.sample_videos=false"]
LORA = ["method.role_lora.rank=4", "method.role_lora.alpha=4"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A tiny train.py checkpoint (2 steps: distillation only needs a teacher of the right architecture)."""
    log = tmp_path_factory.mktemp("teacher")
    out = run_entry("train.py", *TINY, "trainer.max_steps=2", *QUIET, log_dir=log)
    assert out.returncode == 0, out.stderr[-3000:]
    return next(log.glob("train/*/checkpoints/last.ckpt"))


def distill(experiment: str, teacher: Path, *extra: str) -> list[str]:
    grid = ["sampler.num_steps=4"] if experiment != "tiny_cfg_distill" else []
    return [*TINY, f"experiment={experiment}", *grid, f"method.teacher={teacher}", *LORA, *QUIET, *extra]


# ----------------------------------------------------------------------------- the DMD direction and the grid
def test_dmd_gradient_moves_a_gaussian_student_toward_the_teacher():
    """Student samples N(mu_s, I), teacher N(mu_t, I) in 2-D; with exact scores (posterior means) at a noise
    level t, descending the DMD loss moves mu_s to mu_t."""
    generator = torch.Generator().manual_seed(0)
    mu_t = torch.tensor([2.0, -1.0])
    mu_s = torch.zeros(2, requires_grad=True)
    optimizer = torch.optim.SGD([mu_s], lr=0.5)

    def posterior_mean(x_t: torch.Tensor, mu: torch.Tensor, t: float) -> torch.Tensor:
        a = 1 - t
        return mu + a / (a * a + t * t) * (x_t - a * mu)

    start = float((mu_s.detach() - mu_t).norm())
    for _ in range(200):
        x0 = mu_s + torch.randn(256, 2, generator=generator)
        t = 0.5
        x_t = (1 - t) * x0.detach() + t * torch.randn(256, 2, generator=generator)
        gradient = dmd_gradient(x0.detach(), posterior_mean(x_t, mu_s.detach(), t), posterior_mean(x_t, mu_t, t))
        optimizer.zero_grad()
        dmd_loss(x0, gradient).backward()
        optimizer.step()
    assert float((mu_s.detach() - mu_t).norm()) < 0.1 * start


def test_the_default_student_grid_is_steps_1000_750_500_250_under_shift_5():
    from omegaconf import OmegaConf

    from anisora.config.store import compose_in_process
    from anisora.diffusion.objectives import FlowMatching

    sigmas = few_step_sigmas([1000, 750, 500, 250], 5.0)
    assert sigmas == pytest.approx([1.0, 0.9375, 0.833333, 0.625], abs=1e-6)
    cfg = compose_in_process(str(Path(__file__).parents[1] / "conf"), "train", ["sampler=few_step_4"])
    spec = SamplerSpec(**OmegaConf.to_container(cfg.sampler, resolve=True))
    assert spec.sigmas == pytest.approx(sigmas, abs=1e-4) and spec.guidance_scale == 1.0
    stepper = build_stepper(FlowMatching(), spec, torch.device("cpu"))
    assert [float(t) for t in stepper.timesteps] == pytest.approx([1000.0, 937.5, 833.3, 625.0], abs=0.05)
    eight = compose_in_process(str(Path(__file__).parents[1] / "conf"), "train", ["sampler=few_step_8"]).sampler
    assert list(eight.sigmas) == pytest.approx(few_step_sigmas(range(1000, 0, -125), 5.0), abs=1e-6)
    assert set(spec.sigmas) <= {round(x, 4) for x in eight.sigmas}  # the 4-step grid is a subset
    stock = stock_scheduler(spec)  # what exports ship: first-order UniPC on the same grid
    stock.set_timesteps(4)
    assert [int(t) for t in stock.timesteps] == [999, 937, 833, 625]
    assert [float(x) for x in stock.sigmas[:4]] == pytest.approx(sigmas, abs=1e-3)


# ----------------------------------------------------------------------------- training
def test_dmd_counts_critic_and_student_updates_and_trains_only_the_adapters(tmp_path, teacher):
    from anisora.tasks.train import prepare_training

    cfg = train_config(distill("tiny_dmd", teacher, "trainer.max_steps=12", "method.student_every=5"), tmp_path)
    run = prepare_training(cfg, tmp_path / "run")
    method = run.method
    base = {n: p.detach().clone() for n, p in method.backbone.denoiser.named_parameters() if "lora_" not in n}
    run.trainer.fit(method, datamodule=run.datamodule)
    # 10 batches: the critic steps on each, the student on batches 1 and 6 -> 12 optimizer steps
    assert method.updates == {"student": 2, "critic": 10}
    assert run.trainer.global_step == 12 and method.batches_seen == 10
    after = dict(method.backbone.denoiser.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in base.items())  # the teacher (the base) is untouched
    for role in ("student", "critic"):  # LoRA B starts at zero: both adapters moved
        assert any(p.abs().sum() > 0 for n, p in after.items() if f".lora_B.{role}." in n), role


@pytest.mark.parametrize("experiment", ["tiny_consistency", "tiny_cfg_distill"])
def test_consistency_and_guidance_distillation_train_the_student_only(tmp_path, teacher, experiment):
    from anisora.tasks.train import prepare_training

    cfg = train_config(distill(experiment, teacher, "trainer.max_steps=3"), tmp_path)
    run = prepare_training(cfg, tmp_path / "run")
    method = run.method
    before = {n: p.detach().clone() for n, p in method.backbone.denoiser.named_parameters()}
    run.trainer.fit(method, datamodule=run.datamodule)
    changed = {n for n, p in method.backbone.denoiser.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".student." in n or ".ema." in n for n in changed), changed
    assert any(".lora_B." in n for n in changed)  # the student's adapter learned something
    assert np.isfinite(float(run.trainer.callback_metrics["train/loss"]))


@pytest.mark.slow
def test_dmd_resumes_every_role_exactly_after_a_kill_and_samples_in_infer(tmp_path, teacher):
    steps = 12  # student_every=1: two optimizer steps (student, critic) per batch; killed after step 8
    runs = killed_and_resumed(tmp_path, distill("tiny_dmd", teacher, f"trainer.max_steps={steps}",
                                                "method.student_every=1", "callbacks.checkpoint_every_n_steps=4"),
                              steps)
    weights = assert_same_last_checkpoints(runs["full"], runs["resumed"], steps)
    for adapter in ("student", "critic", "ema"):
        assert any(f".lora_B.{adapter}." in k for k in weights), adapter
    state = torch.load(runs["full"] / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["role_updates"] == {"student": 6, "critic": 6}
    student_lr, critic_lr = (opt["param_groups"][0]["lr"] for opt in state["optimizer_states"])
    assert student_lr != critic_lr or len(state["optimizer_states"]) == 2
    assert state["hyper_parameters"]["init_from"] is None  # reloads from its own weights, not the teacher file
    assert state["hyper_parameters"]["teacher_sampler"]["num_steps"] == 2  # the teacher's own sampler, kept
    out = run_entry("infer.py", "accelerator=cpu", "num_clips=1", f"ckpt={runs['full'] / 'checkpoints' / 'last.ckpt'}",
                    log_dir=tmp_path / "infer")
    assert out.returncode == 0, out.stderr[-3000:]


def test_the_collapse_guard_stops_training_in_one_line(tmp_path, teacher, caplog):
    from anisora.tasks.train import prepare_training

    cfg = train_config(distill("tiny_dmd", teacher, "trainer.max_steps=40", "trainer.val_every_n_steps=4",
                               "method.collapse_floor=100", "callbacks.sample_videos=true"), tmp_path)
    run = prepare_training(cfg, tmp_path / "run")
    run.trainer.fit(run.method, datamodule=run.datamodule)
    assert run.trainer.global_step < 40
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("collapse:")]
    assert len(lines) == 1 and "method.collapse_floor=100" in lines[0]


# ----------------------------------------------------------------------------- bad input
def fake_checkpoint(path: Path, kind: str) -> Path:
    torch.save({"hyper_parameters": {"model": {"kind": kind}}}, path)
    return path


@pytest.mark.parametrize("overrides,message", [
    ([], r"^method\.teacher: a distillation needs a teacher"),
    (["method.teacher=/nowhere/last.ckpt"], r"^method\.teacher: /nowhere/last\.ckpt does not exist"),
    (["method.teacher={cog}"], r"^method\.teacher: .* is a 'tiny_cogvideox' model but model= builds a 'tiny' one"),
    (["method.teacher={tiny}", "sampler.sigmas=[1.0,0.6,0.8,0.2]"],
     r"^sampler\.sigmas: expected strictly decreasing levels"),
    (["method.teacher={tiny}", "sampler.sigmas=[1.5,0.9,0.5,0.2]"], r"^sampler\.sigmas: expected every level in"),
    (["method.teacher={tiny}", "sampler.num_steps=3"],
     r"^sampler\.num_steps: the step list has 4 levels but sampler\.num_steps is 3"),
    (["method.teacher={tiny}", "sampler=euler", "sampler.num_steps=4"],
     r"^sampler\.sigmas: the student trains on an exact step list"),
    (["method.teacher={cog}", "model=tiny_cogvideox"], r"^model\.objective\.name: DMDMethod distils flow-matching"),
])
def test_bad_distillation_input_fails_in_one_line_before_any_model(tmp_path, teacher, overrides, message):
    from anisora.tasks.train import check_training

    cog = fake_checkpoint(tmp_path / "cog.ckpt", "tiny_cogvideox")
    given = [o.format(cog=cog, tiny=teacher) for o in overrides]
    base = ["experiment=tiny_dmd", "sampler.num_steps=4", "accelerator=cpu", *QUIET]
    with pytest.raises(ConfigError, match=message):
        check_training(compose("train", [*base, *given]))


def test_full_roles_that_cannot_fit_the_device_fail_in_one_line(monkeypatch, teacher):
    from anisora.backbones import memory
    from anisora.methods.distill.dmd import DMDMethod

    monkeypatch.setattr(memory.devices, "resolve_device", lambda name: torch.device("cuda", 0))
    monkeypatch.setattr(memory.devices, "device_memory_bytes", lambda device: 1_000)
    cfg = compose("train", distill("tiny_dmd", teacher, "method.roles_mode=full"))
    with pytest.raises(ConfigError, match=r"^method\.roles_mode: full keeps 2 trainable and 1 frozen copies"):
        DMDMethod.check_config(cfg)


# ----------------------------------------------------------------------------- OSS
def test_oss_search_tracks_a_toy_flow_better_than_uniform_steps(tmp_path):
    """1-D Gaussian data N(2, 0.3^2): the exact flow velocity; the 4 chosen steps of a 30-step shifted Euler grid
    land closer to the 30-step result than 4 evenly spaced indices."""
    from anisora.diffusion.flow_matching import shift_sigmas

    grid = [float(s) for s in shift_sigmas(torch.linspace(1, 0, 31), 3.0)]
    m, s2 = 2.0, 0.09

    def velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
        a = 1 - sigma
        x0 = m + a * s2 / (a * a * s2 + sigma * sigma) * (x - a * m)
        return (x - x0) / max(sigma, 1e-6)

    start = torch.randn(64, generator=torch.Generator().manual_seed(0))
    teacher = [start]
    for i in range(30):
        teacher.append(teacher[-1] + (grid[i + 1] - grid[i]) * velocity(teacher[-1], grid[i]))

    def run(chain: list[int]) -> torch.Tensor:
        x = start
        for i, j in zip(chain, [*chain[1:], 30]):
            x = x + (grid[j] - grid[i]) * velocity(x, grid[i])
        return x

    chain, sigmas = oss_search(velocity, start, teacher, grid, 4)
    assert len(chain) == 4 and chain[0] == 0 and chain == sorted(set(chain)) and sigmas[0] == 1.0
    error = float((run(chain) - teacher[-1]).abs().mean())
    uniform = float((run([0, 7, 15, 22]) - teacher[-1]).abs().mean())
    assert error < uniform
    assert median_schedule([[0, 3, 9], [0, 5, 9], [0, 4, 8]]) == [0, 4, 9]
    path = write_schedule(tmp_path / "oss_4.json", sigmas, indices=chain)
    assert read_schedule(path) == sigmas
    with pytest.raises(ConfigError, match=r"^sampler\.schedule: .* is not a schedule file"):
        (tmp_path / "bad.json").write_text("[]")
        read_schedule(tmp_path / "bad.json")


# ----------------------------------------------------------------------------- export
def test_an_exported_four_step_student_samples_the_same_in_the_stock_pipeline(tmp_path):
    """The few-step grid exported with its scheduler: stock WanImageToVideoPipeline, 4 steps, guidance 1, gives
    the frames this framework's sampler gives (first-order UniPC is the Euler step; the grid differs by < 1e-3)."""
    from diffusers import WanImageToVideoPipeline
    from PIL import Image
    from test_wan_parity import FRAMES, PROMPT, SIZE, TEXT_LEN, ours, random_image, tiny_parts

    from anisora.backbones.export import export_pipeline
    from anisora.evaluation.metrics import psnr
    from anisora.guidance.pair import guide_pair
    from anisora.inference.pipeline import from_uint8_frames, generate_pixels

    spec = SamplerSpec(name="euler", num_steps=4, shift=5.0, guidance_scale=1.0,
                       sigmas=few_step_sigmas([1000, 750, 500, 250], 5.0))
    backbone = ours(tiny_parts("i2v"), "i2v")
    dst = export_pipeline(backbone, tmp_path / "student", sampler=spec)
    pipe = WanImageToVideoPipeline.from_pretrained(dst, local_files_only=True)
    image = random_image(1)
    theirs = pipe(image=Image.fromarray(image), prompt=PROMPT, height=SIZE, width=SIZE, num_frames=FRAMES,
                  num_inference_steps=4, guidance_scale=1.0, max_sequence_length=TEXT_LEN,
                  generator=torch.Generator().manual_seed(7), output_type="np").frames[0]
    g, m = guide_pair([(0, from_uint8_frames(image[None])[:, 0])], FRAMES, SIZE, SIZE)
    pixels = generate_pixels(backbone, [PROMPT], g[None], m[None], [7], spec)
    mine = ((pixels[0].permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1).numpy()
    assert psnr((mine * 255).round().astype(np.uint8), (theirs * 255).round().astype(np.uint8)) >= 40.0
