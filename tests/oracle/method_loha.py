"""LoHa rows of the method parity matrix (see gen_methods.py for what each table means)."""

# LoHa: Linear, Conv1d (strided), Conv2d (3x3, 1x1, grouped) in the flat and the CP ("effective conv")
# form, rank/alpha patterns, layer selection, exclusions, modules_to_save, several adapters (active
# together and one of several), a random init, and the dropout options (inactive in evaluation).
CASES = [
    dict(
        name="loha_mlp",
        method="LOHA",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=4, alpha=8)},
    ),
    dict(
        name="loha_mlp_regex_float_alpha",
        method="LOHA",
        model="MLP",
        adapters={"default": dict(target_modules=r"lin\d", r=3, alpha=5.5)},
    ),
    dict(
        name="loha_convnet",
        method="LOHA",
        model="ConvNet",
        adapters={"default": dict(target_modules=["conv2d", "conv1x1", "grouped", "conv1d", "lin"], r=3, alpha=6)},
    ),
    dict(
        name="loha_convnet_effective",
        method="LOHA",
        model="ConvNet",
        adapters={
            "default": dict(
                target_modules=["conv2d", "conv1x1", "grouped", "conv1d", "lin"],
                r=2,
                alpha=3,
                use_effective_conv2d=True,
            )
        },
    ),
    dict(
        name="loha_deep_patterns",
        method="LOHA",
        model="DeepMLP",
        adapters={
            "default": dict(
                target_modules=["lin0", "lin1", "out"],
                r=4,
                alpha=4,
                rank_pattern={r"layers\.1\.lin0": 2, "out": 6},
                alpha_pattern={"lin1": 12},
            )
        },
    ),
    dict(
        name="loha_deep_layers_to_transform",
        method="LOHA",
        model="DeepMLP",
        adapters={
            "default": dict(target_modules=["lin0", "lin1"], layers_to_transform=[0, 2], layers_pattern="layers", r=3)
        },
    ),
    dict(
        name="loha_deep_exclude_modules_to_save",
        method="LOHA",
        model="DeepMLP",
        adapters={
            "default": dict(
                target_modules=["lin0", "lin1"], exclude_modules=["layers.0.lin0"], modules_to_save=["out"], r=2
            )
        },
    ),
    dict(
        name="loha_two_active",
        method="LOHA",
        model="MLP",
        adapters={
            "alpha": dict(target_modules=["lin0", "lin1"], r=2),
            "beta": dict(target_modules=["lin0"], r=5, alpha=3),
        },
        active=["alpha", "beta"],
    ),
    dict(
        name="loha_second_active",
        method="LOHA",
        model="ConvNet",
        adapters={
            "alpha": dict(target_modules=["conv2d"], r=2),
            "beta": dict(target_modules=["conv2d", "grouped"], r=3, use_effective_conv2d=True),
        },
        active=["beta"],
    ),
    dict(
        name="loha_random_init",
        method="LOHA",
        model="ConvNet",
        perturb=0.0,
        adapters={
            "default": dict(
                target_modules=["conv2d", "conv1d", "lin"], r=2, init_weights=False, use_effective_conv2d=True
            )
        },
    ),
    dict(
        name="loha_dropout_options_eval",
        method="LOHA",
        model="EmbMLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=3, rank_dropout=0.5, module_dropout=0.5)},
    ),
]

# Same-seed initialisation: base model and adapter created under torch.manual_seed(0).
INIT_CASES = [
    dict(name="loha_default", method="LOHA", model="MLP", config=dict(target_modules=["lin0", "lin1"])),
    dict(
        name="loha_random_effective",
        method="LOHA",
        model="ConvNet",
        config=dict(
            target_modules=["conv2d", "conv1x1", "grouped", "conv1d", "lin"],
            r=3,
            init_weights=False,
            use_effective_conv2d=True,
        ),
    ),
    dict(
        name="loha_all_linear_patterns",
        method="LOHA",
        model="DeepMLP",
        config=dict(target_modules="all-linear", r=4, rank_pattern={"lin1": 2}, alpha_pattern={"lin0": 16}),
    ),
]

# Training: the same optimizer steps in PEFT and in Rust, with the test models' dropout, LoHa's module
# dropout (a torch.rand(1) per layer and step) and rank dropout (a torch.rand(out) per layer and step)
# drawing from the same generator. The CP case checks PEFT's custom backward (HadaWeightCP).
TRAIN_CASES = [
    dict(name="loha_sgd_dropouts", method="LOHA", model="MLP", optimizer="sgd", lr=0.5, steps=5,
         config=dict(target_modules=["lin0"], r=4, rank_dropout=0.3, module_dropout=0.25, modules_to_save=["lin1"])),
    dict(name="loha_deep_adamw", method="LOHA", model="DeepMLP", optimizer="adamw", lr=0.01, steps=4,
         config=dict(target_modules=["lin0", "lin1"], r=3, module_dropout=0.3)),
    dict(name="loha_conv_effective_adamw", method="LOHA", model="ConvNet", optimizer="adamw", lr=0.01, steps=4,
         config=dict(target_modules=["conv2d", "grouped", "conv1d"], r=3, use_effective_conv2d=True,
                     rank_dropout=0.2, module_dropout=0.1)),
    dict(name="loha_conv_flat_sgd", method="LOHA", model="ConvNet", optimizer="sgd", lr=0.1, steps=4,
         config=dict(target_modules=["conv2d", "conv1x1", "grouped", "conv1d"], r=2)),
]

# adapter_config.json files written by PEFT.
CONFIG_CASES = [
    dict(name="loha_defaults", method="LOHA", kwargs=dict()),
    dict(
        name="loha_full",
        method="LOHA",
        kwargs=dict(
            r=16,
            alpha=32,
            rank_dropout=0.1,
            module_dropout=0.05,
            use_effective_conv2d=True,
            target_modules=["q_proj", "v_proj"],
            exclude_modules=r".*\.0\..*",
            init_weights=False,
            layers_to_transform=[1, 3],
            layers_pattern="layers",
            rank_pattern={"q_proj": 4},
            alpha_pattern={r"layers\.1\.v_proj": 2.5},
            modules_to_save=["score"],
            task_type="SEQ_CLS",
            base_model_name_or_path="org/model",
        ),
    ),
    dict(name="loha_layer_index", method="LOHA", kwargs=dict(target_modules=r".*lin\d", layers_to_transform=2)),
]
