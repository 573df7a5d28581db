"""LoKr rows of the method parity matrix (see gen_methods.py for what each table means)."""

# LoKr: every factor form — full lokr_w1 / lokr_w2, low-rank w1 (decompose_both) and w2, the CP core
# (Conv2d, and Conv1d with decompose_factor=1), the full 3-D lokr_w2 of a Conv1d (torch.kron of a 2-D
# and a 3-D factor) — on Linear, Conv1d (strided) and Conv2d (3x3, 1x1, grouped); decompose_factor,
# rank/alpha patterns, layer selection, exclusions, modules_to_save, several adapters, every init.
CASES = [
    dict(
        name="lokr_mlp_full_factors",
        method="LOKR",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"])},
    ),
    dict(
        name="lokr_mlp_decompose_both",
        method="LOKR",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=1, alpha=2, decompose_both=True)},
    ),
    dict(
        name="lokr_deep_decompose_factor",
        method="LOKR",
        model="DeepMLP",
        adapters={"default": dict(target_modules=["lin0", "lin1", "out"], r=2, alpha=3.5, decompose_factor=2)},
    ),
    dict(
        name="lokr_convnet",
        method="LOKR",
        model="ConvNet",
        adapters={"default": dict(target_modules=["conv2d", "conv1x1", "grouped", "conv1d", "lin"], r=1, alpha=2)},
    ),
    dict(
        name="lokr_convnet_effective",
        method="LOKR",
        model="ConvNet",
        adapters={
            "default": dict(
                target_modules=["conv2d", "conv1x1", "grouped", "conv1d", "lin"],
                r=1,
                alpha=3,
                use_effective_conv2d=True,
            )
        },
    ),
    dict(
        name="lokr_conv1d_cp",
        method="LOKR",
        model="ConvNet",
        adapters={
            "default": dict(
                target_modules=["conv1d", "conv2d", "lin"], r=1, decompose_factor=1, use_effective_conv2d=True
            )
        },
    ),
    dict(
        name="lokr_deep_patterns",
        method="LOKR",
        model="DeepMLP",
        adapters={
            "default": dict(
                target_modules=["lin0", "lin1"],
                r=4,
                rank_pattern={r"layers\.1\.lin0": 1, "lin1": 2},
                alpha_pattern={r"layers\.[23]\.lin0": 12},
                layers_to_transform=[1, 2, 3],
                layers_pattern="layers",
            )
        },
    ),
    dict(
        name="lokr_deep_exclude_modules_to_save",
        method="LOKR",
        model="DeepMLP",
        adapters={
            "default": dict(
                target_modules=r".*lin\d", exclude_modules=r"layers\.3\..*", modules_to_save=["out"], r=2
            )
        },
    ),
    dict(
        name="lokr_two_active",
        method="LOKR",
        model="ConvNet",
        adapters={
            "alpha": dict(target_modules=["conv2d", "lin"], r=2),
            "beta": dict(target_modules=["conv2d", "grouped"], r=1, use_effective_conv2d=True),
        },
        active=["alpha", "beta"],
    ),
    dict(
        name="lokr_second_active",
        method="LOKR",
        model="MLP",
        adapters={
            "alpha": dict(target_modules=["lin0"], r=2),
            "beta": dict(target_modules=["lin0", "lin1"], r=1, decompose_both=True, init_weights="lycoris"),
        },
        active=["beta"],
    ),
    dict(
        name="lokr_random_init",
        method="LOKR",
        model="ConvNet",
        perturb=0.0,
        adapters={
            "default": dict(
                target_modules=["conv2d", "grouped", "conv1d", "lin"], r=1, init_weights=False,
                use_effective_conv2d=True,
            )
        },
    ),
    dict(
        name="lokr_dropout_options_eval",
        method="LOKR",
        model="EmbMLP",
        adapters={
            "default": dict(
                target_modules=["lin0", "lin1"], r=2, rank_dropout=0.5, module_dropout=0.5, rank_dropout_scale=True
            )
        },
    ),
]

# Same-seed initialisation: base model and adapter created under torch.manual_seed(0).
INIT_CASES = [
    dict(name="lokr_default", method="LOKR", model="MLP", config=dict(target_modules=["lin0", "lin1"])),
    dict(
        name="lokr_lycoris_effective",
        method="LOKR",
        model="ConvNet",
        config=dict(
            target_modules=["conv2d", "conv1x1", "grouped", "conv1d", "lin"],
            r=1,
            init_weights="lycoris",
            use_effective_conv2d=True,
        ),
    ),
    dict(
        name="lokr_random_decompose_both",
        method="LOKR",
        model="DeepMLP",
        config=dict(target_modules="all-linear", r=1, decompose_both=True, init_weights=False),
    ),
    dict(
        name="lokr_default_low_rank_conv",
        method="LOKR",
        model="ConvNet",
        config=dict(target_modules=["conv2d", "conv1d", "lin"], r=1, decompose_both=True, decompose_factor=1,
                    use_effective_conv2d=True),
    ),
]

# Training: the same optimizer steps in PEFT and in Rust, with the test models' dropout, LoKr's module
# dropout (a torch.rand(1) per layer and step) and rank dropout (a torch.rand(out) per layer and step,
# rescaled by its mean with rank_dropout_scale) drawing from the same generator.
TRAIN_CASES = [
    dict(name="lokr_sgd_dropouts_scaled", method="LOKR", model="MLP", optimizer="sgd", lr=0.5, steps=5,
         config=dict(target_modules=["lin0"], r=2, decompose_both=True, rank_dropout=0.3, module_dropout=0.25,
                     rank_dropout_scale=True, modules_to_save=["lin1"])),
    dict(name="lokr_deep_adamw", method="LOKR", model="DeepMLP", optimizer="adamw", lr=0.01, steps=4,
         config=dict(target_modules=["lin0", "lin1", "out"], r=1, module_dropout=0.3, rank_dropout=0.2)),
    dict(name="lokr_conv_effective_adamw", method="LOKR", model="ConvNet", optimizer="adamw", lr=0.01, steps=4,
         config=dict(target_modules=["conv2d", "grouped", "conv1d", "lin"], r=1, use_effective_conv2d=True,
                     rank_dropout=0.2, module_dropout=0.1, init_weights="lycoris")),
]

# adapter_config.json files written by PEFT.
CONFIG_CASES = [
    dict(name="lokr_defaults", method="LOKR", kwargs=dict()),
    dict(
        name="lokr_full",
        method="LOKR",
        kwargs=dict(
            r=16,
            alpha=32,
            rank_dropout=0.1,
            module_dropout=0.05,
            use_effective_conv2d=True,
            decompose_both=True,
            decompose_factor=4,
            rank_dropout_scale=True,
            target_modules=["q_proj", "v_proj"],
            exclude_modules=["lm_head"],
            init_weights="lycoris",
            layers_to_transform=3,
            layers_pattern=["layers", "h"],
            rank_pattern={"q_proj": 4},
            alpha_pattern={r"layers\.1\.v_proj": 2.5},
            modules_to_save=["score"],
            task_type="CAUSAL_LM",
            base_model_name_or_path="org/model",
            revision="main",
        ),
    ),
    dict(name="lokr_random", method="LOKR", kwargs=dict(target_modules="all-linear", init_weights=False)),
]
