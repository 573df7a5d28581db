"""HRA rows of the method parity matrix (see gen_methods.py for what each table means)."""

# HRA: Linear and Conv2d (3x3 with padding, 1x1), the plain chain of reflections and Gram-Schmidt, the
# symmetric init (even r) and its odd-r fallback, several adapters (their matrices multiply), layer
# selection, exclusions, biases, modules_to_save, a random init.
CASES = [
    dict(name="hra_mlp", method="HRA", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"], r=4)}),
    dict(name="hra_default_r", method="HRA", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"])}),
    dict(
        name="hra_gram_schmidt",
        method="HRA",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=4, apply_GS=True)},
    ),
    # Odd r: PEFT warns and keeps the Kaiming draw of every vector.
    dict(name="hra_odd_r_regex", method="HRA", model="MLP", adapters={"default": dict(target_modules=r"lin\d", r=3)}),
    # conv2d: 2 channels x 3x3 = 18 inputs; conv1x1: 8; lin: 72.
    dict(
        name="hra_convnet",
        method="HRA",
        model="ConvNet",
        adapters={"default": dict(target_modules=["conv2d", "conv1x1", "lin"], r=4)},
    ),
    dict(
        name="hra_convnet_gram_schmidt",
        method="HRA",
        model="ConvNet",
        adapters={"default": dict(target_modules=["conv2d", "conv1x1"], r=6, apply_GS=True)},
    ),
    dict(
        name="hra_two_active",
        method="HRA",
        model="MLP",
        adapters={
            "alpha": dict(target_modules=["lin0", "lin1"], r=4),
            "beta": dict(target_modules=["lin0"], r=2, apply_GS=True),
        },
        active=["alpha", "beta"],
    ),
    dict(
        name="hra_two_active_conv",
        method="HRA",
        model="ConvNet",
        adapters={
            "alpha": dict(target_modules=["conv2d", "lin"], r=2),
            "beta": dict(target_modules=["conv2d"], r=3, apply_GS=True),
        },
        active=["alpha", "beta"],
    ),
    dict(
        name="hra_second_active",
        method="HRA",
        model="MLP",
        adapters={
            "alpha": dict(target_modules=["lin0"], r=2),
            "beta": dict(target_modules=["lin0", "lin1"], r=6),
        },
        active=["beta"],
    ),
    dict(
        name="hra_deep_layers",
        method="HRA",
        model="DeepMLP",
        adapters={
            "default": dict(target_modules=["lin0", "lin1"], layers_to_transform=[1, 3], layers_pattern="layers", r=2)
        },
    ),
    dict(
        name="hra_deep_exclude",
        method="HRA",
        model="DeepMLP",
        adapters={"default": dict(target_modules=["lin0", "lin1", "out"], exclude_modules=["layers.0.lin0"], r=2)},
    ),
    dict(
        name="hra_modules_to_save",
        method="HRA",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0"], r=4, modules_to_save=["lin1"])},
    ),
    dict(
        name="hra_bias_hra_only",
        method="HRA",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0"], r=4, bias="hra_only")},
    ),
    dict(
        name="hra_bias_all",
        method="HRA",
        model="ConvNet",
        adapters={"default": dict(target_modules=["conv2d"], r=2, bias="all")},
    ),
    dict(
        name="hra_random_init",
        method="HRA",
        model="MLP",
        perturb=0.0,
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=4, init_weights=False)},
    ),
]

# Same-seed initialisation: base model and adapter created under torch.manual_seed(0).
INIT_CASES = [
    dict(name="hra_default", method="HRA", model="MLP", config=dict(target_modules=["lin0", "lin1"], r=4)),
    dict(name="hra_odd", method="HRA", model="MLP", config=dict(target_modules=["lin0", "lin1"], r=5)),
    dict(
        name="hra_random_conv",
        method="HRA",
        model="ConvNet",
        config=dict(target_modules=["conv2d", "conv1x1", "lin"], r=4, init_weights=False),
    ),
    dict(name="hra_all_linear", method="HRA", model="DeepMLP", config=dict(target_modules="all-linear", r=2, bias="hra_only")),
]

# Training: the same optimizer steps in PEFT and in Rust (dropout of the test models active). No `bias`
# row: the harness optimises the adapter var store only, and trained base biases live in the base one.
TRAIN_CASES = [
    dict(name="hra_sgd", method="HRA", model="MLP", optimizer="sgd", lr=0.5, steps=5,
         config=dict(target_modules=["lin0", "lin1"], r=4)),
    dict(name="hra_gram_schmidt_adamw", method="HRA", model="ConvNet", optimizer="adamw", lr=0.01, steps=4,
         config=dict(target_modules=["conv2d", "lin"], r=3, apply_GS=True)),
]

# adapter_config.json files written by PEFT.
CONFIG_CASES = [
    dict(name="hra_defaults", method="HRA", kwargs=dict()),
    dict(
        name="hra_full",
        method="HRA",
        kwargs=dict(
            r=6,
            apply_GS=True,
            target_modules=["q_proj", "v_proj"],
            exclude_modules=r".*\.0\..*",
            init_weights=False,
            layers_to_transform=[0, 2],
            layers_pattern="layers",
            bias="hra_only",
            modules_to_save=["score"],
            task_type="CAUSAL_LM",
            base_model_name_or_path="org/llama",
        ),
    ),
    dict(name="hra_regex", method="HRA", kwargs=dict(target_modules=r".*\.(q|v)_proj", bias="all")),
]
