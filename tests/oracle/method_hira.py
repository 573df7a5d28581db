"""HiRA rows of the method parity matrix (see gen_methods.py for what each table means)."""

# HiRA: W ⊙ (B·A) on nn.Linear, GPT-2 Conv1D (fan_in_fan_out corrected per layer), nn.Embedding (padding
# index in the input), Conv2d 3x3 / 1x1 (the squeezed product), Conv3d and a strided Conv1d; rank_pattern,
# dropout, several adapters on one layer (merged in one call: PEFT sums their deltas first, so merged
# outputs agree to rounding), layer selection, exclusions, modules_to_save and every init scheme.
HIRA = dict(method="HIRA")
CASES = [
    dict(HIRA, name="hira_mlp", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"], r=4)}),
    dict(HIRA, name="hira_regex_dropout", model="MLP", adapters={"default": dict(target_modules=r"lin\d", r=3, hira_dropout=0.2)}),
    # PEFT 0.21.2 applies rank_pattern only to an adapter added to a layer that has a HiRA adapter already
    # (its dispatch reads config.r): "default" gets r=4 everywhere, "second" r=1 on lin1.
    dict(
        HIRA,
        name="hira_rank_pattern",
        model="MLP",
        adapters={
            "default": dict(target_modules=["lin0", "lin1"], r=4, rank_pattern={"lin1": 1}),
            "second": dict(target_modules=["lin0", "lin1"], r=3, rank_pattern={"lin1": 1}),
        },
        active=["second"],
    ),
    dict(HIRA, name="hira_conv1d", model="MLPConv1D", adapters={"default": dict(target_modules=["c_fc", "c_proj"], r=2)}),
    dict(HIRA, name="hira_embedding", model="EmbMLP", adapters={"default": dict(target_modules=["emb", "lin0"], r=3)}),
    dict(
        HIRA,
        name="hira_convnet",
        model="ConvNet",
        adapters={"default": dict(target_modules=["conv2d", "conv1x1", "conv3d", "conv1d", "lin"], r=2)},
    ),
    dict(
        HIRA,
        name="hira_two_active",
        model="DeepMLP",
        adapters={
            "alpha": dict(target_modules=["lin0", "out"], r=3),
            "gamma": dict(target_modules=["lin0"], r=2, init_weights="gaussian"),
        },
        active=["gamma", "alpha"],
        atol=1e-6,
    ),
    dict(
        HIRA,
        name="hira_deep_selection",
        model="DeepMLP",
        adapters={
            "default": dict(
                target_modules=["lin0", "lin1"],
                layers_to_transform=[1, 3],
                layers_pattern="layers",
                exclude_modules=["layers.3.lin1"],
                modules_to_save=["layers.3.lin1"],
                r=2,
            )
        },
    ),
    dict(
        HIRA,
        name="hira_random_init",
        model="MLP",
        perturb=0.0,
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=4, init_weights=False)},
    ),
    dict(
        HIRA,
        name="hira_embedding_null_init",
        model="EmbMLP",
        perturb=0.0,
        adapters={"default": dict(target_modules=["emb", "lin1"], r=2, init_weights=None)},
    ),
]

# Same-seed initialisation: base model and adapter created under torch.manual_seed(0).
INIT_CASES = [
    dict(HIRA, name="hira_default", model="MLP", config=dict(target_modules=["lin0", "lin1"], r=2)),
    dict(HIRA, name="hira_gaussian", model="DeepMLP", config=dict(target_modules="all-linear", r=3, init_weights="gaussian")),
    dict(HIRA, name="hira_embedding_init", model="EmbMLP", config=dict(target_modules=["emb", "lin0"], r=2)),
    dict(HIRA, name="hira_convnet_init", model="ConvNet", config=dict(target_modules=["conv2d", "conv1x1", "conv3d", "conv1d"], r=2, init_weights=False)),
]

# Training: the same optimizer steps in PEFT and in Rust (dropout of the test models and of HiRA active).
TRAIN_CASES = [
    dict(HIRA, name="hira_sgd", model="MLP", optimizer="sgd", lr=0.5, steps=5, config=dict(target_modules=["lin0", "lin1"], r=2, hira_dropout=0.1)),
    dict(HIRA, name="hira_conv_adamw", model="ConvNet", optimizer="adamw", lr=0.01, steps=4, config=dict(target_modules=["conv2d", "conv1d", "lin"], r=2)),
    dict(HIRA, name="hira_embedding_sgd", model="EmbMLP", optimizer="sgd", lr=0.3, steps=3, config=dict(target_modules=["emb", "lin0"], r=2)),
]

# adapter_config.json files written by PEFT.
CONFIG_CASES = [
    dict(name="hira_defaults", method="HIRA", kwargs=dict()),
    dict(
        name="hira_full",
        method="HIRA",
        kwargs=dict(
            r=16,
            hira_dropout=0.05,
            target_modules=["q_proj", "v_proj"],
            exclude_modules=["lm_head"],
            fan_in_fan_out=True,
            init_weights="gaussian",
            layers_to_transform=[0, 1],
            layers_pattern="layers",
            rank_pattern={"q_proj": 4},
            modules_to_save=["score"],
            task_type="SEQ_CLS",
            base_model_name_or_path="org/llama",
        ),
    ),
    dict(name="hira_null_init", method="HIRA", kwargs=dict(target_modules=r".*\.(q|v)_proj", init_weights=None)),
]
