"""Fixture generator: the pinned PEFT (0.21.2) produces everything the Rust LoRA parity tests compare.

Usage: python gen_lora.py OUT_DIR

Sections (each listed in OUT_DIR/manifest.json):
  cases/<name>/     PEFT creates adapters (non-trivial weights), saves them, and records the outputs of the
                    model unmerged, merged, after unmerge, disabled and merge_and_unload  -> Rust loads & compares
  init/<name>/      base model + adapter created under torch.manual_seed(0)              -> same seed in Rust
  train/<name>/     a few optimizer steps from a saved initial adapter                     -> Rust repeats them
  configs/<name>/   adapter_config.json files written by PEFT                               -> parse/write parity
  matching.json     check_target_module_exists / get_pattern_key verdicts                 -> TargetMatcher parity

Add a row to a table below to extend the matrix; the Rust tests iterate over the manifest.
The Rust harness caches OUT_DIR keyed by a hash of this directory's files.
"""

import copy
import dataclasses
import json
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import _ExcludedModule, check_target_module_exists
from peft.utils.other import get_pattern_key

import models

# Output parity cases: PEFT saves -> Rust loads. `adapters` maps adapter name -> LoraConfig kwargs
# (init_lora_weights defaults to False so that the adapters change the output). `perturb` simulates
# trained biases ("all": every bias; "adapted": biases of adapted layers).
CASES = [
    dict(name="mlp_lin0_regex", model="MLP", adapters={"default": dict(target_modules="lin0")}),
    dict(name="mlp_lin0_list", model="MLP", adapters={"default": dict(target_modules=["lin0"])}),
    dict(name="mlp_lin1", model="MLP", adapters={"default": dict(target_modules=["lin1"])}),
    dict(name="mlp_both", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"], r=4)}),
    dict(
        name="mlp_alpha_dropout",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0"], lora_alpha=4, lora_dropout=0.1)},
    ),
    dict(
        name="mlp_rslora",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=4, lora_alpha=16, use_rslora=True)},
    ),
    dict(
        name="mlp_rank_alpha_pattern",
        model="MLP",
        adapters={
            "default": dict(
                target_modules=["lin0", "lin1"], r=8, rank_pattern={"lin1": 2}, alpha_pattern={"lin0": 32}
            )
        },
    ),
    dict(
        name="mlp_lora_bias",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], lora_alpha=32, lora_bias=True)},
    ),
    dict(name="mlp_bias_all", model="MLP", perturb="all", adapters={"default": dict(target_modules=["lin0"], bias="all")}),
    dict(
        name="mlp_bias_lora_only",
        model="MLP",
        perturb="adapted",
        adapters={"default": dict(target_modules=["lin0"], bias="lora_only")},
    ),
    dict(
        name="mlp_exclude",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], exclude_modules=["lin1"])},
    ),
    dict(name="mlp_all_linear", model="MLP", adapters={"default": dict(target_modules="all-linear", r=2)}),
    dict(
        name="mlp_modules_to_save",
        model="MLP",
        perturb="modules_to_save",
        adapters={"default": dict(target_modules=["lin0"], modules_to_save=["lin1"])},
    ),
    dict(
        name="deep_layers_list",
        model="DeepMLP",
        adapters={
            "default": dict(target_modules=["lin0"], layers_to_transform=[0, 2], layers_pattern="layers")
        },
    ),
    dict(
        name="deep_layers_int",
        model="DeepMLP",
        adapters={
            "default": dict(target_modules=["lin1", "out"], layers_to_transform=1, layers_pattern=["layers"])
        },
    ),
    dict(
        name="conv1d_fan_in_fan_out",
        model="MLPConv1D",
        adapters={"default": dict(target_modules=["c_fc", "c_proj"], fan_in_fan_out=True, r=4)},
    ),
    dict(
        name="multi_adapter_one_active",
        model="MLP",
        adapters={
            "default": dict(target_modules=["lin0"], r=8),
            "other": dict(target_modules=["lin0", "lin1"], r=4, lora_alpha=16),
        },
        active=["other"],
    ),
    dict(
        name="multi_adapter_both_active",
        model="MLP",
        adapters={
            "default": dict(target_modules=["lin0"], r=8),
            "other": dict(target_modules=["lin0", "lin1"], r=4, lora_alpha=16),
        },
        active=["default", "other"],
    ),
]

CASES += [
    dict(name="emb_only", model="EmbMLP", adapters={"default": dict(target_modules=["emb"])}),
    dict(
        name="emb_and_linear_rslora",
        model="EmbMLP",
        adapters={"default": dict(target_modules=["emb", "lin0"], r=4, lora_alpha=16, use_rslora=True)},
    ),
    dict(
        name="emb_modules_to_save",
        model="EmbMLP",
        perturb="modules_to_save",
        adapters={"default": dict(target_modules=["lin0"], modules_to_save=["emb"])},
    ),
    dict(
        name="conv_all_kinds",
        model="ConvNet",
        adapters={"default": dict(target_modules=["conv2d", "conv1x1", "conv3d", "conv1d", "lin"], r=4)},
    ),
    dict(
        name="conv_lora_bias_dropout",
        model="ConvNet",
        adapters={"default": dict(target_modules=["conv2d", "conv3d", "conv1d"], lora_bias=True, lora_dropout=0.2)},
    ),
    dict(
        name="conv_bias_lora_only",
        model="ConvNet",
        perturb="adapted",
        adapters={"default": dict(target_modules=["conv2d", "conv1d"], bias="lora_only", r=2)},
    ),
    # PEFT cannot merge grouped convolutions: only the unmerged states are compared.
    dict(name="conv_grouped", model="ConvNet", merge=False, adapters={"default": dict(target_modules=["grouped"], r=4)}),
    dict(
        name="dora_linear",
        model="MLP",
        perturb="dora",
        adapters={"default": dict(target_modules=["lin0", "lin1"], use_dora=True, lora_alpha=16)},
    ),
    dict(
        name="dora_conv1d_fan_in_fan_out",
        model="MLPConv1D",
        perturb="dora",
        adapters={"default": dict(target_modules=["c_fc", "c_proj"], use_dora=True, r=4)},
    ),
    dict(
        name="dora_embedding",
        model="EmbMLP",
        perturb="dora",
        adapters={"default": dict(target_modules=["emb", "lin0"], use_dora=True, r=4)},
    ),
    dict(
        name="dora_conv",
        model="ConvNet",
        perturb="dora",
        adapters={"default": dict(target_modules=["conv2d", "conv1x1", "conv3d", "conv1d"], use_dora=True, r=4)},
    ),
    # Two DoRA adapters merged in turn: the second one's norm must come from the unmerged weight.
    dict(
        name="dora_two_adapters_merged",
        model="MLP",
        perturb="dora",
        adapters={
            "default": dict(target_modules=["lin0"], use_dora=True, r=8),
            "other": dict(target_modules=["lin0", "lin1"], use_dora=True, r=4, lora_alpha=16),
        },
        active=["default", "other"],
    ),
    dict(
        name="dora_and_lora_mixed",
        model="MLP",
        perturb="dora",
        adapters={
            "default": dict(target_modules=["lin0"], r=8),
            "other": dict(target_modules=["lin0", "lin1"], use_dora=True, r=4),
        },
        active=["default", "other"],
    ),
]

CASES += [
    dict(
        name="trainable_tokens",
        model="EmbMLP",
        perturb="tokens",
        adapters={"default": dict(target_modules=["lin0"], trainable_token_indices={"emb": [0, 3, 7, 29]})},
    ),
    dict(
        name="trainable_tokens_two_adapters",
        model="EmbMLP",
        perturb="tokens",
        adapters={
            "default": dict(target_modules=["lin0"], trainable_token_indices={"emb": [1, 2]}),
            "other": dict(target_modules=["lin1"], r=2, trainable_token_indices={"emb": [5]}),
        },
        active=["other"],
    ),
]

CASES += [
    # KaSA: the base loses its r smallest singular components; ΔW = s·B·diag(ΔΣ)·A.
    dict(
        name="kasa",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=4, rank_pattern={"lin1": 1}, kasa_config={"beta": 0.01, "gamma": 0.1})},
    ),
]

CASES += [
    # BD-LoRA: lora_A block-diagonal on every lin0, lora_B on layers.1.lin1; the other lin1s and `out` match
    # neither list (plain LoRA, match_strict off).
    dict(
        name="bdlora",
        model="DeepMLP",
        adapters={
            "default": dict(
                target_modules=["lin0", "lin1", "out"],
                r=4,
                use_bdlora={"target_modules_bd_a": ["lin0"], "target_modules_bd_b": ["1.lin1"], "nblocks": 2, "match_strict": False},
            )
        },
    ),
]

CASES += [
    # VeLoRA: plain LoRA at inference; the projection buffer is saved with the adapter.
    dict(
        name="velora",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=4, velora_config={"num_groups": 3, "init_type": "random"})},
    ),
]

CASES += [
    # MonteCLoRA: plain LoRA at inference; one training forward first fills the sampler's buffers, and
    # the variational parameters are perturbed, so that the saved sampler state is non-trivial.
    dict(
        name="monteclora",
        model="MLP",
        perturb="monteclora",
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=4, monteclora_config={"num_samples": 3, "buffer_size": 2, "use_entropy": True})},
    ),
]

# Same-seed initialisation cases: torch.manual_seed(0); build the model; get_peft_model.
INIT_CASES = [
    dict(name="mlp_default_init", model="MLP", config=dict(target_modules=["lin0", "lin1"])),
    dict(name="mlp_init_false", model="MLP", config=dict(target_modules=["lin0", "lin1"], init_lora_weights=False)),
    dict(name="mlp_init_gaussian", model="MLP", config=dict(target_modules=["lin0"], r=4, init_lora_weights="gaussian")),
    dict(
        name="mlp_lora_bias_false",
        model="MLP",
        config=dict(target_modules=["lin0", "lin1"], lora_bias=True, init_lora_weights=False),
    ),
    dict(
        name="mlp_rank_pattern",
        model="MLP",
        config=dict(target_modules=["lin0", "lin1"], rank_pattern={"lin1": 2}, init_lora_weights=False),
    ),
    dict(name="mlp_all_linear", model="MLP", config=dict(target_modules="all-linear", init_lora_weights=False)),
    dict(
        name="deep_layers",
        model="DeepMLP",
        config=dict(
            target_modules=["lin0", "lin1"], layers_to_transform=[1, 3], layers_pattern="layers", init_lora_weights=False
        ),
    ),
    dict(
        name="conv1d",
        model="MLPConv1D",
        config=dict(target_modules=["c_fc", "c_proj"], fan_in_fan_out=True, init_lora_weights=False),
    ),
    dict(
        name="conv1d_fan_in_fan_out_corrected",
        model="MLPConv1D",
        config=dict(target_modules=["c_fc"], init_lora_weights=False),
    ),
]

INIT_CASES += [
    dict(name="emb_default_init", model="EmbMLP", config=dict(target_modules=["emb", "lin0"])),
    dict(name="emb_init_false", model="EmbMLP", config=dict(target_modules=["emb"], r=4, init_lora_weights=False)),
    dict(name="emb_init_gaussian", model="EmbMLP", config=dict(target_modules=["emb"], init_lora_weights="gaussian")),
    dict(name="conv_default_init", model="ConvNet", config=dict(target_modules=["conv2d", "conv1x1", "conv3d", "conv1d"])),
    dict(
        name="conv_init_false_lora_bias",
        model="ConvNet",
        config=dict(target_modules=["conv2d", "conv3d", "conv1d", "grouped"], r=4, lora_bias=True, init_lora_weights=False),
    ),
    dict(name="conv_init_gaussian", model="ConvNet", config=dict(target_modules=["conv2d", "conv1d"], init_lora_weights="gaussian")),
    dict(name="dora_linear_init", model="MLP", config=dict(target_modules=["lin0", "lin1"], use_dora=True)),
    dict(
        name="dora_all_kinds_init_false",
        model="EmbMLP",
        config=dict(target_modules=["emb", "lin0", "lin1"], use_dora=True, r=4, init_lora_weights=False),
    ),
    dict(
        name="dora_conv_init_false",
        model="ConvNet",
        config=dict(target_modules=["conv2d", "conv1x1", "conv3d", "conv1d"], use_dora=True, init_lora_weights=False),
    ),
    dict(
        name="dora_conv1d_init_false",
        model="MLPConv1D",
        config=dict(target_modules=["c_fc"], use_dora=True, init_lora_weights=False),
    ),
]

INIT_CASES += [
    dict(
        name="bdlora_init",
        model="MLP",
        config=dict(target_modules=["lin0", "lin1"], r=4, use_bdlora={"target_modules_bd_a": ["lin0"], "target_modules_bd_b": ["lin1"], "nblocks": 2}),
    ),
    dict(name="velora_random_init", model="MLP", config=dict(target_modules=["lin0", "lin1"], velora_config={"num_groups": 3, "init_type": "random"})),
    dict(
        name="monteclora_init",
        model="MLP",
        config=dict(target_modules=["lin0", "lin1"], r=3, monteclora_config={"num_samples": 4, "buffer_size": 5}),
    ),
    dict(name="kasa_default_init", model="DeepMLP", config=dict(target_modules=["lin0", "out"], r=1, kasa_config={})),
]

# Init schemes that read (and some rewrite) the base weights; the Rust test also compares the base after.
INIT_CASES += [
    dict(name="pissa", model="MLP", config=dict(target_modules=["lin0", "lin1"], r=4, init_lora_weights="pissa")),
    dict(
        name="pissa_niter_fan_in_fan_out",
        model="MLPConv1D",
        config=dict(target_modules=["c_fc", "c_proj"], r=2, lora_alpha=16, init_lora_weights="pissa_niter_3"),
    ),
    dict(name="pissa_embedding_default", model="EmbMLP", config=dict(target_modules=["emb", "lin0"], init_lora_weights="pissa")),
    dict(name="olora", model="DeepMLP", config=dict(target_modules=["lin0", "out"], r=4, init_lora_weights="olora")),
    dict(name="orthogonal", model="MLP", config=dict(target_modules=["lin0", "lin1"], r=2, init_lora_weights="orthogonal")),
    dict(name="mica", model="EmbMLP", config=dict(target_modules=["emb", "lin0", "lin1"], r=2, init_lora_weights="mica")),
    dict(name="mica_fan_in_fan_out", model="MLPConv1D", config=dict(target_modules=["c_fc"], r=3, init_lora_weights="mica")),
    dict(name="eva_without_data", model="MLP", config=dict(target_modules=["lin0"], init_lora_weights="eva")),
    dict(name="lora_ga_without_gradients", model="ConvNet", config=dict(target_modules=["conv2d", "lin"], init_lora_weights="lora_ga")),
]

# PiSSA/OLoRA adapters converted to plain LoRA for the original base on save.
CONVERSION_CASES = [
    dict(name="pissa", model="MLP", config=dict(target_modules=["lin0", "lin1"], r=2, init_lora_weights="pissa")),
    dict(
        name="pissa_niter_fan_in_fan_out",
        model="MLPConv1D",
        config=dict(target_modules=["c_fc", "c_proj"], r=2, lora_alpha=16, init_lora_weights="pissa_niter_2"),
    ),
    dict(name="olora_rslora", model="MLP", config=dict(target_modules=["lin0"], r=4, use_rslora=True, init_lora_weights="olora")),
    dict(
        name="pissa_patterns",
        model="DeepMLP",
        config=dict(
            target_modules=["lin0", "lin1"],
            r=4,
            lora_alpha=8,
            rank_pattern={"layers.0.lin0": 2},
            alpha_pattern={"lin1": 8.5},
            init_lora_weights="pissa",
        ),
    ),
]

# add_weighted_adapter: every combination type on several layer kinds. Each combo runs under
# torch.manual_seed(100 + index) (DARE draws random masks).
_PAIR = ["a", "b"]
WEIGHTED_CASES = [
    dict(
        name="mlp",
        model="MLP",
        adapters={
            # r <= 2: lin1 has 2 outputs (PEFT's SVD types break above a layer's smaller dimension).
            "a": dict(target_modules=["lin0", "lin1"], r=2, lora_alpha=8),
            "b": dict(target_modules=["lin0"], r=2, lora_alpha=16),
        },
        combos=[
            dict(adapters=_PAIR, weights=[0.7, 0.5], combination_type="svd"),
            dict(adapters=_PAIR, weights=[1.0, -0.4], combination_type="linear"),
            dict(adapters=_PAIR, weights=[0.6, 0.8], combination_type="cat"),
            dict(adapters=_PAIR, weights=[1.0, 1.0], combination_type="ties", density=0.5),
            dict(adapters=_PAIR, weights=[0.9, 0.3], combination_type="ties_svd", density=0.6, majority_sign_method="frequency"),
            dict(adapters=_PAIR, weights=[1.0, 0.5], combination_type="dare_linear", density=0.5),
            dict(adapters=_PAIR, weights=[0.5, 1.5], combination_type="dare_ties", density=0.7),
            dict(adapters=_PAIR, weights=[1.0, 1.0], combination_type="dare_linear_svd", density=0.5, svd_rank=1),
            dict(adapters=_PAIR, weights=[1.2, -0.7], combination_type="dare_ties_svd", density=0.4),
            dict(adapters=_PAIR, weights=[1.0, 0.25], combination_type="magnitude_prune", density=0.5),
            dict(adapters=_PAIR, weights=[0.8, 0.8], combination_type="magnitude_prune_svd", density=0.3, svd_clamp=0.95),
            dict(adapters=["a"], weights=[2.0], combination_type="svd"),
        ],
    ),
    dict(
        name="different_ranks",
        model="DeepMLP",
        adapters={
            "a": dict(target_modules=["lin0", "lin1"], r=4, rank_pattern={"layers.0.lin0": 6}),
            "b": dict(target_modules=["lin0"], r=2, lora_alpha=4),
        },
        combos=[
            dict(adapters=_PAIR, weights=[0.5, 0.5], combination_type="cat"),
            dict(adapters=_PAIR, weights=[1.0, 2.0], combination_type="svd", svd_rank=5),
            dict(adapters=_PAIR, weights=[1.0, 2.0], combination_type="svd", svd_full_matrices=False),
        ],
    ),
    dict(
        name="fan_in_fan_out",
        model="MLPConv1D",
        adapters={
            "a": dict(target_modules=["c_fc", "c_proj"], r=2),
            "b": dict(target_modules=["c_fc", "c_proj"], r=2, lora_alpha=6),
        },
        combos=[
            dict(adapters=_PAIR, weights=[0.5, 1.0], combination_type="svd"),
            dict(adapters=_PAIR, weights=[0.5, 1.0], combination_type="linear"),
            dict(adapters=_PAIR, weights=[0.5, 1.0], combination_type="cat"),
        ],
    ),
    dict(
        name="embedding",
        model="EmbMLP",
        adapters={
            "a": dict(target_modules=["emb", "lin0"], r=4),
            "b": dict(target_modules=["emb"], r=4, lora_alpha=2),
        },
        combos=[
            dict(adapters=_PAIR, weights=[1.0, 0.5], combination_type="svd"),
            dict(adapters=_PAIR, weights=[1.0, 0.5], combination_type="ties", density=0.8),
            dict(adapters=_PAIR, weights=[1.0, 0.5], combination_type="cat"),
        ],
    ),
    dict(
        name="conv2d",
        model="ConvNet",
        adapters={
            "a": dict(target_modules=["conv2d", "conv1x1"], r=4),
            "b": dict(target_modules=["conv2d"], r=4, lora_alpha=4),
        },
        combos=[
            dict(adapters=_PAIR, weights=[1.0, 0.5], combination_type="svd"),
            dict(adapters=_PAIR, weights=[1.0, 0.5], combination_type="dare_linear", density=0.6),
            dict(adapters=_PAIR, weights=[1.0, 0.5], combination_type="cat"),
        ],
    ),
]

# Hotswapping: adapters swapped in turn into the first one, after padding to rank 8.
HOTSWAP_ADAPTERS = {
    "h0": dict(target_modules=["lin0", "lin1"], r=4, lora_alpha=8),
    "h1": dict(target_modules=["lin0", "lin1"], r=4, lora_alpha=16),
    "h2": dict(target_modules=["lin0"], r=2, lora_alpha=4),
    "h3": dict(target_modules=["lin0", "lin1"], r=8, lora_alpha=8, use_rslora=False),
}

# Mixed batches: one adapter per row (`adapter_names`), "__base__" for none.
MIXED_CASES = [
    dict(
        name="linear",
        model="MLP",
        adapters={
            "a": dict(target_modules=["lin0", "lin1"], r=4),
            "b": dict(target_modules=["lin0"], r=2, lora_alpha=16, lora_bias=True),
            "c": dict(target_modules=["lin1"], r=8, use_rslora=True),
        },
        rows=["a", "__base__", "b", "c", "a", "b", "__base__", "c", "c"],
    ),
    dict(
        name="fan_in_fan_out",
        model="MLPConv1D",
        adapters={"a": dict(target_modules=["c_fc", "c_proj"], r=2), "b": dict(target_modules=["c_fc"], r=4)},
        rows=["b", "a", "a", "__base__", "b", "b", "a", "__base__", "a"],
    ),
    dict(
        name="embedding",
        model="EmbMLP",
        adapters={"a": dict(target_modules=["emb", "lin0"], r=4), "b": dict(target_modules=["emb"], r=2, lora_alpha=3)},
        rows=["a", "b", "__base__", "a", "b", "a", "a", "__base__", "b"],
    ),
    dict(
        name="conv",
        model="ConvNet",
        adapters={
            "a": dict(target_modules=["conv2d", "conv1x1", "grouped", "conv3d", "conv1d"], r=4),
            "b": dict(target_modules=["conv2d", "grouped", "conv1d"], r=2, lora_bias=True),
        },
        rows=["__base__", "a", "b", "b", "a", "__base__", "a", "b", "a"],
    ),
    dict(
        name="modules_to_save",
        model="MLP",
        perturb="modules_to_save",
        adapters={
            # PEFT 0.21.2 fails (KeyError) when a row's adapter has no copy of a modules_to_save module,
            # so both adapters have one here.
            "a": dict(target_modules=["lin0"], modules_to_save=["lin1"]),
            "b": dict(target_modules=["lin0"], r=4, modules_to_save=["lin1"]),
        },
        rows=["a", "b", "__base__", "a", "b", "a", "b", "a", "__base__"],
    ),
]

# Training cases: the same optimizer steps in PEFT and in Rust.
TRAIN_CONFIG = dict(target_modules=["lin0", "lin1"], r=4, lora_alpha=8, lora_dropout=0.1)
TRAIN_CASES = [
    dict(name="sgd", optimizer="sgd", lr=0.1, steps=5),
    dict(name="adamw", optimizer="adamw", lr=0.01, steps=5),
    # DoRA with dropout takes its own branch (the base output is recomputed from the dropped input).
    dict(name="dora_adamw", optimizer="adamw", lr=0.01, steps=5, config=dict(TRAIN_CONFIG, use_dora=True)),
    dict(
        name="conv_sgd",
        optimizer="sgd",
        lr=0.5,
        steps=5,
        model="ConvNet",
        config=dict(target_modules=["conv2d", "conv3d", "conv1d", "lin"], r=4, lora_dropout=0.1, use_dora=True),
    ),
    dict(
        name="emb_adamw",
        optimizer="adamw",
        lr=0.01,
        steps=4,
        model="EmbMLP",
        config=dict(target_modules=["emb", "lin0"], r=4, use_dora=True, lora_dropout=0.1),
    ),
]
TRAIN_CASES += [
    dict(
        name="bdlora_adamw",
        optimizer="adamw",
        lr=0.01,
        steps=4,
        config=dict(
            target_modules=["lin0", "lin1"],
            r=4,
            lora_dropout=0.1,
            use_bdlora={"target_modules_bd_a": ["lin0"], "target_modules_bd_b": ["lin1"], "nblocks": 2},
        ),
    ),
]
TRAIN_CASES += [
    # VeLoRA: lora_A's gradient comes from the compressed activations (zero-padded groups on lin0).
    dict(name="velora_adamw", optimizer="adamw", lr=0.01, steps=4, config=dict(TRAIN_CONFIG, velora_config={"num_groups": 3, "scale": 0.5})),
    dict(
        name="velora_once_sgd",
        optimizer="sgd",
        lr=0.5,
        steps=4,
        config=dict(TRAIN_CONFIG, lora_dropout=0.0, velora_config={"num_groups": 4, "init_type": "batch_average_once"}),
    ),
]
TRAIN_CASES += [
    # MonteCLoRA: perturbed A in training, KL regularizer in the loss; the noise buffer (2 samples) is
    # redrawn after seeding and refilled twice during the 5 steps.
    dict(
        name="monteclora_adamw",
        optimizer="adamw",
        lr=0.01,
        steps=5,
        extra_loss="monteclora",
        config=dict(TRAIN_CONFIG, monteclora_config={"num_samples": 3, "buffer_size": 2, "use_entropy": True, "sample_scaler": 0.05}),
    ),
]
TRAIN_SEED = 1234

# adapter_config.json files written by PEFT.
CONFIG_CASES = {
    "defaults": dict(),
    "regex_rslora": dict(target_modules=r".*\.(q|v)_proj", use_rslora=True, r=16, lora_alpha=32),
    "float_alpha": dict(target_modules=["q"], lora_alpha=0.5, lora_dropout=0.05),
    "patterns": dict(target_modules=["a"], rank_pattern={"x": 4, "y": 2}, alpha_pattern={"x": 8.5}),
    "layers": dict(target_modules=["q"], layers_to_transform=[0, 1], layers_pattern="layers"),
    "task_and_bias": dict(
        target_modules=["q"], task_type="CAUSAL_LM", base_model_name_or_path="org/model", revision="main", bias="lora_only"
    ),
    "dora": dict(target_modules=["q"], use_dora=True),
    "gaussian": dict(target_modules=["q"], init_lora_weights="gaussian", exclude_modules=["k"]),
    "small_dropout": dict(target_modules=["q"], lora_dropout=1e-05, lora_alpha=16.0),
}

MATCH_NAMES = [
    "lin0",
    "lin1",
    "layers.0.lin0",
    "layers.1.lin0",
    "layers.1.lin1",
    "model.layers.0.self_attn.q_proj",
    "model.layers.1.self_attn.q_proj",
    "model.layers.1.self_attn.v_proj",
    "model.layers.10.mlp.down_proj",
    "model.layers.0.mlp.experts.3.up_proj",
    "model.layers.2.mlp.experts.0.up_proj",
    "model.embed_tokens",
    "lm_head",
    "classifier",
    "model.classifier.dense",
    "model.classifier_head",
    "transformer.h.2.attn.c_attn",
    "transformer.h.3.attn.c_attn",
    "encoder.block.0.layer.0.SelfAttention.q",
    "q_proj",
    "xq_proj",
    "a.b",
]

MATCH_CONFIGS = [
    dict(target_modules=["q_proj", "v_proj"]),
    dict(target_modules=r".*\.q_proj"),
    dict(target_modules="lin0"),
    dict(target_modules=["lin0"], exclude_modules=["layers.1.lin0"]),
    dict(target_modules=["lin0", "lin1"], exclude_modules=r".*1\..*"),
    dict(target_modules=["q_proj", "up_proj"], layers_to_transform=[1]),
    dict(target_modules=["q_proj", "up_proj"], layers_to_transform=0, layers_pattern="layers"),
    dict(target_modules=["c_attn", "lin1"], layers_to_transform=[1, 2], layers_pattern=["h", "layers"]),
    dict(target_modules=".*", exclude_modules=".*lin.*"),
    dict(target_modules=["lin0", "dense", "classifier", "q_proj"], modules_to_save=["classifier"]),
    dict(target_modules=r"^(?!.*mlp).*proj$"),
    dict(target_modules=["SelfAttention.q", "attn.c_attn"]),
]

PATTERN_CASES = [
    ["lin0", r"layers\.\d+\.lin0"],
    [r"layers\.1\.lin0", "lin0"],
    ["q_proj", "self_attn.q_proj", r"model\.layers\.1\..*"],
    ["proj"],
]


def tensors(d):
    return {k: v.detach().contiguous().clone() for k, v in d.items()}


def model_input(model="MLP", seed=42):
    return models.example_input(model, seed)


def lora_config(kwargs, default_init=False):
    kwargs = dict(kwargs)
    kwargs.setdefault("init_lora_weights", default_init)
    return LoraConfig(**kwargs)


def outputs_of(model, x, active, merge=True):
    """The output of a PeftModel in every state the Rust side checks (the unmerged ones only when the
    adapter cannot be merged)."""
    out = {}
    model.eval()
    if len(active) == 1:
        model.set_adapter(active[0])
    else:
        model.base_model.set_adapter(active)
    with torch.no_grad():
        out["unmerged"] = model(x)
        with model.disable_adapter():
            out["disabled"] = model(x)
        if not merge:
            return out
        if merge == "no_unmerge":
            # Methods that merge but cannot unmerge (OSF): merge_and_unload on a copy, then merge in place.
            out["merge_and_unload"] = copy.deepcopy(model).merge_and_unload()(x)
            model.merge_adapter()
            out["merged"] = model(x)
            return out
        model.merge_adapter()
        out["merged"] = model(x)
        model.unmerge_adapter()
        out["unmerged_after_merge"] = model(x)
        unloaded = copy.deepcopy(model).merge_and_unload()
        out["merge_and_unload"] = unloaded(x)
    return out


def status_of(model, active):
    """PEFT's get_layer_status / get_model_status with `active` set, as JSON."""
    from peft import get_layer_status, get_model_status

    if len(active) == 1:
        model.set_adapter(active[0])
    else:
        model.base_model.set_adapter(active)
    layers = [dataclasses.asdict(s) for s in get_layer_status(model)]
    status = dataclasses.asdict(get_model_status(model))
    return dict(layers=layers, model=status)


def gen_case(root, case):
    d = os.path.join(root, "cases", case["name"])
    os.makedirs(d)
    base = models.build(case["model"])
    base.eval()
    x = model_input(case["model"])
    with torch.no_grad():
        base_out = base(x)
    save_file(tensors(base.state_dict()), os.path.join(d, "base.safetensors"))
    names = list(case["adapters"])
    torch.manual_seed(1)
    model = get_peft_model(base, lora_config(case["adapters"][names[0]]), adapter_name=names[0])
    for n in names[1:]:
        model.add_adapter(n, lora_config(case["adapters"][n]))
    perturb = case.get("perturb")
    if perturb == "modules_to_save":
        with torch.no_grad():
            for n, p in model.named_parameters():
                if ".modules_to_save." in n:
                    p.add_(0.1 * torch.randn_like(p))
    elif perturb == "tokens":
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "trainable_tokens_delta" in n:
                    p.add_(0.3 * torch.randn_like(p))
    elif perturb == "monteclora":
        model.train()
        with torch.no_grad():
            # (under no_grad: PEFT stores the sampled covariance with its graph in a buffer, after which
            # copy.deepcopy of the model fails)
            model(model_input(case["model"]))
            for n, p in model.named_parameters():
                if "_prior" in n:
                    p.add_(0.3 * torch.randn_like(p))
    elif perturb == "dora":
        # A trained magnitude differs from the initial weight norm.
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_magnitude_vector" in n:
                    p.mul_(1 + 0.2 * torch.randn_like(p))
    elif perturb:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_" in n or not n.endswith("bias"):
                    continue
                if perturb == "all" or "base_layer" in n:
                    p.add_(0.1 * torch.randn_like(p))
    active = case.get("active", [names[0]])
    merge = case.get("merge", True)
    status = status_of(model, active)
    if perturb == "monteclora":
        # PEFT computes the regularizer in training mode only.
        with torch.no_grad():
            model.train()
            out_extra = {"monteclora_loss": torch.as_tensor(model.base_model._get_monteclora_loss()).reshape(1)}
            model.eval()
    else:
        out_extra = {}
    if any(cfg.get("kasa_config") is not None for cfg in case["adapters"].values()):
        with torch.no_grad():
            kasa_loss = model.base_model._get_kasa_loss()
    else:
        kasa_loss = None
    out = outputs_of(model, x, active, merge)
    if kasa_loss is not None:
        out["kasa_loss"] = torch.as_tensor(kasa_loss).reshape(1)
    out.update(out_extra)
    out["base"] = base_out
    model.save_pretrained(os.path.join(d, "adapter"))
    save_file(tensors({"x": x}), os.path.join(d, "input.safetensors"))
    save_file(tensors(out), os.path.join(d, "outputs.safetensors"))
    meta = dict(
        name=case["name"],
        model=case["model"],
        adapters=names,
        active=active,
        perturb=perturb,
        merge=merge,
        status=status,
        configs={n: dict(case["adapters"][n], init_lora_weights=False) for n in names},
    )
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(meta, f, indent=2)
    return case["name"]


def base_state(peft_model):
    """The base model's weights as it is now (PiSSA & co. rewrite them), under the plain module names."""
    out = {}
    for k, v in peft_model.get_base_model().state_dict().items():
        if "lora_" in k or "modules_to_save" in k or "original_module" in k:
            continue
        out[k.replace(".base_layer.", ".")] = v
    return tensors(out)


def gen_init(root, case):
    d = os.path.join(root, "init", case["name"])
    os.makedirs(d)
    model = models.build(case["model"], seed=0)
    save_file(tensors(model.state_dict()), os.path.join(d, "base.safetensors"))
    peft_model = get_peft_model(model, LoraConfig(**case["config"]))
    peft_model.save_pretrained(os.path.join(d, "adapter"))
    save_file(base_state(peft_model), os.path.join(d, "base_after.safetensors"))
    trainable = sorted(n for n, p in peft_model.named_parameters() if p.requires_grad)
    with open(os.path.join(d, "trainable.json"), "w") as f:
        json.dump(trainable, f)
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(dict(name=case["name"], model=case["model"], config=case["config"]), f, indent=2)
    return case["name"]


def gen_train(root, case):
    d = os.path.join(root, "train", case["name"])
    os.makedirs(d)
    case = dict(case)
    case.setdefault("model", "MLP")
    base = models.build(case["model"])
    save_file(tensors(base.state_dict()), os.path.join(d, "base.safetensors"))
    torch.manual_seed(7)
    model = get_peft_model(base, LoraConfig(**case.get("config", TRAIN_CONFIG)))
    model.save_pretrained(os.path.join(d, "initial"))
    x = model_input(case["model"])
    y = torch.arange(9) % 2
    if case["model"] == "EmbMLP":
        y = (torch.arange(45) % 2).view(9, 5)
    params = [p for p in model.parameters() if p.requires_grad]
    if case["optimizer"] == "sgd":
        opt = torch.optim.SGD(params, lr=case["lr"])
    else:
        opt = torch.optim.AdamW(params, lr=case["lr"])
    torch.manual_seed(TRAIN_SEED)
    if case.get("extra_loss") == "monteclora":
        for m in model.modules():
            for sampler in getattr(m, "lora_monteclora_sampler", {}).values():
                sampler.sampler._refill_buffer()
    model.train()
    losses = []
    for _ in range(case["steps"]):
        opt.zero_grad()
        out = model(x)
        loss = F.nll_loss(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        if case.get("extra_loss") == "monteclora":
            loss = loss + model.base_model._get_monteclora_loss()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.save_pretrained(os.path.join(d, "final"))
    save_file(tensors({"x": x, "y": y}), os.path.join(d, "data.safetensors"))
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(dict(case, losses=losses, seed=TRAIN_SEED), f, indent=2)
    return case["name"]


def gen_conversion(root, case):
    d = os.path.join(root, "conversion", case["name"])
    os.makedirs(d)
    model = models.build(case["model"], seed=0)
    peft_model = get_peft_model(model, LoraConfig(**case["config"]))
    save_file(base_state(peft_model), os.path.join(d, "base_after.safetensors"))
    peft_model.save_pretrained(os.path.join(d, "initial"))
    torch.manual_seed(3)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                p.add_(0.05 * torch.randn_like(p))
    peft_model.save_pretrained(os.path.join(d, "trained"))
    x = model_input(case["model"])
    peft_model.eval()
    with torch.no_grad():
        trained_out = peft_model(x)
    peft_model.save_pretrained(
        os.path.join(d, "converted"), path_initial_model_for_weight_conversion=os.path.join(d, "initial")
    )
    original = models.build(case["model"], seed=0)
    loaded = PeftModel.from_pretrained(original, os.path.join(d, "converted"))
    loaded.eval()
    with torch.no_grad():
        converted_out = loaded(x)
    save_file(tensors({"x": x, "trained": trained_out, "converted": converted_out}), os.path.join(d, "outputs.safetensors"))
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(case, f, indent=2)
    return case["name"]


def gen_weighted(root, case):
    from peft import get_peft_model_state_dict

    d = os.path.join(root, "weighted", case["name"])
    os.makedirs(d)
    base = models.build(case["model"])
    base.eval()
    save_file(tensors(base.state_dict()), os.path.join(d, "base.safetensors"))
    names = list(case["adapters"])
    torch.manual_seed(1)
    model = get_peft_model(base, lora_config(case["adapters"][names[0]]), adapter_name=names[0])
    for n in names[1:]:
        model.add_adapter(n, lora_config(case["adapters"][n]))
    model.save_pretrained(os.path.join(d, "adapters"))
    x = model_input(case["model"])
    save_file(tensors({"x": x}), os.path.join(d, "input.safetensors"))
    for i, combo in enumerate(case["combos"]):
        new = f"w{i}"
        kwargs = {k: v for k, v in combo.items() if k not in ("adapters", "weights")}
        torch.manual_seed(100 + i)
        model.add_weighted_adapter(combo["adapters"], combo["weights"], new, **kwargs)
        state = get_peft_model_state_dict(model, adapter_name=new)
        model.set_adapter(new)
        model.eval()
        with torch.no_grad():
            out = model(x)
        save_file(tensors(dict(state, __output__=out)), os.path.join(d, f"{new}.safetensors"))
        with open(os.path.join(d, f"{new}.json"), "w") as f:
            json.dump(dict(combo, config=model.peft_config[new].to_dict()), f, indent=2, default=sorted)
        model.set_adapter(names[0])
        model.delete_adapter(new)
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(dict(name=case["name"], model=case["model"], adapters=names, combos=len(case["combos"])), f, indent=2)
    return case["name"]


def gen_hotswap(root):
    from peft.utils.hotswap import hotswap_adapter, prepare_model_for_compiled_hotswap

    d = os.path.join(root, "hotswap")
    os.makedirs(d)
    base = models.build("MLP")
    save_file(tensors(base.state_dict()), os.path.join(d, "base.safetensors"))
    x = model_input("MLP")
    outputs = {"x": x}
    torch.manual_seed(5)
    for name, cfg in HOTSWAP_ADAPTERS.items():
        m = get_peft_model(copy.deepcopy(base), lora_config(cfg))
        m.save_pretrained(os.path.join(d, name))
        m.eval()
        with torch.no_grad():
            outputs[f"direct_{name}"] = m(x)
    model = PeftModel.from_pretrained(copy.deepcopy(base), os.path.join(d, "h0"))
    prepare_model_for_compiled_hotswap(model, target_rank=8)
    model.eval()
    for name in list(HOTSWAP_ADAPTERS)[1:]:
        hotswap_adapter(model, os.path.join(d, name), adapter_name="default", torch_device="cpu")
        with torch.no_grad():
            outputs[f"swapped_{name}"] = model(x)
    save_file(tensors(outputs), os.path.join(d, "outputs.safetensors"))
    return list(HOTSWAP_ADAPTERS)


def gen_mixed(root, case):
    d = os.path.join(root, "mixed", case["name"])
    os.makedirs(d)
    base = models.build(case["model"])
    base.eval()
    save_file(tensors(base.state_dict()), os.path.join(d, "base.safetensors"))
    names = list(case["adapters"])
    torch.manual_seed(1)
    model = get_peft_model(base, lora_config(case["adapters"][names[0]]), adapter_name=names[0])
    for n in names[1:]:
        model.add_adapter(n, lora_config(case["adapters"][n]))
    if case.get("perturb") == "modules_to_save":
        with torch.no_grad():
            for n, p in model.named_parameters():
                if ".modules_to_save." in n:
                    p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(os.path.join(d, "adapters"))
    x = model_input(case["model"])
    model.eval()
    with torch.no_grad():
        out = model(x, adapter_names=case["rows"])
    save_file(tensors({"x": x, "mixed": out}), os.path.join(d, "outputs.safetensors"))
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(dict(name=case["name"], model=case["model"], adapters=names, rows=case["rows"]), f, indent=2)
    return case["name"]


def gen_alora(root):
    """Activated LoRA on the embedding model: offsets from the invocation tokens, plain and mixed batches."""
    from peft.tuners.lora.variants import calculate_alora_offsets

    d = os.path.join(root, "alora")
    os.makedirs(d)
    base = models.build("EmbMLP")
    base.eval()
    save_file(tensors(base.state_dict()), os.path.join(d, "base.safetensors"))
    torch.manual_seed(1)
    cfg_a = dict(target_modules=["lin0", "lin1"], r=4, alora_invocation_tokens=[3, 4], lora_dropout=0.1)
    model = get_peft_model(base, lora_config(cfg_a), adapter_name="a")
    model.add_adapter("b", lora_config(dict(target_modules=["lin0"], r=2)))
    model.save_pretrained(os.path.join(d, "adapters"))
    torch.manual_seed(2)
    x = torch.randint(5, 30, (6, 8))
    x[0, 2:4] = torch.tensor([3, 4])  # invocation in the middle
    x[1, 6:8] = torch.tensor([3, 4])  # at the end
    x[2, 1:3] = torch.tensor([3, 4])
    x[2, 4:6] = torch.tensor([3, 4])  # twice: the last one counts
    x[3, 7] = 3  # cut off: not found
    x[5, 0:2] = torch.tensor([3, 4])  # at the start
    model.set_adapter("a")
    model.eval()
    offsets = calculate_alora_offsets(model.peft_config, "a", x)
    rows = ["a", "b", "a", "__base__", "b", "a"]
    mixed_offsets = calculate_alora_offsets(model.peft_config, "a", x, adapter_names=rows)
    with torch.no_grad():
        out = model(x, alora_offsets=offsets)
        mixed = model(x, adapter_names=rows, alora_offsets=mixed_offsets)
        no_offsets = model(x)
    save_file(tensors({"x": x, "alora": out, "mixed": mixed, "no_offsets": no_offsets}), os.path.join(d, "outputs.safetensors"))
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(dict(offsets=offsets, rows=rows, mixed_offsets=mixed_offsets), f, indent=2)
    return "alora"


ARROW_CASES = [
    dict(name="plain", seed=5, arrow_config=dict(top_k=2, router_temperature=0.5)),
    dict(name="gks_seeded", seed=6, arrow_config=dict(top_k=1, use_gks=True, rng_seed=123)),
]


def gen_arrow(root, case):
    """Arrow: PEFT's create_arrow_model over saved task (and general) adapters; outputs before and after
    another task adapter is loaded (prototypes rebuilt, GKS applied to the new adapter)."""
    from peft import ArrowConfig, create_arrow_model

    d = os.path.join(root, "arrow", case["name"])
    os.makedirs(d)
    base = models.build("MLP")
    base.eval()
    save_file(tensors(base.state_dict()), os.path.join(d, "base.safetensors"))
    torch.manual_seed(case["seed"])
    dirs = {}
    for name in ["task_a", "task_b", "task_c", "task_late", "general_a", "general_b"]:
        m = get_peft_model(copy.deepcopy(base), lora_config(dict(target_modules=["lin0", "lin1"], r=2, lora_alpha=4)))
        dirs[name] = os.path.join(d, name)
        m.save_pretrained(dirs[name])
    tasks = [dirs["task_a"], dirs["task_b"], dirs["task_c"]]
    general = [dirs["general_a"], dirs["general_b"]]
    x = model_input("MLP")  # (reseeds the generator: before the seed the router draws from)
    torch.manual_seed(11)
    model = create_arrow_model(
        copy.deepcopy(base), tasks, ArrowConfig(**case["arrow_config"]), general_adapter_paths=general
    )
    model.eval()
    with torch.no_grad():
        first = model(x)
        again = model(x)
    model.save_pretrained(os.path.join(d, "saved"), selected_adapters=["arrow_router"])
    model.load_adapter(dirs["task_late"], adapter_name="task_3")
    with torch.no_grad():
        late = model(x)
    save_file(tensors({"x": x, "first": first, "again": again, "late": late}), os.path.join(d, "outputs.safetensors"))
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(case, f, indent=2)
    return case["name"]


def gen_eva(root):
    """EVA on a custom model (all positions) and on a tiny Llama (q/k/v share inputs; language-modeling mask)."""
    from peft.tuners.lora.eva import get_eva_state_dict, initialize_lora_eva_weights
    import transformers as tf

    out = []
    # 1. DeepMLP, inputs flattened.
    d = os.path.join(root, "eva", "deep_mlp")
    os.makedirs(d)
    base = models.build("DeepMLP")
    save_file(tensors(base.state_dict()), os.path.join(d, "base.safetensors"))
    torch.manual_seed(1)
    cfg = LoraConfig(target_modules=["lin0", "lin1", "out"], r=2, init_lora_weights="eva")
    model = get_peft_model(base, cfg)
    torch.manual_seed(3)
    batches = [torch.randn(64, 10) for _ in range(6)]
    eva = get_eva_state_dict(
        model, batches, forward_fn=lambda m, x: m(x), prepare_model_inputs_fn=None, prepare_layer_inputs_fn=None,
        show_progress_bar=False,
    )
    eva_copy = {k.removeprefix("base_model.model."): v.clone() for k, v in eva.items()}
    initialize_lora_eva_weights(model, eva_state_dict=eva, show_progress_bar=False)
    model.save_pretrained(os.path.join(d, "adapter"))
    save_file(tensors(eva_copy), os.path.join(d, "eva.safetensors"))
    save_file(tensors({f"batch{i}": b for i, b in enumerate(batches)}), os.path.join(d, "batches.safetensors"))
    out.append("deep_mlp")
    # 2. A tiny Llama, language-modeling mask (padding and -100 labels ignored).
    d = os.path.join(root, "eva", "llama")
    os.makedirs(d)
    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32, pad_token_id=0)
    llama = tf.LlamaForCausalLM(config)
    llama.eval()
    llama.save_pretrained(os.path.join(d, "model"))
    torch.manual_seed(1)
    cfg = LoraConfig(task_type="CAUSAL_LM", target_modules=["q_proj", "k_proj", "v_proj", "down_proj"], r=2,
                     init_lora_weights="eva")
    model = get_peft_model(llama, cfg)
    torch.manual_seed(4)
    batches = []
    for _ in range(5):
        ids = torch.randint(1, 64, (4, 12))
        mask = torch.ones(4, 12, dtype=torch.long)
        mask[1, -3:] = 0
        ids[1, -3:] = 0
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, :2] = -100
        batches.append(dict(input_ids=ids, attention_mask=mask, labels=labels))
    eva = get_eva_state_dict(model, batches, show_progress_bar=False)
    eva_copy = {k.removeprefix("base_model.model."): v.clone() for k, v in eva.items()}
    initialize_lora_eva_weights(model, eva_state_dict=eva, show_progress_bar=False)
    model.save_pretrained(os.path.join(d, "adapter"))
    save_file(tensors(eva_copy), os.path.join(d, "eva.safetensors"))
    flat = {}
    for i, b in enumerate(batches):
        flat.update({f"{k}{i}": v for k, v in b.items()})
    save_file(tensors(flat), os.path.join(d, "batches.safetensors"))
    out.append("llama")
    return out


LORA_GA_CASES = [
    # 2r must not exceed a layer's smaller dimension (PEFT slices past the singular values otherwise).
    dict(name="arb2r_stable", model="MLP", config=dict(target_modules=["lin0"], r=2), ga=dict()),
    dict(name="a2rbr_weight_svd", model="DeepMLP", config=dict(target_modules=["lin0", "lin1"], r=2, lora_alpha=4),
         ga=dict(direction="A2rBr", scale="weight_svd")),
    dict(name="random_gd_scale_fifo", model="MLPConv1D", config=dict(target_modules=["c_fc", "c_proj"], r=1),
         ga=dict(direction="random", scale="gd_scale")),
    dict(name="arbr_unit", model="MLP", config=dict(target_modules=["lin0"], r=3, use_rslora=True),
         ga=dict(direction="ArBr", scale="unit")),
]


def gen_lora_ga(root, case):
    """LoRA-GA: gradients from two training steps (dropout on), then the adapter from them."""
    from peft.tuners.lora.config import LoraGAConfig
    from peft.tuners.lora.loraga import preprocess_loraga

    d = os.path.join(root, "lora_ga", case["name"])
    os.makedirs(d)
    model = models.build(case["model"], seed=0)
    save_file(tensors(model.state_dict()), os.path.join(d, "base.safetensors"))
    config = LoraConfig(init_lora_weights="lora_ga", lora_ga_config=LoraGAConfig(**case["ga"]), **case["config"])
    x = model_input(case["model"])
    y = torch.arange(9) % 2

    def train_step():
        for _ in range(2):
            F.nll_loss(model(x), y).backward()

    torch.manual_seed(5)
    preprocess_loraga(model, config, train_step)
    torch.manual_seed(6)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(os.path.join(d, "adapter"))
    save_file(base_state(peft_model), os.path.join(d, "base_after.safetensors"))
    save_file(tensors({"x": x, "y": y}), os.path.join(d, "data.safetensors"))
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(dict(case, config=dict(case["config"], init_lora_weights="lora_ga",
                                         lora_ga_config=dataclasses.asdict(LoraGAConfig(**case["ga"])))), f, indent=2)
    return case["name"]


CORDA_CASES = [
    dict(name="ipm", model="MLP", config=dict(target_modules=["lin0", "lin1"], r=2), method="ipm"),
    dict(name="kpm_patterns", model="DeepMLP", config=dict(target_modules=["lin0", "out"], r=2, rank_pattern={"out": 1}, lora_alpha=4), method="kpm"),
    dict(name="fan_in_fan_out", model="MLPConv1D", config=dict(target_modules=["c_fc"], r=3), method="ipm"),
]


def gen_corda(root, case):
    """CorDA: input covariances over a few samples, then the decomposed adapter and residual base."""
    from peft.tuners.lora.config import CordaConfig
    from peft.tuners.lora.corda import preprocess_corda

    d = os.path.join(root, "corda", case["name"])
    os.makedirs(d)
    model = models.build(case["model"], seed=0)
    model.eval()
    save_file(tensors(model.state_dict()), os.path.join(d, "base.safetensors"))
    config = LoraConfig(init_lora_weights="corda", corda_config=CordaConfig(corda_method=case["method"]), **case["config"])
    torch.manual_seed(8)
    samples = [torch.randn(9, 10) * 2 for _ in range(3)]

    def run_model():
        for x in samples:
            model(x)

    preprocess_corda(model, config, run_model)
    torch.manual_seed(9)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(os.path.join(d, "adapter"))
    save_file(base_state(peft_model), os.path.join(d, "base_after.safetensors"))
    save_file(tensors({f"x{i}": x for i, x in enumerate(samples)}), os.path.join(d, "samples.safetensors"))
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(dict(case, config=dict(case["config"], init_lora_weights="corda",
                                         corda_config=dataclasses.asdict(CordaConfig(corda_method=case["method"])))), f, indent=2)
    return case["name"]


def gen_configs(root):
    for name, kwargs in CONFIG_CASES.items():
        LoraConfig(**kwargs).save_pretrained(os.path.join(root, "configs", name))
    return sorted(CONFIG_CASES)


def gen_matching(root):
    results = []
    for kw in MATCH_CONFIGS:
        config = LoraConfig(**kw)
        verdicts = {}
        for name in MATCH_NAMES:
            r = check_target_module_exists(config, name)
            verdicts[name] = "excluded" if isinstance(r, _ExcludedModule) else ("targeted" if r else "not_targeted")
        results.append(dict(config=kw, verdicts=verdicts))
    patterns = []
    for keys in PATTERN_CASES:
        chosen = {}
        for name in MATCH_NAMES:
            k = get_pattern_key(keys, name)
            chosen[name] = k if k in keys else None
        patterns.append(dict(patterns=keys, chosen=chosen))
    with open(os.path.join(root, "matching.json"), "w") as f:
        json.dump(dict(names=MATCH_NAMES, configs=results, patterns=patterns), f, indent=2)


def main():
    root = sys.argv[1]
    os.makedirs(root, exist_ok=True)
    manifest = dict(
        peft_version=__import__("peft").__version__,
        torch_version=torch.__version__,
        cases=[gen_case(root, c) for c in CASES],
        init=[gen_init(root, c) for c in INIT_CASES],
        train=[gen_train(root, c) for c in TRAIN_CASES],
        conversion=[gen_conversion(root, c) for c in CONVERSION_CASES],
        weighted=[gen_weighted(root, c) for c in WEIGHTED_CASES],
        hotswap=gen_hotswap(root),
        mixed=[gen_mixed(root, c) for c in MIXED_CASES],
        alora=gen_alora(root),
        arrow=[gen_arrow(root, c) for c in ARROW_CASES],
        eva=gen_eva(root),
        lora_ga=[gen_lora_ga(root, c) for c in LORA_GA_CASES],
        corda=[gen_corda(root, c) for c in CORDA_CASES],
        configs=gen_configs(root),
    )
    gen_matching(root)
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)


if __name__ == "__main__":
    main()
