"""MiSS rows of the method parity matrix (see gen_methods.py for what each table means)."""

# MiSS on nn.Linear in its three variants: balance (init_weights true/false; r dividing the input or not,
# which pads the input in the forward pass and splits the merge), mini (a narrower block repeated along
# the outputs) and bat (blocks multiplied into the weight, several active adapters chained); layer
# selection, exclusions, modules_to_save, dropout (inactive in evaluation), a random init.
MISS = dict(method="MISS")
CASES = [
    dict(MISS, name="miss_mlp", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"], r=2)}),
    dict(MISS, name="miss_padded", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"], r=3)}),
    dict(MISS, name="miss_regex_dropout", model="MLP", adapters={"default": dict(target_modules=r"lin\d", r=4, miss_dropout=0.2)}),
    dict(
        MISS,
        name="miss_mini",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=5, init_weights="mini", mini_r=2)},
    ),
    dict(MISS, name="miss_bat", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"], r=2, init_weights="bat")}),
    dict(
        MISS,
        name="miss_bat_two_active",
        model="DeepMLP",
        adapters={
            "alpha": dict(target_modules=["lin0", "lin1"], r=5, init_weights="bat"),
            "gamma": dict(target_modules=["lin0"], r=5, init_weights="bat"),
        },
        active=["gamma", "alpha"],
    ),
    dict(
        MISS,
        name="miss_two_active",
        model="DeepMLP",
        adapters={
            "alpha": dict(target_modules=["lin0", "out"], r=3),
            "gamma": dict(target_modules=["lin0"], r=4),
        },
        active=["alpha", "gamma"],
    ),
    dict(
        MISS,
        name="miss_deep_selection",
        model="DeepMLP",
        adapters={
            "default": dict(
                target_modules=["lin0", "lin1"],
                layers_to_transform=[1, 3],
                layers_pattern="layers",
                exclude_modules=["layers.3.lin1"],
                # (not "out": PEFT matches modules_to_save as a plain suffix, and `miss_dropout` ends in "out")
                modules_to_save=["layers.3.lin1"],
                r=2,
            )
        },
    ),
    dict(
        MISS,
        name="miss_random_init",
        model="MLP",
        perturb=0.0,
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=4, init_weights=False)},
    ),
]

# Same-seed initialisation: base model and adapter created under torch.manual_seed(0).
INIT_CASES = [
    dict(MISS, name="miss_default", model="MLP", config=dict(target_modules=["lin0", "lin1"], r=2)),
    dict(MISS, name="miss_random", model="DeepMLP", config=dict(target_modules="all-linear", r=3, init_weights=False)),
    dict(MISS, name="miss_bat_init", model="MLP", config=dict(target_modules=["lin0"], r=5, init_weights="bat")),
]

# Training: the same optimizer steps in PEFT and in Rust (dropout of the test models and of MiSS active).
TRAIN_CASES = [
    dict(MISS, name="miss_sgd", model="MLP", optimizer="sgd", lr=0.5, steps=5, config=dict(target_modules=["lin0", "lin1"], r=2, miss_dropout=0.1)),
    dict(MISS, name="miss_bat_adamw", model="DeepMLP", optimizer="adamw", lr=0.01, steps=4, config=dict(target_modules=["lin0", "out"], r=2, init_weights="bat")),
    dict(MISS, name="miss_mini_sgd", model="MLP", optimizer="sgd", lr=0.3, steps=3, config=dict(target_modules=["lin0"], r=3, init_weights="mini", mini_r=5)),
]

# adapter_config.json files written by PEFT.
CONFIG_CASES = [
    dict(name="miss_defaults", method="MISS", kwargs=dict()),
    dict(
        name="miss_full",
        method="MISS",
        kwargs=dict(
            r=16,
            miss_dropout=0.05,
            mini_r=4,
            target_modules=["q_proj", "v_proj"],
            exclude_modules=["lm_head"],
            init_weights="mini",
            layers_to_transform=[0, 1],
            layers_pattern="layers",
            bias="miss_only",
            modules_to_save=["score"],
            task_type="SEQ_CLS",
            base_model_name_or_path="org/llama",
        ),
    ),
    dict(name="miss_bat", method="MISS", kwargs=dict(target_modules=r".*\.(q|v)_proj", init_weights="bat")),
]
