"""CogVideoX I2V (AniSora V1's family) through anisora gives the stock diffusers pipeline's frames.

Tiny random components, fp32 on the CPU, 9 frames at 32x32; frames compared before quantisation
(max abs diff <= 1e-4). Also: guide slot placement, the v-prediction algebra and schedule, loading a folder.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKLCogVideoX,
    CogVideoXDDIMScheduler,
    CogVideoXDPMScheduler,
    CogVideoXImageToVideoPipeline,
    CogVideoXTransformer3DModel,
)
from transformers import T5Config, T5EncoderModel

from anisora.backbones.base import Conditioning
from anisora.backbones.cogvideox import CogVideoXI2VBackbone, CogVideoXSpec, assemble, build, build_random_cogvideox
from anisora.backbones.tiny import word_tokenizer, world_vocabulary
from anisora.config.errors import ConfigError
from anisora.diffusion.objectives import VPrediction
from anisora.diffusion.sampling import SamplerSpec, sample
from anisora.diffusion.v_prediction import (
    DEFAULT_SCHEDULE,
    VSchedule,
    alphas_cumprod,
    build_v_scheduler,
    dynamic_guidance_scale,
)
from anisora.guidance.pair import guide_pair

FRAMES, SIZE, TEXT_LEN, SEED = 9, 32, 16, 7
PROMPT = "a red slime moves left across the meadow. aesthetic score: 5.5. motion score: 2.0."
NEGATIVE = "a still blue block"

TINY = dict(num_layers=2, num_attention_heads=2, attention_head_dim=16, time_embed_dim=32, text_embed_dim=32,
            sample_height=SIZE // 8, sample_width=SIZE // 8, sample_frames=FRAMES, max_text_seq_length=TEXT_LEN,
            max_sequence_length=TEXT_LEN, text_layers=2, text_heads=4, text_kv=8, text_ff=64, text_vocab=0,
            vae_block_out_channels=[8, 8, 8, 8], vae_layers_per_block=1, vae_norm_num_groups=2)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Toy-sized tensors gain nothing from threads, and on a busy 2-core box they lose seconds to contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def backbone() -> CogVideoXI2VBackbone:
    """CogVideoX-5B I2V's layout (RoPE + learned positional table, 32 input channels) at toy size."""
    return build_random_cogvideox(CogVideoXSpec(**TINY))


def tiny_15() -> CogVideoXI2VBackbone:
    """CogVideoX 1.5 I2V's layout: temporal patch 2, `ofs` embedding, inverted guide scaling, no learned table."""
    torch.manual_seed(0)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=32, out_channels=16, time_embed_dim=32,
        ofs_embed_dim=32, text_embed_dim=32, num_layers=2, sample_width=SIZE // 8, sample_height=SIZE // 8,
        sample_frames=FRAMES, patch_size=2, patch_size_t=2, temporal_compression_ratio=4,
        max_text_seq_length=TEXT_LEN, use_rotary_positional_embeddings=True,
    ).eval()
    vae = AutoencoderKLCogVideoX(
        block_out_channels=(8, 8, 8, 8), latent_channels=16, layers_per_block=1, norm_num_groups=2,
        temporal_compression_ratio=4, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, scaling_factor=0.7, invert_scale_latents=True,
    )
    tokenizer = word_tokenizer(world_vocabulary())
    encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                      num_heads=4, relative_attention_num_buckets=8, dropout_rate=0.0))
    spec = CogVideoXSpec(max_sequence_length=TEXT_LEN)
    return assemble(spec, transformer, vae, encoder, tokenizer)


def stock_pipeline(bb: CogVideoXI2VBackbone, sampler: str) -> CogVideoXImageToVideoPipeline:
    cls = CogVideoXDPMScheduler if sampler == "cogvideox_dpm" else CogVideoXDDIMScheduler
    pipe = CogVideoXImageToVideoPipeline(
        tokenizer=bb.prompt_encoder.tokenizer, text_encoder=bb.prompt_encoder.encoder, vae=bb.codec.vae,
        transformer=bb.denoiser, scheduler=cls(**DEFAULT_SCHEDULE.scheduler_config()),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ours(bb: CogVideoXI2VBackbone, image: torch.Tensor, spec: SamplerSpec, dynamic: bool) -> torch.Tensor:
    """Our adapter + sampler, continuing one generator as the pipeline does -> frames (F, 3, H, W) in [0, 1]."""
    generator = torch.Generator("cpu").manual_seed(SEED)
    video, mask = guide_pair([(0, 2.0 * image[0] - 1.0)], FRAMES, SIZE, SIZE)
    cond = bb.conditioning([PROMPT], video[None], mask[None], generator=generator)
    uncond = Conditioning(text=bb.encode_prompt([NEGATIVE]), guide=cond.guide)
    spec = dataclasses.replace(spec, dynamic_cfg=dynamic)
    latents = sample(bb, cond, uncond, bb.latent_shape(FRAMES, SIZE, SIZE), [SEED], spec, generators=[generator])
    pixels = bb.decode_latents(latents, num_frames=FRAMES)
    return (pixels / 2 + 0.5).clamp(0, 1)[0].permute(1, 0, 2, 3)


def stock(bb: CogVideoXI2VBackbone, image: torch.Tensor, spec: SamplerSpec, dynamic: bool,
          output_type: str = "pt") -> torch.Tensor:
    frames = stock_pipeline(bb, spec.name)(
        image=image, prompt=PROMPT, negative_prompt=NEGATIVE, height=SIZE, width=SIZE, num_frames=FRAMES,
        num_inference_steps=spec.num_steps, guidance_scale=spec.guidance_scale, use_dynamic_cfg=dynamic,
        generator=torch.Generator().manual_seed(SEED), output_type=output_type, max_sequence_length=TEXT_LEN,
    ).frames[0]
    if output_type == "np":
        return torch.from_numpy(np.asarray(frames)).permute(0, 3, 1, 2)  # (F, H, W, 3) -> (F, 3, H, W)
    return frames


def guide_image() -> torch.Tensor:
    return torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("dynamic", [False, True])
def test_first_frame_parity_dpm(backbone, dynamic):
    spec = SamplerSpec(name="cogvideox_dpm", num_steps=3, guidance_scale=6.0)
    image = guide_image()
    expected = stock(backbone, image, spec, dynamic)
    got = ours(backbone, image, spec, dynamic)
    assert got.shape == expected.shape == (FRAMES, 3, SIZE, SIZE)
    assert (got - expected).abs().max().item() <= 1e-4


def test_first_frame_parity_ddim_numpy(backbone):
    spec = SamplerSpec(name="cogvideox_ddim", num_steps=3, guidance_scale=6.0)
    image = guide_image()
    expected = stock(backbone, image, spec, dynamic=True, output_type="np")
    got = ours(backbone, image, spec, dynamic=True)
    assert (got - expected).abs().max().item() <= 1e-4


def test_cogvideox15_layout_parity():
    """Temporal patching pads the latent clip (4 latent frames for 3) and the pipeline drops the leading one."""
    bb = tiny_15()
    assert bb.latent_shape(FRAMES, SIZE, SIZE) == (16, 4, SIZE // 8, SIZE // 8)
    spec = SamplerSpec(name="cogvideox_dpm", num_steps=2, guidance_scale=6.0)
    image = guide_image()
    expected = stock(bb, image, spec, dynamic=False)
    got = ours(bb, image, spec, dynamic=False)
    assert got.shape == expected.shape == (FRAMES, 3, SIZE, SIZE)
    assert (got - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("frames,index,slot", [(9, 0, 0), (9, 8, 2), (9, -1, 2), (9, 4, 1), (13, 6, 2), (9, 1, 1)])
def test_guide_slot_placement(frames, index, slot):
    bb = build_random_cogvideox(CogVideoXSpec(**TINY, latent_sampling="mode"))
    clip = torch.rand(3, frames, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    video, mask = guide_pair([(index, clip[:, index])], frames, SIZE, SIZE)
    guide = bb.condition(video[None], mask[None])
    assert guide.shape == (1, 16, (frames - 1) // 4 + 1, SIZE // 8, SIZE // 8)
    frame = clip[None, :, index][:, :, None]  # (1, 3, 1, H, W): the frame alone, as a 1-frame video
    with torch.no_grad():
        alone = bb.codec.vae.encode(frame).latent_dist.mode() * 0.7
    assert torch.allclose(guide[:, :, slot], alone[:, :, 0], atol=1e-6)
    others = [s for s in range(guide.shape[2]) if s != slot]
    assert guide[:, :, others].abs().max() == 0


def test_first_and_last_guides_and_no_guide(backbone):
    clip = torch.rand(3, FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(2)) * 2 - 1
    video, mask = guide_pair([(0, clip[:, 0]), (-1, clip[:, -1])], FRAMES, SIZE, SIZE)
    guide = backbone.condition(torch.stack([video, torch.zeros_like(video)]), torch.stack([mask, mask * 0]))
    filled = guide.flatten(3).abs().amax(dim=(1, 3))  # (B, T)
    assert filled[0, 0] > 0 and filled[0, 1] == 0 and filled[0, 2] > 0
    assert filled[1].max() == 0


def test_alphas_cumprod_matches_diffusers():
    for shift in (1.0, 3.0):
        schedule = VSchedule(snr_shift_scale=shift)
        for cls in (CogVideoXDPMScheduler, CogVideoXDDIMScheduler):
            theirs = cls(**schedule.scheduler_config()).alphas_cumprod
            assert torch.allclose(alphas_cumprod(schedule), theirs.double(), rtol=0, atol=1e-12)
    abar = alphas_cumprod()
    assert abar[-1] == 0 and abar[0] > 0.999 and bool((abar[1:] < abar[:-1]).all())


def test_v_target_algebra():
    x0 = torch.randn(4, 16, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(4, 16, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 250, 777, 999])
    objective = VPrediction()
    x_t, v = objective.add_noise(x0, noise, t), objective.target(x0, noise, t)
    assert torch.allclose(objective.x0_from_output(x_t, v, t), x0, atol=1e-5)
    assert torch.allclose(objective.noise_from_output(x_t, v, t)[:-1], noise[:-1], atol=1e-4)
    scheduler = CogVideoXDDIMScheduler(**DEFAULT_SCHEDULE.scheduler_config())
    assert torch.allclose(x_t, scheduler.add_noise(x0, noise, t), atol=1e-5)
    assert torch.allclose(v, scheduler.get_velocity(x0, noise, t), atol=1e-5)
    assert torch.allclose(x_t[-1], noise[-1]) and torch.allclose(v[-1], -x0[-1])  # zero terminal SNR
    steps = objective.draw_levels(64, torch.Generator().manual_seed(0))
    assert steps.dtype == torch.int64 and 0 <= steps.min() and steps.max() < 1000
    assert torch.equal(steps, objective.draw_levels(64, torch.Generator().manual_seed(0)))
    assert torch.equal(objective.model_timestep(steps), steps)


def test_dynamic_cfg_gives_anisora_v1_scales():
    """50 trailing steps at scale 6: the per-step scales AniSora V1's released sampler realises."""
    scheduler = build_v_scheduler(SamplerSpec(name="cogvideox_dpm"))
    scheduler.set_timesteps(50)
    scales = [round(dynamic_guidance_scale(6.0, t, 50), 2) for t in scheduler.timesteps[:7].tolist()]
    assert scales == [2.29, 2.54, 6.97, 6.42, 2.79, 4.27, 1.04]


def test_sampler_name_is_checked(backbone):
    cond = Conditioning(text=torch.zeros(1, TEXT_LEN, 32), guide=torch.zeros(1, 16, 3, 4, 4))
    for name in ("euler", "unipc"):
        with pytest.raises(ConfigError, match=r"sampler\.name.*cogvideox_dpm or cogvideox_ddim"):
            sample(backbone, cond, None, (16, 3, 4, 4), [0], SamplerSpec(name=name, num_steps=2))


def test_empty_prompt_zeros():
    bb = build_random_cogvideox(CogVideoXSpec(**TINY, empty_prompt="zeros"))
    text = bb.encode_prompt(["", PROMPT])
    assert text.shape == (2, TEXT_LEN, 32)
    assert text[0].abs().max() == 0 and text[1].abs().max() > 0


def test_fails_fast_on_bad_sizes_and_keys(backbone):
    with pytest.raises(ConfigError, match=r"data\.height.*learned positional"):
        backbone.latent_shape(FRAMES, 2 * SIZE, SIZE)
    with pytest.raises(ConfigError, match=r"data\.num_frames"):
        backbone.latent_shape(8, SIZE, SIZE)
    with pytest.raises(ConfigError, match=r"model\.nope"):
        build(nope=1)
    with pytest.raises(ConfigError, match=r"model\.in_channels"):
        build_random_cogvideox(CogVideoXSpec(**dict(TINY, in_channels=16)))


def save_folder(bb: CogVideoXI2VBackbone, folder, snr_shift_scale: float = 1.0) -> None:
    bb.denoiser.save_pretrained(folder / "transformer")
    bb.codec.vae.save_pretrained(folder / "vae")
    bb.prompt_encoder.encoder.save_pretrained(folder / "text_encoder")
    bb.prompt_encoder.tokenizer.save_pretrained(folder / "tokenizer")
    schedule = VSchedule(snr_shift_scale=snr_shift_scale)
    CogVideoXDDIMScheduler(**schedule.scheduler_config()).save_pretrained(folder / "scheduler")


def test_loads_a_diffusers_folder_offline(backbone, tmp_path):
    save_folder(backbone, tmp_path, snr_shift_scale=3.0)
    loaded = build(ckpt=str(tmp_path), max_sequence_length=TEXT_LEN)
    assert isinstance(loaded, CogVideoXI2VBackbone)
    assert loaded.noise_schedule.snr_shift_scale == 3.0
    assert loaded.parameter_counts() == backbone.parameter_counts()
    for a, b in zip(loaded.denoiser.state_dict().values(), backbone.denoiser.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(loaded.encode_prompt([PROMPT]), backbone.encode_prompt([PROMPT]))
    scheduler_config = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler_config["prediction_type"] == "v_prediction"


def test_missing_part_fails_at_once(tmp_path):
    for part in ("transformer", "text_encoder", "tokenizer"):
        (tmp_path / part).mkdir()
    with pytest.raises(ConfigError, match=rf"^ckpt: {tmp_path / 'vae'} is missing"):
        build(ckpt=str(tmp_path))
    with pytest.raises(ConfigError, match="is not a directory"):
        build(ckpt=str(tmp_path / "nowhere"))
