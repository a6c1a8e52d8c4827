"""Preference and reward fine-tuning of a trained model (rl_finetune.py): DPO and GAPO (pairwise.py), reward-weighted
regression (rwr.py) and Flow-GRPO (grpo.py) over the rounds, rollouts and guard rails of rounds.py; the losses
are plain tensor functions in losses.py."""
