"""Typed schemas behind every config group.

Each group's YAML carries values only; the dataclass here says which keys exist and what they
may hold. Hydra/OmegaConf reject unknown keys and ill-typed values while composing; the
`choices`/`min`/`max` metadata below are checked by `anisora.config.validate` before any model is
built, so every bad value fails in one line that names the key and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING


def choice(default: str, *choices: str) -> Any:
    return field(default=default, metadata={"choices": (default, *choices)})


def bounded(default: float | int | None, lo: float | None = None, hi: float | None = None) -> Any:
    return field(default=default, metadata={"min": lo, "max": hi})


@dataclass
class PathsConfig:
    root_dir: str = "${hydra:runtime.cwd}"
    log_dir: str = "${paths.root_dir}/outputs"
    output_dir: str = "${hydra:runtime.output_dir}"


@dataclass
class AcceleratorConfig:
    """Where and how tensors run; the Lightning trainer and inference both read it."""

    name: str = choice("auto", "cpu", "gpu", "npu")
    devices: Any = 1  # per node
    num_nodes: int = bounded(1, 1)  # machines of a torchrun / SLURM launch (README: Many nodes)
    precision: str = choice("32-true", "bf16-mixed", "bf16-true", "16-mixed")
    attention_backend: Optional[str] = None  # diffusers attention backend name; auto: per device; None: default
    num_threads: Optional[int] = bounded(None, 1)  # CPU intra-op threads; None keeps torch's default


@dataclass
class StrategyConfig:
    """How training spreads over `accelerator.devices` (anisora.accelerators.strategies); the same options
    compose with every accelerator (gloo on the CPU, NCCL on GPUs, HCCL on NPUs)."""

    name: str = choice("single", "ddp", "fsdp", "deepspeed")
    process_group_backend: Optional[str] = None  # None: the accelerator's (gloo, nccl, hccl)
    find_unused_parameters: bool = False  # ddp
    sharding_strategy: str = choice("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD")  # fsdp
    state_dict_type: str = choice("full", "sharded")  # fsdp checkpoints: one file, or a folder of shards per rank
    cpu_offload: bool = False  # fsdp: parameters wait on the CPU between uses
    stage: int = bounded(2, 2, 3)  # deepspeed ZeRO stage: 2 shards optimizer state and gradients, 3 also weights
    offload_optimizer: bool = False  # deepspeed: optimizer state (and step) on the CPU
    offload_parameters: bool = False  # deepspeed stage 3: weights on the CPU between uses


@dataclass
class LoraConfig:
    """Low-rank adapters (peft) on the denoiser; rank 0 (or model.lora=null) trains every denoiser weight."""

    rank: int = bounded(0, 0)
    alpha: float = bounded(16.0, 0.0)  # scale = alpha / rank; must be > 0 when rank > 0
    dropout: float = bounded(0.0, 0.0, 1.0)
    targets: list[str] = field(default_factory=lambda: list(WAN_LORA_TARGETS))  # module name suffixes


#: attention and FFN projections of diffusers' WanTransformerBlock and CogVideoXBlock
WAN_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2")
COGVIDEOX_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")


@dataclass
class ObjectiveConfig:
    name: str = choice("flow_match")
    shift: float = bounded(3.0, 0.01)
    timestep_sampling: str = choice("uniform", "logit_normal")
    motion_weight: float = bounded(0.0, 0.0)  # extra loss weight on latents that differ from the first frame's
    guide_weight: float = bounded(0.0, 0.0)  # extra loss weight on latent frames that hold a given keyframe


@dataclass
class TinyModelConfig:
    """The tiny Wan2.1-I2V-layout backbone (see anisora.backbones.tiny)."""

    _target_: str = "anisora.backbones.tiny.build"
    kind: str = choice("tiny")
    spatial_factor: int = bounded(1, 1)
    residual_latents: bool = False  # latent frames after the first hold their difference to it (a causal codec)
    latent_scale: float = bounded(2.0, 1e-6)
    num_layers: int = bounded(4, 1)
    num_attention_heads: int = bounded(4, 1)
    attention_head_dim: int = bounded(32, 2)
    ffn_dim: int = bounded(256, 1)
    freq_dim: int = bounded(64, 2)
    text_dim: int = bounded(64, 2)
    text_layers: int = bounded(2, 1)
    text_heads: int = bounded(4, 1)
    max_sequence_length: int = bounded(32, 4)
    train_text_encoder: bool = False  # the tiny UMT5 is random; training it with the DiT sharpens text control
    init_seed: int = 0
    lora: Optional[LoraConfig] = field(default_factory=LoraConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)


@dataclass
class NativeSizeConfig:
    """The clip size a model was trained for: infer.py uses it unless size.* says otherwise."""

    num_frames: int = 81
    height: int = 480
    width: int = 832


@dataclass
class WanModelConfig:
    """Wan2.1 T2V or I2V at any size (anisora.backbones.wan_loading.WanSpec); weights from `ckpt`."""

    _target_: str = "anisora.backbones.wan_loading.build"
    kind: str = choice("wan")
    init: str = choice("pretrained", "random")  # random: no weights needed (benchmarks, from scratch); needs no ckpt
    variant: str = choice("i2v", "t2v")
    ckpt: Optional[str] = None  # diffusers-format folder (required unless init=random)
    transformer: Optional[str] = None  # DiT weights replacing ckpt's: Wan original layout (AniSora V2/V3) or a folder
    num_layers: int = bounded(40, 1)
    num_attention_heads: int = bounded(40, 1)
    attention_head_dim: int = bounded(128, 1)
    ffn_dim: int = bounded(13824, 1)
    in_channels: int = bounded(36, 1)
    out_channels: int = bounded(16, 1)
    text_dim: int = bounded(4096, 1)
    freq_dim: int = bounded(256, 2)
    image_dim: Optional[int] = 1280
    added_kv_proj_dim: Optional[int] = 5120  # Wan2.1 I2V: separate key/value projections for the CLIP tokens
    pos_embed_seq_len: Optional[int] = None
    rope_max_seq_len: int = bounded(1024, 1)
    max_sequence_length: int = bounded(512, 1)
    text_layers: int = bounded(24, 1)
    text_heads: int = bounded(64, 1)
    text_ff: int = bounded(10240, 1)
    text_vocab: int = bounded(256384, 1)
    clip_layers: int = bounded(32, 1)
    clip_heads: int = bounded(16, 1)
    clip_ff: int = bounded(5120, 1)
    clip_image_size: int = bounded(224, 1)
    clip_patch: int = bounded(14, 1)
    vae_base_dim: int = bounded(96, 1)
    vae_tiling: bool = True  # tiled VAE decode: needed at 480p and above on one GPU
    train_text_encoder: bool = False
    init_seed: int = 0
    offload_encoders: bool = True  # text/image encoders go to the CPU once their embeddings exist
    lora: Optional[LoraConfig] = field(default_factory=LoraConfig)
    native: NativeSizeConfig = field(default_factory=NativeSizeConfig)
    objective: ObjectiveConfig = field(default_factory=lambda: ObjectiveConfig(shift=5.0))


@dataclass
class VPredObjectiveConfig:
    name: str = choice("v_pred")
    timestep_sampling: str = choice("uniform")
    motion_weight: float = bounded(0.0, 0.0)
    guide_weight: float = bounded(0.0, 0.0)


@dataclass
class CogVideoXModelConfig:
    """CogVideoX I2V (AniSora V1) at any size (anisora.backbones.cogvideox.CogVideoXSpec); weights from `ckpt`."""

    _target_: str = "anisora.backbones.cogvideox.build"
    kind: str = choice("cogvideox")
    init: str = choice("pretrained", "random")  # random: no weights needed (benchmarks, from scratch); needs no ckpt
    ckpt: Optional[str] = None  # diffusers-format folder (required unless init=random)
    num_layers: int = bounded(42, 1)
    num_attention_heads: int = bounded(48, 1)
    attention_head_dim: int = bounded(64, 2)
    in_channels: int = bounded(32, 1)
    out_channels: int = bounded(16, 1)
    time_embed_dim: int = bounded(512, 1)
    text_embed_dim: int = bounded(4096, 1)
    patch_size: int = bounded(2, 1)
    patch_size_t: Optional[int] = bounded(None, 1)
    ofs_embed_dim: Optional[int] = bounded(None, 1)
    sample_height: int = bounded(60, 1)
    sample_width: int = bounded(90, 1)
    sample_frames: int = bounded(49, 1)
    max_text_seq_length: int = bounded(226, 1)
    use_rotary_positional_embeddings: bool = True
    use_learned_positional_embeddings: bool = True
    max_sequence_length: int = bounded(226, 1)
    text_layers: int = bounded(24, 1)
    text_heads: int = bounded(64, 1)
    text_kv: int = bounded(64, 1)
    text_ff: int = bounded(10240, 1)
    text_vocab: int = bounded(32128, 0)
    empty_prompt: str = choice("encode", "zeros")
    vae_block_out_channels: list[int] = field(default_factory=lambda: [128, 256, 256, 512])
    vae_layers_per_block: int = bounded(3, 1)
    vae_norm_num_groups: int = bounded(32, 1)
    vae_scaling_factor: float = bounded(0.7, 1e-6)
    vae_tiling: bool = False
    vae_dtype: str = choice("model", "float32")  # model: the DiT's dtype (as diffusers' CogVideoX pipelines)
    latent_sampling: str = choice("sample", "mode")
    snr_shift_scale: float = bounded(1.0, 1e-6)
    init_seed: int = 0
    offload_encoders: bool = True
    lora: Optional[LoraConfig] = field(default_factory=lambda: LoraConfig(targets=list(COGVIDEOX_LORA_TARGETS)))
    native: NativeSizeConfig = field(default_factory=lambda: NativeSizeConfig(num_frames=49, height=480, width=720))
    objective: VPredObjectiveConfig = field(default_factory=VPredObjectiveConfig)


@dataclass
class TinyCogVideoXModelConfig:
    """The tiny CogVideoX-I2V-layout backbone, v-prediction (see anisora.backbones.tiny_cogvideox)."""

    _target_: str = "anisora.backbones.tiny_cogvideox.build"
    kind: str = choice("tiny_cogvideox")
    spatial_factor: int = bounded(1, 1)
    latent_scale: float = bounded(2.0, 1e-6)
    num_layers: int = bounded(4, 1)
    num_attention_heads: int = bounded(4, 1)
    attention_head_dim: int = bounded(32, 16)  # a multiple of 16: the 3D RoPE splits it 2:3:3 over (t, h, w)
    time_embed_dim: int = bounded(128, 2)
    patch_size: int = bounded(2, 1)
    sample_height: int = bounded(16, 1)  # latent grid the rotary embeddings are laid out for (any size runs)
    sample_width: int = bounded(16, 1)
    sample_frames: int = bounded(5, 1)
    text_dim: int = bounded(64, 2)
    text_layers: int = bounded(2, 1)
    text_heads: int = bounded(4, 1)
    text_ff: int = bounded(128, 1)
    max_sequence_length: int = bounded(32, 4)
    empty_prompt: str = choice("zeros", "encode")  # zeros: AniSora V1's unconditional text
    snr_shift_scale: float = bounded(1.0, 1e-6)  # CogVideoX-5B's schedule; > 1 puts more steps at high noise
    init_seed: int = 0
    lora: Optional[LoraConfig] = field(default_factory=lambda: LoraConfig(targets=list(COGVIDEOX_LORA_TARGETS)))
    objective: VPredObjectiveConfig = field(default_factory=VPredObjectiveConfig)


@dataclass
class DataConfig:
    """Training clips. `synthetic` renders the tiny anime world on the fly (anisora.data.synthetic);
    `shards` reads latents precomputed by `anisora-data encode` (anisora.data.shard_stream). The clip size
    and world fields also size the validation clips and tell infer.py/evaluate.py what the model makes."""

    kind: str = choice("synthetic", "shards")
    num_frames: int = 5
    height: int = 16
    width: int = 16
    sprite_size: int = bounded(6, 3)
    slowest_speed: float = bounded(1 / 3, 0.05, 1.0)  # speed at the lowest motion score, as a fraction of the fastest
    seed: int = 0
    batch_size: int = bounded(4, 1)
    num_workers: int = bounded(0, 0)
    val_clips: int = bounded(4, 1)
    urls: Any = None  # shards: path(s) or brace pattern(s), e.g. '/data/shards/{000000..000009}.tar'
    shuffle_buffer: int = bounded(256, 0)  # shards: samples held for the seeded shuffle (0 = file order)
    shuffle_shards: bool = True  # shards: a new seeded shard order every pass over the data
    max_corrupt: int = bounded(16, 0)  # shards: unreadable samples skipped (and logged) per data worker before failing
    encoders_on_device: bool = False  # shards: keep the frozen encoders on the device while training


@dataclass
class GuideConfig:
    """The spatiotemporal guide: which frames (and regions) are given at inference, or how they are
    drawn in training. Every mode becomes the same (guide video G, pixel mask M) pair."""

    mode: str = choice("i2v", "last", "flf2v", "mid", "keyframes", "region", "video", "train_random")
    indices: list[Any] = field(default_factory=lambda: [0])  # frame per guide: int (negative from the end) or "mid"
    frames: list[Any] = field(default_factory=list)  # image paths (one per index) or {image, at} keyframes
    mask: Optional[str] = None  # region mask image for the guided frames: white = keep, black = free to move
    mask_video: Optional[str] = None  # a mask per frame (AniSora any-mask), same colours
    video: Optional[str] = None  # a guide video (in-filling, repair); its frames are kept where the mask says
    mask_threshold: float = bounded(0.5, 0.0, 1.0)
    resize: bool = True  # guide images/masks/videos of another size are resized to the clip; false refuses them
    p_random_main: float = bounded(0.5, 0.0, 1.0)
    p_second: float = bounded(0.5, 0.0, 1.0)
    p_drop_guides: float = bounded(0.05, 0.0, 1.0)
    p_drop_text: float = bounded(0.1, 0.0, 1.0)
    p_region: float = bounded(0.0, 0.0, 1.0)  # training: keep only a random rectangle of the guide frames


@dataclass
class SamplerConfig:
    """One sampler of the sampler core (anisora.diffusion.sampling); the dataclass doubles as its runtime spec."""

    # flow matching: euler, unipc (Wan), flow_sde (stochastic, with log-probabilities), euler_renoise (x0, then fresh
    # noise: few-step students); v-prediction: cogvideox_dpm, cogvideox_ddim
    name: str = choice("euler", "unipc", "flow_sde", "euler_renoise", "cogvideox_dpm", "cogvideox_ddim")
    num_steps: int = bounded(30, 1)
    shift: float = bounded(3.0, 0.01)
    guidance_scale: float = bounded(5.0, 0.0)
    guidance_min_sigma: float = bounded(0.0, 0.0, 1.0)  # CFG only while sigma >= this; 0 = every step (as Wan)
    clamp_x0: Optional[float] = bounded(None, 0.0)  # clamp the implied clean latent each step; None = off
    replace_known: bool = False  # re-impose guided latent entries each step (pixel-exact codecs: the tiny model)
    dynamic_cfg: bool = False  # CogVideoX's cosine CFG schedule (v-prediction samplers only)
    sigmas: Optional[list[float]] = None  # exact noise levels, e.g. [1, 0.9375, 0.8333, 0.625] (4-step students)
    schedule: Optional[str] = None  # a schedule file (`anisora oss-search` writes one): its sigmas, when sigmas is null
    noise_level: float = bounded(0.7, 0.0)  # flow_sde: a in sigma_t = a sqrt(s / (1 - s)) (Flow-GRPO's default)


#: step caches and context-parallel layouts the speed-ups accept (their modules read these)
CACHE_KINDS = ("none", "first_block", "faster", "taylorseer", "taylorseer_lite", "mag")
CONTEXT_PARALLEL_KINDS = ("ulysses", "ring")


@dataclass
class SpeedupConfig:
    """Inference speed-ups (anisora.inference.speedups); options of the `speedup` group compose as a list.
    `SpeedupSpec` is this dataclass with its checks: the defaults here are the only ones."""

    compile: bool = False  # torch.compile of each repeated transformer block (regional compilation)
    compile_backend: str = "inductor"
    compile_mode: Optional[str] = None  # e.g. max-autotune-no-cudagraphs
    cache: str = choice(*CACHE_KINDS)  # diffusers cache hooks (anisora.inference.speedups.caches)
    cache_threshold: float = bounded(0.05, 0.0)  # first_block: relative change of the first residual; mag: error budget
    cache_interval: int = bounded(5, 1)  # taylorseer(_lite): full computation every N steps
    cache_warmup_steps: int = bounded(3, 0)  # taylorseer(_lite): steps computed in full before caching starts
    mag_ratios: Optional[list[float]] = None  # mag: calibrated magnitude ratios of this model and step count
    fp8: bool = False  # float8 dynamic-activation linear layers through torchao (Hopper and newer)
    lowvram: bool = False  # diffusers group offloading: blocks stream from CPU memory with CUDA streams
    lowvram_blocks_per_group: int = bounded(1, 1)
    context_parallel: int = bounded(1, 1)  # torchrun processes splitting one video (diffusers context parallel)
    context_parallel_kind: str = choice(*CONTEXT_PARALLEL_KINDS)  # ulysses (all-to-all over heads) | ring
    best_effort: bool = False  # skip (with a warning) what cannot apply here instead of failing


@dataclass
class StaticConfig:
    """Static or near-static content: share of pixels that change between sampled frames (curation rejects such
    clips; the weight-free scorer flags them)."""

    frames: int = bounded(8, 2)
    pixel_delta: float = bounded(10.0, 0.0, 255.0)  # grey-level change that counts (above coding noise)
    min: Optional[float] = bounded(0.002, 0.0, 1.0)  # static below this changed share; null: no limit


@dataclass
class RewardConfig:
    """A scorer of anisora.rewards by name (the `reward` group): evaluate.py reports its dimensions and
    rl_finetune.py maximises them. `weighted` sums other scorers' dimensions: reward = sum(weight * score)."""

    name: str = choice("ground_truth", "weighted", "weight_free", "vbench", "learned")
    ckpt: Optional[str] = None  # learned: a method=reward_model checkpoint (train.py writes checkpoints/last.ckpt)
    scorers: list[str] = field(default_factory=lambda: ["ground_truth"])  # weighted: the scorers it combines
    weights: dict[str, float] = field(default_factory=dict)  # weighted: dimension -> weight (negative for errors)
    flow_method: str = choice("farneback", "dis")  # weight_free: OpenCV optical flow of dynamic degree
    static: StaticConfig = field(default_factory=StaticConfig)  # weight_free: static-video detection
    dino: Optional[str] = None  # vbench: local DINO ViT-B/16 folder (subject consistency, I2V subject)
    clip: Optional[str] = None  # vbench: local CLIP ViT-B/32 folder and tokenizer (background, I2V background, text)
    clip_large: Optional[str] = None  # vbench: local CLIP ViT-L/14 folder (aesthetic quality, with aesthetic_head)
    aesthetic_head: Optional[str] = None  # vbench: LAION's sa_0_4_vit_l_14_linear.pth (Linear 768 -> 1)
    accelerator: str = choice("auto", "cpu", "gpu", "npu")  # vbench: where the towers run
    batch_frames: int = bounded(32, 1)  # vbench: frames per forward pass


#: AnimeReward's six dimensions (index-anisora-code.md section 4), the reward model's default heads
ANIME_REWARD_DIMENSIONS = ("visual_smooth", "visual_motion", "visual_appeal", "text_video_consistency",
                           "image_video_consistency", "character_consistency")


@dataclass
class RewardModelConfig:
    """method=reward_model (anisora.methods.reward_model): heads per dimension over a vision tower and a text tower
    from local transformers folders, trained on a reward data file (anisora.data.reward_clips) with regression on
    scores and a pairwise loss on preferences. The shared `optimizer` group sets lr, betas and warm-up (VideoReward
    trains the towers at 2e-6); its ema_decay does not apply."""

    _target_: str = "anisora.methods.reward_model.RewardModelMethod"
    vision: Optional[str] = None  # local CLIP, SigLIP, DINOv2 or ViT folder
    text: Optional[str] = None  # local CLIP/SigLIP folder for prompts; null: the vision folder's own text tower
    dimensions: list[str] = field(default_factory=lambda: list(ANIME_REWARD_DIMENSIONS))
    train_data: Optional[str] = None  # reward data jsonl (clips with scores, pairs)
    val_data: Optional[str] = None  # held-out jsonl; null: val_fraction of train_data's groups
    val_fraction: float = bounded(0.2, 0.0, 0.9)
    num_frames: int = bounded(8, 2)  # frames sampled evenly per clip (AnimeReward: 24 of the first 144)
    hidden: int = bounded(256, 1)
    pixel_motion: bool = True  # a motion stream: mean absolute pixel change per pair of sampled frames
    train_vision: bool = True  # VideoReward trains its vision tower fully
    train_text: bool = True
    pair_loss: str = choice("btt", "bt", "none")  # btt: Bradley-Terry with ties (VideoReward's default)
    tie_k: float = bounded(5.0, 1.0001)
    tie_margin: float = bounded(0.0, 0.0)  # pairs from scores: a tie when the scores differ by at most this
    regression_weight: float = bounded(1.0, 0.0)
    pair_weight: float = bounded(1.0, 0.0)
    batch_groups: int = bounded(4, 1)  # groups (clips of one prompt and guide) per batch
    num_workers: int = bounded(0, 0)


@dataclass
class OptimizerConfig:
    lr: float = bounded(1e-3, 0.0)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = bounded(0.01, 0.0)
    eps: float = bounded(1e-8, 0.0)
    warmup_steps: int = bounded(100, 0)
    ema_decay: float = bounded(0.995, 0.0, 1.0)  # 0 disables EMA; samples and exports use the EMA weights


@dataclass
class TrainerConfig:
    max_steps: int = bounded(4000, 1)
    val_every_n_steps: int = bounded(1000, 1)
    log_every_n_steps: int = bounded(25, 1)
    gradient_clip_val: float = bounded(1.0, 0.0)
    accumulate_grad_batches: int = bounded(1, 1)
    deterministic: bool = False
    activation_checkpointing: str = choice("none", "full", "selective", "ops")  # recompute in backward (see conf)
    checkpoint_fraction: float = bounded(0.5, 0.0, 1.0)  # selective: share of blocks recomputed (0.5 = every other)
    sequence_parallel: int = bounded(1, 1)  # ranks that split each sample's sequence (Ulysses); needs strategy=ddp
    frozen_dtype: str = choice("auto", "float32", "bfloat16")  # LoRA base and frozen encoders (auto: bf16 if mixed)


@dataclass
class CallbacksConfig:
    """Lightning callbacks: every `_target_` config under `instances` is built (null switches one off); the flat
    keys are the settings people change most, which the default instances read."""

    checkpoint_every_n_steps: int = bounded(250, 1)
    progress_bar: str = choice("tqdm", "rich", "none")
    lr_monitor: bool = True
    sample_videos: bool = True
    instances: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoggerConfig:
    """The experiment logger: `instance` is its `_target_` config (built with this run's folder as save_dir)."""

    kind: str = choice("wandb", "csv", "none")
    project: str = "anisora"
    entity: Optional[str] = None
    offline: bool = True
    log_videos: bool = True
    instance: Optional[Any] = None


@dataclass
class SizeConfig:
    """Clip size for a pretrained model folder; None takes the model's native size."""

    num_frames: Optional[int] = bounded(None, 1)
    height: Optional[int] = bounded(None, 1)
    width: Optional[int] = bounded(None, 1)


@dataclass
class OutputConfig:
    frames: str = choice("none", "png")
    fps: int = bounded(8, 1)
    contact_sheet: bool = True


@dataclass
class TrainTaskConfig:
    task_name: str = "train"
    seed: int = 0
    ckpt_path: Optional[str] = None  # "last" resumes the newest last.ckpt under paths.log_dir/train
    method: Any = MISSING  # the LightningModule by `_target_` and its own options (conf/method/)
    model: Any = MISSING
    data: DataConfig = MISSING
    guide: GuideConfig = MISSING
    sampler: SamplerConfig = MISSING
    accelerator: AcceleratorConfig = MISSING
    strategy: StrategyConfig = MISSING
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = MISSING
    callbacks: CallbacksConfig = MISSING
    logger: LoggerConfig = MISSING
    paths: PathsConfig = MISSING
    tags: list[str] = field(default_factory=list)
    optimized_metric: str = "train/loss"  # what train.py returns to a sweeper (hparams_search=...)


@dataclass
class InferTaskConfig:
    task_name: str = "infer"
    seed: int = 0
    ckpt: str = "latest"  # a Lightning .ckpt, "latest" = the newest one train.py wrote, or a diffusers folder
    prompt: Optional[str] = None  # overrides the benchmark captions
    negative_prompt: str = ""
    motion_score: Optional[float] = bounded(None, 0.0)  # sets the caption's "motion score: M." (AniSora: 1-3)
    aesthetic_score: Optional[float] = bounded(None, 0.0)  # sets its "aesthetic score: A."
    num_clips: int = bounded(4, 1)  # benchmark clips to guide from when no guide.frames are given
    size: SizeConfig = field(default_factory=SizeConfig)  # for diffusers folders (ckpt=DIR)
    model: Any = MISSING
    guide: GuideConfig = MISSING
    sampler: SamplerConfig = MISSING
    accelerator: AcceleratorConfig = MISSING
    speedup: SpeedupConfig = field(default_factory=SpeedupConfig)
    out: OutputConfig = field(default_factory=OutputConfig)
    optimizer: Optional[Any] = None  # a model preset's training recipe (train.py reads it; ignored here)
    paths: PathsConfig = MISSING


@dataclass
class EncodeTaskConfig:
    """anisora-data encode: kept manifest clips -> webdataset shards of latents and conditioning."""

    task_name: str = "encode"
    seed: int = 0  # seeds stochastic encoders (per clip, with the clip id)
    manifest: Optional[str] = None  # manifest.jsonl written by anisora-data curate
    out: Optional[str] = None  # folder for the shards, null_text.pth, guide_none.pth and dataset.json
    num_frames: int = bounded(81, 1)  # the model's clip: frames, frame rate and size (resize + centre crop)
    fps: Optional[float] = bounded(None, 0.001)  # None keeps the source's consecutive frames
    height: int = bounded(480, 1)
    width: int = bounded(832, 1)
    guides: list[str] = field(default_factory=lambda: ["i2v", "flf2v"])  # precomputed guide modes (+ no guide)
    dtype: str = choice("auto", "float32", "bfloat16", "float16")  # stored tensors; auto: bf16 on GPU, fp32 on CPU
    shard_max_samples: int = bounded(1000, 1)
    shard_max_bytes: int = bounded(2**30, 1)
    rank: Optional[int] = bounded(None, 0)  # None: $RANK, else 0; shard k is encoded by rank k % world_size
    world_size: Optional[int] = bounded(None, 1)  # None: $WORLD_SIZE, else 1
    progress: bool = True
    sampler: Any = None  # model configs pick their sampler; encoding does not sample
    model: Any = MISSING
    accelerator: AcceleratorConfig = MISSING
    optimizer: Optional[Any] = None  # a model preset's training recipe (train.py reads it; ignored here)
    paths: PathsConfig = MISSING


@dataclass
class EvaluateTaskConfig:
    task_name: str = "evaluate"
    seed: int = 0
    ckpt: str = "latest"
    videos: Optional[str] = None  # score a folder of mp4 files instead of generating
    compare: Optional[list[str]] = None  # evaluation folders (or metrics.json files) to set side by side
    benchmark: Optional[str] = None  # a benchmark jsonl (video, prompt, label, guide frames, mask) to score
    metrics: list[str] = field(default_factory=lambda: ["ground_truth", "weight_free"])  # scorers of the reward group
    reward: Optional[Any] = None  # reward=NAME: one more scorer, with its settings (also read by `metrics`)
    num_clips: int = bounded(32, 1)
    motion_score: Optional[float] = bounded(None, 0.0)  # replaces the benchmark captions' motion score
    aesthetic_score: Optional[float] = bounded(None, 0.0)
    batch_size: int = bounded(16, 1)
    model: Any = MISSING
    guide: GuideConfig = MISSING
    sampler: SamplerConfig = MISSING
    accelerator: AcceleratorConfig = MISSING
    speedup: SpeedupConfig = field(default_factory=SpeedupConfig)
    logger: LoggerConfig = MISSING
    optimizer: Optional[Any] = None  # a model preset's training recipe (train.py reads it; ignored here)
    paths: PathsConfig = MISSING
    tags: list[str] = field(default_factory=list)


@dataclass
class RLConfig:
    """Preference and reward fine-tuning (anisora.methods.preference; the `rl` group): each round samples K
    rollouts per prompt and guide with the policy, scores them, turns the scores into pairs or advantages and
    updates the policy. The dataclasses double as the methods' runtime settings."""

    _target_: str = "anisora.methods.preference.pairwise.PairwiseMethod"
    rounds: int = bounded(40, 1)
    prompts_per_round: int = bounded(16, 1)  # training-world prompts with their first frame as the guide
    rollouts_per_prompt: int = bounded(4, 2)  # K: a group (GRPO) or the candidates of one pair (DPO, GAPO)
    updates_per_round: int = bounded(4, 1)  # optimizer steps on one round's samples
    rollout_steps: int = bounded(10, 1)  # sampling steps of rollouts and held-out samples
    guidance_scale: Optional[float] = bounded(None, 0.0)  # None: the checkpoint's sampler's
    optimise: str = "reward"  # the scorer dimension maximised (reward=weighted names it `reward`)
    eval_every: int = bounded(10, 1)  # rounds between held-out evaluations (also before the first and at the end)
    eval_prompts: int = bounded(16, 1)  # held-out benchmark prompts, one sample each, the model alone (no replacement)
    guard: dict[str, float] = field(default_factory=lambda: {"guide_psnr": 5.0, "temporal_flickering": 0.01})
    checkpoint_every: int = bounded(5, 1)  # rounds between checkpoints (kill and resume continue from the last)


@dataclass
class PairwiseRLConfig(RLConfig):
    """DPO and GAPO: the best and worst rollout of each group (or a pairs file's pair) at the same noise and level."""

    beta: Optional[float] = bounded(None, 0.0)  # None: 100 for flow matching (Flow-DPO), 5000 for v-prediction
    weighting: str = choice("gap", "none")  # gap: GAPO's base^(s_w/R) - base^(s_l/R) per pair; none: DPO
    gap_base: float = bounded(2.0, 1.0)
    score_range: float = bounded(1.0, 1e-9)  # R: the score that counts as full marks (AniSora: 100)
    min_gap: float = bounded(0.0, 0.0)  # groups whose best and worst differ by less give no pair
    # losses on the guided prediction uncond + g (cond - uncond) at the rollouts' guidance scale, what rollouts and
    # inference sample with CFG; false: the conditional prediction alone (Flow-DPO, Diffusion-DPO)
    guided_loss: bool = False


@dataclass
class RWRConfig(RLConfig):
    """Reward-weighted regression: the denoising loss of every rollout weighted by exp(advantage / temperature)."""

    _target_: str = "anisora.methods.preference.rwr.RWRMethod"
    temperature: float = bounded(0.5, 1e-6)


@dataclass
class GRPOConfig(RLConfig):
    """Flow-GRPO: flow_sde rollouts, group-normalised advantages, PPO-clipped ratios of per-step log-probabilities,
    KL of each step to the reference's (next-batch.md section 2.2)."""

    _target_: str = "anisora.methods.preference.grpo.GRPOMethod"
    noise_level: float = bounded(0.7, 0.0)  # a in sigma_t = a sqrt(s / (1 - s))
    clip_range: float = bounded(1e-3, 0.0)
    kl_weight: float = bounded(0.004, 0.0)
    advantage_clip: float = bounded(5.0, 0.0)
    train_steps: Optional[int] = bounded(None, 1)  # SDE steps trained per round (a seeded draw); None: all


@dataclass
class RLFinetuneTaskConfig:
    """rl_finetune.py: the model, data world, guide policy and sampler come from the starting checkpoint."""

    task_name: str = "rl_finetune"
    seed: int = 0
    ckpt: str = "latest"  # the starting checkpoint: "latest" = the newest last.ckpt train.py wrote, or a path
    ckpt_path: Optional[str] = None  # resume an rl_finetune run: "last" = its newest last.ckpt, or a path
    pairs: Optional[str] = None  # offline mode: a pairs file (JSON lines: video_path "w.mp4,l.mp4", caption, scores)
    lora_rank: int = bounded(32, 0)  # the policy's LoRA (0: full fine-tuning, the reference a frozen copy)
    lora_alpha: float = bounded(64.0, 0.0)
    rl: Any = MISSING
    reward: Optional[Any] = None  # the `reward` group's scorer (required; `~reward` leaves none)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    accelerator: AcceleratorConfig = MISSING
    strategy: StrategyConfig = MISSING
    trainer: TrainerConfig = MISSING
    callbacks: CallbacksConfig = MISSING
    logger: LoggerConfig = MISSING
    paths: PathsConfig = MISSING
    tags: list[str] = field(default_factory=list)
