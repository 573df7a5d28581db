"""BEFT rows of the method parity matrix (see gen_methods.py for what each table means)."""

# BEFT: bias offsets on linear layers (all test-model linears have a bias; a layer without one is covered
# in crates/peft-beft/tests/behaviour.rs), several active adapters (their offsets are summed first),
# merging into the base bias, all-linear, modules_to_save, a random init.
CASES = [
    dict(name="beft_mlp", method="BEFT", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"])}),
    dict(name="beft_regex", method="BEFT", model="MLP", adapters={"default": dict(target_modules=r"lin\d")}),
    dict(name="beft_deep_all_linear", method="BEFT", model="DeepMLP", adapters={"default": dict(target_modules="all-linear")}),
    dict(name="beft_deep_one", method="BEFT", model="DeepMLP", adapters={"default": dict(target_modules=["layers.2.lin1"])}),
    dict(name="beft_emb_mlp", method="BEFT", model="EmbMLP", adapters={"default": dict(target_modules=["lin0", "lin1"])}),
    dict(name="beft_convnet_head", method="BEFT", model="ConvNet", adapters={"default": dict(target_modules=["lin"])}),
    dict(
        name="beft_two_active",
        method="BEFT",
        model="MLP",
        adapters={
            "alpha": dict(target_modules=["lin0", "lin1"]),
            "gamma": dict(target_modules=["lin0"]),
        },
        active=["alpha", "gamma"],
    ),
    dict(
        name="beft_three_active",
        method="BEFT",
        model="DeepMLP",
        adapters={
            "alpha": dict(target_modules=["lin0"]),
            "gamma": dict(target_modules=["lin0", "lin1"]),
            "omega": dict(target_modules=["lin0", "out"]),
        },
        active=["gamma", "alpha", "omega"],
    ),
    dict(
        name="beft_second_active",
        method="BEFT",
        model="MLP",
        adapters={
            "alpha": dict(target_modules=["lin0"]),
            "gamma": dict(target_modules=["lin0", "lin1"]),
        },
        active=["gamma"],
    ),
    dict(
        name="beft_modules_to_save",
        method="BEFT",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0"], modules_to_save=["lin1"])},
    ),
    dict(
        name="beft_random_init",
        method="BEFT",
        model="MLP",
        perturb=0.0,
        adapters={"default": dict(target_modules=["lin0", "lin1"], init_weights=False)},
    ),
]

# Same-seed initialisation: base model and adapter created under torch.manual_seed(0).
INIT_CASES = [
    dict(name="beft_default", method="BEFT", model="MLP", config=dict(target_modules=["lin0", "lin1"])),
    dict(name="beft_random", method="BEFT", model="MLP", config=dict(target_modules=["lin0", "lin1"], init_weights=False)),
    dict(name="beft_random_deep", method="BEFT", model="DeepMLP", config=dict(target_modules="all-linear", init_weights=False)),
]

# Training: the same optimizer steps in PEFT and in Rust (dropout of the test models active).
TRAIN_CASES = [
    dict(name="beft_sgd", method="BEFT", model="MLP", optimizer="sgd", lr=0.5, steps=5, config=dict(target_modules=["lin0", "lin1"])),
    dict(name="beft_adamw", method="BEFT", model="DeepMLP", optimizer="adamw", lr=0.01, steps=4, config=dict(target_modules=["lin1", "out"])),
]

# adapter_config.json files written by PEFT.
CONFIG_CASES = [
    dict(name="beft_defaults", method="BEFT", kwargs=dict()),
    dict(
        name="beft_full",
        method="BEFT",
        kwargs=dict(
            target_modules=["v_proj"],
            modules_to_save=["score"],
            init_weights=False,
            task_type="SEQ_CLS",
            base_model_name_or_path="org/llama",
        ),
    ),
    dict(name="beft_regex", method="BEFT", kwargs=dict(target_modules=r".*\.value")),
]
