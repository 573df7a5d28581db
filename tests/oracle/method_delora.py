"""DeLoRA rows of the method parity matrix (see gen_methods.py for what each table means)."""

# DeLoRA on nn.Linear: ranks and bounds per module (rank_pattern, lambda_pattern, a float bound), layer
# selection, exclusions, modules_to_save, several active adapters (their updates summed before being added
# to the base output), dropout (inactive in evaluation), a random init (B not zero).
DELORA = dict(method="DELORA")
CASES = [
    dict(DELORA, name="delora_mlp", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"], r=4)}),
    dict(DELORA, name="delora_regex_dropout", model="MLP", adapters={"default": dict(target_modules=r"lin\d", r=2, module_dropout=0.3)}),
    dict(
        DELORA,
        name="delora_deep_patterns",
        model="DeepMLP",
        adapters={
            "default": dict(
                target_modules=["lin0", "lin1", "out"],
                r=3,
                delora_lambda=7.5,
                rank_pattern={r"layers\.1\.lin0": 5, "out": 2},
                lambda_pattern={"lin1": 2},
            )
        },
    ),
    dict(
        DELORA,
        name="delora_deep_selection",
        model="DeepMLP",
        adapters={
            "default": dict(
                target_modules=["lin0", "lin1"],
                layers_to_transform=[0, 2],
                layers_pattern="layers",
                exclude_modules=["layers.2.lin1"],
                # (not "out": PEFT matches modules_to_save as a plain suffix, and `delora_dropout` ends in "out")
                modules_to_save=["layers.3.lin1"],
                r=2,
            )
        },
    ),
    dict(
        DELORA,
        name="delora_two_active",
        model="MLP",
        adapters={
            "alpha": dict(target_modules=["lin0", "lin1"], r=2),
            "gamma": dict(target_modules=["lin0"], r=6, delora_lambda=3),
        },
        active=["gamma", "alpha"],
    ),
    dict(
        DELORA,
        name="delora_random_init",
        model="MLP",
        perturb=0.0,
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=4, init_weights=False)},
    ),
]

# Same-seed initialisation: base model and adapter created under torch.manual_seed(0).
INIT_CASES = [
    dict(DELORA, name="delora_default", model="MLP", config=dict(target_modules=["lin0", "lin1"], r=4)),
    dict(DELORA, name="delora_random", model="DeepMLP", config=dict(target_modules="all-linear", r=3, init_weights=False)),
]

# Training: the same optimizer steps in PEFT and in Rust (dropout of the test models and of DeLoRA active).
TRAIN_CASES = [
    dict(DELORA, name="delora_sgd", model="MLP", optimizer="sgd", lr=0.5, steps=5, config=dict(target_modules=["lin0", "lin1"], r=4, module_dropout=0.1)),
    dict(DELORA, name="delora_adamw", model="DeepMLP", optimizer="adamw", lr=0.01, steps=4, config=dict(target_modules=["lin1", "out"], r=2, init_weights=False)),
]

# adapter_config.json files written by PEFT.
CONFIG_CASES = [
    dict(name="delora_defaults", method="DELORA", kwargs=dict()),
    dict(
        name="delora_full",
        method="DELORA",
        kwargs=dict(
            r=16,
            delora_lambda=12.5,
            module_dropout=0.05,
            target_modules=["q_proj", "v_proj"],
            exclude_modules=["lm_head"],
            init_weights=False,
            layers_to_transform=[0, 1],
            layers_pattern="layers",
            rank_pattern={"q_proj": 8},
            lambda_pattern={"v_proj": 3},
            bias="delora_only",
            modules_to_save=["score"],
            task_type="SEQ_CLS",
            base_model_name_or_path="org/llama",
        ),
    ),
    dict(name="delora_regex", method="DELORA", kwargs=dict(target_modules=r".*\.(q|v)_proj")),
]
