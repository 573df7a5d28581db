"""GraLoRA rows of the method parity matrix (see gen_methods.py for what each table means)."""

# GraLoRA on nn.Linear and GPT-2's Conv1D (fan_in_fan_out): grids of 2 and 5 blocks, the hybrid
# whole-weight LoRA, a float alpha, layer selection, modules_to_save, several active adapters, dropout
# (inactive in evaluation), a random init.
GRALORA = dict(method="GRALORA")
CASES = [
    dict(GRALORA, name="gralora_mlp", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"], r=4, gralora_k=2)}),
    dict(
        GRALORA,
        name="gralora_k5",
        model="DeepMLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=5, gralora_k=5, alpha=7.5)},
    ),
    dict(
        GRALORA,
        name="gralora_hybrid",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=4, gralora_k=2, hybrid_r=3)},
    ),
    dict(GRALORA, name="gralora_conv1d", model="MLPConv1D", adapters={"default": dict(target_modules=["c_fc", "c_proj"], r=2, gralora_k=2)}),
    dict(
        GRALORA,
        name="gralora_regex_dropout",
        model="MLP",
        adapters={"default": dict(target_modules=r"lin\d", r=6, gralora_k=2, gralora_dropout=0.2, hybrid_r=1)},
    ),
    dict(
        GRALORA,
        name="gralora_deep_selection",
        model="DeepMLP",
        adapters={
            "default": dict(
                target_modules=["lin0", "lin1"],
                layers_to_transform=[1, 2],
                layers_pattern="layers",
                modules_to_save=["layers.3.lin1"],
                r=2,
                gralora_k=2,
            )
        },
    ),
    dict(
        GRALORA,
        name="gralora_two_active",
        model="MLP",
        adapters={
            "alpha": dict(target_modules=["lin0", "lin1"], r=2, gralora_k=2),
            "gamma": dict(target_modules=["lin0"], r=10, gralora_k=5, hybrid_r=2),
        },
        active=["gamma", "alpha"],
    ),
    dict(
        GRALORA,
        name="gralora_random_init",
        model="MLP",
        perturb=0.0,
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=4, gralora_k=2, hybrid_r=2, init_weights=False)},
    ),
]

# Same-seed initialisation: base model and adapter created under torch.manual_seed(0).
INIT_CASES = [
    dict(GRALORA, name="gralora_default", model="MLP", config=dict(target_modules=["lin0", "lin1"], r=4, gralora_k=2)),
    dict(
        GRALORA,
        name="gralora_random_hybrid",
        model="DeepMLP",
        config=dict(target_modules="all-linear", r=4, gralora_k=2, hybrid_r=2, init_weights=False),
    ),
]

# Training: the same optimizer steps in PEFT and in Rust (dropout of the test models and of GraLoRA active).
TRAIN_CASES = [
    dict(
        GRALORA,
        name="gralora_sgd",
        model="MLP",
        optimizer="sgd",
        lr=0.1,
        steps=5,
        config=dict(target_modules=["lin0", "lin1"], r=4, gralora_k=2, hybrid_r=2, alpha=6, gralora_dropout=0.1),
    ),
    dict(
        GRALORA,
        name="gralora_conv1d_adamw",
        model="MLPConv1D",
        optimizer="adamw",
        lr=0.01,
        steps=4,
        config=dict(target_modules=["c_fc", "c_proj"], r=2, gralora_k=2, alpha=2, init_weights=False),
    ),
]

# adapter_config.json files written by PEFT.
CONFIG_CASES = [
    dict(name="gralora_defaults", method="GRALORA", kwargs=dict()),
    dict(
        name="gralora_full",
        method="GRALORA",
        kwargs=dict(
            r=16,
            hybrid_r=4,
            alpha=32.5,
            gralora_dropout=0.05,
            gralora_k=4,
            target_modules=["c_attn"],
            fan_in_fan_out=True,
            init_weights=False,
            layers_to_transform=[0, 1],
            layers_pattern="h",
            bias="gralora_only",
            modules_to_save=["score"],
            task_type="SEQ_CLS",
            base_model_name_or_path="org/gpt2",
        ),
    ),
    dict(name="gralora_regex", method="GRALORA", kwargs=dict(target_modules=r".*\.(q|v)_proj")),
]
