"""C3A rows of the method parity matrix (see gen_methods.py for what each table means)."""

# C3A on nn.Linear: block sizes (per module through block_size_pattern), every init scheme, layer
# selection, modules_to_save, several active adapters on square layers (PEFT feeds each the previous one's
# output), training through the FFTs.
C3A = dict(method="C3A")
CASES = [
    dict(C3A, name="c3a_mlp", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"], block_size=2)}),
    dict(
        C3A,
        name="c3a_pattern",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], block_size=5, block_size_pattern={"lin1": 2})},
    ),
    dict(
        C3A,
        name="c3a_deep_chain",
        model="DeepMLP",
        adapters={
            "alpha": dict(target_modules=["lin0", "lin1"], block_size=5),
            "gamma": dict(target_modules=["lin0"], block_size=2, init_weights="gaussian"),
        },
        active=["gamma", "alpha"],
    ),
    dict(
        C3A,
        name="c3a_deep_selection",
        model="DeepMLP",
        adapters={
            "default": dict(
                target_modules=["lin0", "lin1"],
                layers_to_transform=[0, 2],
                layers_pattern="layers",
                modules_to_save=["layers.3.lin1"],
                block_size=10,
                init_weights="kaiming_uniform",
            )
        },
    ),
    dict(C3A, name="c3a_zero_init", model="MLP", adapters={"default": dict(target_modules=["lin0"], block_size=5, init_weights=True)}),
    dict(
        C3A,
        name="c3a_gaussian_unperturbed",
        model="MLP",
        perturb=0.0,
        adapters={"default": dict(target_modules=["lin0", "lin1"], block_size=2, init_weights="gaussian")},
    ),
]

# Same-seed initialisation: base model and adapter created under torch.manual_seed(0).
INIT_CASES = [
    dict(C3A, name="c3a_xavier", model="MLP", config=dict(target_modules=["lin0", "lin1"], block_size=2)),
    dict(C3A, name="c3a_false", model="MLP", config=dict(target_modules=["lin0", "lin1"], block_size=2, init_weights=False)),
    dict(C3A, name="c3a_kaiming", model="DeepMLP", config=dict(target_modules=["lin0", "lin1"], block_size=5, init_weights="kaiming_uniform")),
    dict(C3A, name="c3a_gaussian", model="DeepMLP", config=dict(target_modules="all-linear", block_size=2, init_weights="gaussian")),
]

# Training: the same optimizer steps in PEFT (its hand-written backward) and in Rust (autograd of the FFTs).
TRAIN_CASES = [
    dict(C3A, name="c3a_sgd", model="MLP", optimizer="sgd", lr=0.5, steps=5, config=dict(target_modules=["lin0", "lin1"], block_size=2)),
    dict(C3A, name="c3a_adamw", model="DeepMLP", optimizer="adamw", lr=0.01, steps=4, config=dict(target_modules=["lin0", "lin1"], block_size=5)),
]

# adapter_config.json files written by PEFT.
CONFIG_CASES = [
    dict(name="c3a_defaults", method="C3A", kwargs=dict()),
    dict(
        name="c3a_full",
        method="C3A",
        kwargs=dict(
            block_size=64,
            target_modules=["q_proj", "v_proj"],
            bias="c3a_only",
            modules_to_save=["score"],
            layers_to_transform=[0, 1],
            layers_pattern="layers",
            block_size_pattern={"v_proj": 32},
            init_weights="gaussian",
            task_type="SEQ_CLS",
            base_model_name_or_path="org/llama",
        ),
    ),
    dict(name="c3a_regex_zero", method="C3A", kwargs=dict(target_modules=r".*\.(q|v)_proj", init_weights=True)),
]
