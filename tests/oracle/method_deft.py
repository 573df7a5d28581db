"""DEFT rows of the method parity matrix (see gen_methods.py for what each table means)."""

# DEFT: the output-space projection removed from the base output (relu or QR decomposition of P) and the
# low-rank injection R (from the weight at init, or random), PaRa (removal only), alpha scaling, r capped
# at out_features, nn.Linear and GPT-2 Conv1D (fan_in_fan_out corrected), several adapters (merged in one
# call, each from the weight as the call found it), bias, layer selection, modules_to_save.
DEFT = dict(method="DEFT")
CASES = [
    dict(DEFT, name="deft_mlp", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"], r=4)}),
    dict(DEFT, name="deft_qr_alpha", model="DeepMLP", adapters={"default": dict(target_modules=["lin0", "lin1"], r=4, decomposition_method="qr", alpha=8)}),
    dict(DEFT, name="deft_para", model="MLP", adapters={"default": dict(target_modules=r"lin\d", r=3, para=True, bias="deft_only")}),
    dict(DEFT, name="deft_conv1d", model="MLPConv1D", adapters={"default": dict(target_modules=["c_fc", "c_proj"], r=2)}),
    dict(DEFT, name="deft_r_capped", model="MLP", adapters={"default": dict(target_modules=["lin1"], r=8, decomposition_method="qr")}),
    dict(
        DEFT,
        name="deft_two_active",
        model="DeepMLP",
        adapters={
            "alpha": dict(target_modules=["lin0", "out"], r=2),
            "gamma": dict(target_modules=["lin0"], r=3, decomposition_method="qr", alpha=6),
        },
        active=["gamma", "alpha"],
    ),
    dict(
        DEFT,
        name="deft_deep_selection",
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
        DEFT,
        name="deft_random_init",
        model="MLP",
        perturb=0.0,
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=4, init_weights=False, init_scale=3.0)},
    ),
]

# Same-seed initialisation: base model and adapter created under torch.manual_seed(0).
INIT_CASES = [
    dict(DEFT, name="deft_default", model="MLP", config=dict(target_modules=["lin0", "lin1"], r=2)),
    dict(DEFT, name="deft_qr_init", model="DeepMLP", config=dict(target_modules="all-linear", r=3, decomposition_method="qr", alpha=12)),
    dict(DEFT, name="deft_random", model="MLPConv1D", config=dict(target_modules=["c_fc", "c_proj"], r=2, init_weights=False)),
]

# Training: the same optimizer steps in PEFT and in Rust (the test models' dropout and DEFT's active).
TRAIN_CASES = [
    dict(DEFT, name="deft_sgd", model="MLP", optimizer="sgd", lr=0.5, steps=5, config=dict(target_modules=["lin0", "lin1"], r=2, deft_dropout=0.1)),
    dict(DEFT, name="deft_qr_adamw", model="DeepMLP", optimizer="adamw", lr=0.01, steps=4, config=dict(target_modules=["lin0"], r=2, decomposition_method="qr", init_weights=False)),
    # r = out_features: with "qr" the projection is the identity and P's gradient is rounding noise (AdamW
    # amplifies it), so the full-rank row uses "relu".
    dict(DEFT, name="deft_full_rank_adamw", model="DeepMLP", optimizer="adamw", lr=0.01, steps=4, config=dict(target_modules=["out"], r=2, init_weights=False)),
]

# adapter_config.json files written by PEFT.
CONFIG_CASES = [
    dict(name="deft_defaults", method="DEFT", kwargs=dict()),
    dict(
        name="deft_full",
        method="DEFT",
        kwargs=dict(
            r=16,
            target_modules=["q_proj", "v_proj"],
            exclude_modules=["lm_head"],
            decomposition_method="qr",
            init_scale=0.5,
            alpha=32,
            para=True,
            fan_in_fan_out=True,
            deft_dropout=0.05,
            init_weights=False,
            layers_to_transform=[0, 1],
            layers_pattern="layers",
            bias="deft_only",
            modules_to_save=["score"],
            task_type="SEQ_CLS",
            base_model_name_or_path="org/llama",
        ),
    ),
    dict(name="deft_regex", method="DEFT", kwargs=dict(target_modules=r".*\.(q|v)_proj")),
]
