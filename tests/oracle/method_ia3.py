"""(IA)³ rows of the method parity matrix (see gen_methods.py for what each table means)."""

# (IA)³: output scaling, input scaling on feed-forward layers, Conv1D, convolutions (grouped, 3-D), several
# active adapters (their vectors multiply), exclusions, modules_to_save, a random init.
CASES = [
    dict(
        name="ia3_mlp",
        method="IA3",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], feedforward_modules=["lin1"])},
    ),
    dict(
        name="ia3_mlp_regex",
        method="IA3",
        model="MLP",
        adapters={"default": dict(target_modules=r"lin\d", feedforward_modules=r"lin0")},
    ),
    dict(
        name="ia3_conv1d",
        method="IA3",
        model="MLPConv1D",
        adapters={"default": dict(target_modules=["c_fc", "c_proj"], feedforward_modules=["c_proj"])},
    ),
    dict(
        name="ia3_convnet",
        method="IA3",
        model="ConvNet",
        adapters={
            "default": dict(
                target_modules=["conv2d", "conv1x1", "grouped", "conv3d", "lin"],
                feedforward_modules=["grouped", "conv3d"],
            )
        },
    ),
    dict(
        name="ia3_two_active",
        method="IA3",
        model="MLP",
        adapters={
            "alpha": dict(target_modules=["lin0", "lin1"], feedforward_modules=["lin1"]),
            "beta": dict(target_modules=["lin0"], feedforward_modules=[]),
        },
        active=["alpha", "beta"],
    ),
    dict(
        name="ia3_second_active",
        method="IA3",
        model="MLP",
        adapters={
            "alpha": dict(target_modules=["lin0"], feedforward_modules=["lin0"]),
            "beta": dict(target_modules=["lin0", "lin1"], feedforward_modules=["lin1"]),
        },
        active=["beta"],
    ),
    dict(
        name="ia3_deep_exclude",
        method="IA3",
        model="DeepMLP",
        adapters={
            "default": dict(
                target_modules=["lin0", "lin1", "out"], exclude_modules=["layers.0.lin0"], feedforward_modules=["lin1"]
            )
        },
    ),
    dict(
        name="ia3_modules_to_save",
        method="IA3",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0"], feedforward_modules=[], modules_to_save=["lin1"])},
    ),
    dict(
        name="ia3_random_init",
        method="IA3",
        model="MLP",
        perturb=0.0,
        adapters={"default": dict(target_modules=["lin0", "lin1"], feedforward_modules=["lin0"], init_ia3_weights=False)},
    ),
]

# Same-seed initialisation: base model and adapter created under torch.manual_seed(0).
INIT_CASES = [
    dict(name="ia3_default", method="IA3", model="MLP", config=dict(target_modules=["lin0", "lin1"], feedforward_modules=["lin1"])),
    dict(
        name="ia3_random",
        method="IA3",
        model="ConvNet",
        config=dict(target_modules=["conv2d", "grouped", "conv3d", "lin"], feedforward_modules=["grouped"], init_ia3_weights=False),
    ),
    dict(name="ia3_all_linear", method="IA3", model="DeepMLP", config=dict(target_modules="all-linear", feedforward_modules=["lin1"])),
]

# Training: the same optimizer steps in PEFT and in Rust (dropout of the test models active).
TRAIN_CASES = [
    dict(name="ia3_sgd", method="IA3", model="MLP", optimizer="sgd", lr=0.5, steps=5,
         config=dict(target_modules=["lin0", "lin1"], feedforward_modules=["lin1"])),
    dict(name="ia3_conv_adamw", method="IA3", model="ConvNet", optimizer="adamw", lr=0.01, steps=4,
         config=dict(target_modules=["conv2d", "grouped", "lin"], feedforward_modules=["grouped"])),
]
# adapter_config.json files written by PEFT.
CONFIG_CASES = [
    dict(name="ia3_defaults", method="IA3", kwargs=dict()),
    dict(
        name="ia3_full",
        method="IA3",
        kwargs=dict(
            target_modules=["k", "v", "wo"],
            feedforward_modules=["wo"],
            exclude_modules=r".*\.0\..*",
            fan_in_fan_out=True,
            modules_to_save=["head"],
            init_ia3_weights=False,
            task_type="SEQ_2_SEQ_LM",
            base_model_name_or_path="org/t5",
        ),
    ),
]


