"""GLoRA rows of the method parity matrix (see gen_methods.py for what each table means)."""

# GLoRA on nn.Linear (PEFT refuses GPT-2's Conv1D and every other layer type): each parameterisation of
# A/B ("lora", "vector", "constant", "none"), C ("lora", "vector", "none") and D/E ("vector", "constant",
# "none"), layer selection by suffix and regex, modules_to_save, the bias option, several active adapters
# (merged together in one call from the original weights, unmerged all at once by PEFT's division), a
# random init. No row here sets `bias`: PEFT saves the base biases after its merge and unmerge, and its
# unmerge divides (`b₀ = (b − ΣE − ΣW₀·C) / (1 + ΣD)`), so the saved biases are no longer the base's.
# The bias options are covered by the init rows (which tensors train, what is saved); the training rows
# have none, as the harness's optimizer holds the adapter's tensors only.
GLORA = dict(method="GLORA")
CASES = [
    dict(GLORA, name="glora_mlp", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"], r=4)}),
    dict(
        GLORA,
        name="glora_vectors",
        model="DeepMLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=2, config_A_B="vector", config_C="vector", config_D_E="vector")},
    ),
    dict(
        GLORA,
        name="glora_constants",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], config_A_B="constant", config_C="none", config_D_E="constant")},
    ),
    dict(
        GLORA,
        name="glora_no_weight_terms",
        model="MLP",
        adapters={"default": dict(target_modules=r"lin\d", r=3, config_A_B="none", config_C="lora", config_D_E="none")},
    ),
    dict(
        GLORA,
        name="glora_regex_selection",
        model="DeepMLP",
        adapters={
            "default": dict(
                target_modules=r"layers\.[12]\.lin0|out",
                modules_to_save=["layers.3.lin1"],
                r=2,
                config_A_B="lora",
                config_C="vector",
                config_D_E="vector",
            )
        },
    ),
    dict(
        GLORA,
        name="glora_two_active",
        model="MLP",
        adapters={
            "alpha": dict(target_modules=["lin0", "lin1"], r=2),
            "gamma": dict(target_modules=["lin0"], r=3, config_A_B="vector", config_C="lora", config_D_E="vector"),
        },
        active=["gamma", "alpha"],
    ),
    dict(
        GLORA,
        name="glora_three_active",
        model="DeepMLP",
        adapters={
            "a": dict(target_modules=["lin0"], config_A_B="constant", config_C="vector", config_D_E="constant"),
            "b": dict(target_modules=["lin0", "out"], r=2, config_A_B="none", config_C="none", config_D_E="vector"),
            "c": dict(target_modules=["lin0", "lin1"], r=1),
        },
        active=["a", "b", "c"],
    ),
    dict(
        GLORA,
        name="glora_random_init",
        model="MLP",
        perturb=0.0,
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=4, config_D_E="vector", init_weights=False)},
    ),
]

# Same-seed initialisation: base model and adapter created under torch.manual_seed(0).
INIT_CASES = [
    dict(GLORA, name="glora_default", model="MLP", config=dict(target_modules=["lin0", "lin1"], r=4)),
    dict(
        GLORA,
        name="glora_random_vectors",
        model="DeepMLP",
        config=dict(target_modules="all-linear", r=2, config_A_B="vector", config_C="vector", config_D_E="vector", init_weights=False),
    ),
    dict(
        GLORA,
        name="glora_random_lora_constants",
        model="MLP",
        config=dict(target_modules=["lin0", "lin1"], r=3, config_A_B="lora", config_C="lora", config_D_E="constant", init_weights=False),
    ),
    dict(
        GLORA,
        name="glora_random_scalars",
        model="MLP",
        config=dict(target_modules=["lin0"], config_A_B="constant", config_C="none", config_D_E="constant", init_weights=False),
    ),
    dict(GLORA, name="glora_bias_only", model="DeepMLP", config=dict(target_modules=["lin0"], r=2, bias="glora_only")),
    dict(GLORA, name="glora_bias_all", model="MLP", config=dict(target_modules=["lin1"], r=2, config_D_E="vector", bias="all", init_weights=False)),
]

# Training: the same optimizer steps in PEFT and in Rust (the test models' dropout active; GLoRA has none).
TRAIN_CASES = [
    dict(GLORA, name="glora_sgd", model="MLP", optimizer="sgd", lr=0.1, steps=5, config=dict(target_modules=["lin0", "lin1"], r=2)),
    dict(
        GLORA,
        name="glora_vectors_adamw",
        model="DeepMLP",
        optimizer="adamw",
        lr=0.01,
        steps=4,
        config=dict(target_modules=["lin0", "out"], config_A_B="vector", config_C="vector", config_D_E="vector", init_weights=False),
    ),
    dict(
        GLORA,
        name="glora_constants_adamw",
        model="MLP",
        optimizer="adamw",
        lr=0.01,
        steps=4,
        config=dict(target_modules=["lin0", "lin1"], r=2, config_A_B="constant", config_C="lora", config_D_E="constant"),
    ),
]

# adapter_config.json files written by PEFT.
CONFIG_CASES = [
    dict(name="glora_defaults", method="GLORA", kwargs=dict()),
    dict(
        name="glora_full",
        method="GLORA",
        kwargs=dict(
            r=16,
            target_modules=["q_proj", "v_proj"],
            bias="glora_only",
            modules_to_save=["score"],
            config_A_B="vector",
            config_C="none",
            config_D_E="vector",
            init_weights=False,
            task_type="SEQ_CLS",
            base_model_name_or_path="org/llama",
            inference_mode=True,
        ),
    ),
    dict(name="glora_regex", method="GLORA", kwargs=dict(target_modules=r".*\.(q|v)_proj", config_A_B="none")),
]
