"""UniLoRA rows of the method parity matrix (see gen_methods.py for what each table means)."""

# UniLoRA on nn.Linear and GPT-2's Conv1D (fan_in_fan_out), the only layers PEFT adapts with it. θ is one
# vector per adapter; the index map comes from NumPy's default_rng(proj_seed), so the rows cover both of
# NumPy's `choice` algorithms (Floyd's, and the tail shuffle of theta_d_length > 10000), maps with fewer
# entries than θ (D < d: unused entries, scale 0), save_indices (maps and scales in the file) and without
# (drawn again on load), layer selection, modules_to_save, dropout, and two adapters on different layers
# (PEFT's status then lists both adapters on every layer, through the shared θ dict).
UNILORA = dict(method="UNILORA")
CASES = [
    dict(UNILORA, name="unilora_mlp", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"], r=2, theta_d_length=16)}),
    dict(
        UNILORA,
        name="unilora_save_indices",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=3, theta_d_length=32, save_indices=True, proj_seed=3)},
    ),
    dict(
        UNILORA,
        name="unilora_conv1d",
        model="MLPConv1D",
        adapters={"default": dict(target_modules=["c_fc", "c_proj"], r=4, theta_d_length=64, proj_seed=7)},
    ),
    dict(
        UNILORA,
        name="unilora_regex_sparse",
        model="MLP",
        adapters={"default": dict(target_modules=r"lin\d", r=2, theta_d_length=1000, unilora_dropout=0.2)},
    ),
    dict(
        UNILORA,
        name="unilora_deep_selection",
        model="DeepMLP",
        adapters={
            "default": dict(
                target_modules=["lin0", "lin1"],
                layers_to_transform=[0, 3],
                layers_pattern="layers",
                # (not "out": PEFT matches modules_to_save as a plain suffix, and `unilora_dropout` ends in "out")
                modules_to_save=["layers.2.lin1"],
                r=2,
                theta_d_length=50,
            )
        },
    ),
    dict(
        UNILORA,
        name="unilora_tail_shuffle",
        model="DeepMLP",
        adapters={"default": dict(target_modules="all-linear", r=8, theta_d_length=20000, proj_seed=11)},
    ),
    dict(
        UNILORA,
        name="unilora_two_active",
        model="MLP",
        adapters={
            "alpha": dict(target_modules=["lin0", "lin1"], r=2, theta_d_length=16, proj_seed=1),
            "beta": dict(target_modules=["lin1"], r=3, theta_d_length=8, save_indices=True),
        },
        active=["beta", "alpha"],
    ),
    dict(
        UNILORA,
        name="unilora_random_init",
        model="MLP",
        perturb=0.0,
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=2, theta_d_length=24, init_weights=False)},
    ),
]

# Same-seed initialisation: base model and adapter created under torch.manual_seed(0). With save_indices
# the files hold the index maps and scales, so these rows pin the NumPy replay directly.
INIT_CASES = [
    dict(UNILORA, name="unilora_default", model="MLP", config=dict(target_modules=["lin0", "lin1"])),
    dict(
        UNILORA,
        name="unilora_deep_indices",
        model="DeepMLP",
        config=dict(target_modules=["lin0", "lin1", "out"], r=3, theta_d_length=40, save_indices=True, proj_seed=5),
    ),
    dict(
        UNILORA,
        name="unilora_tail_shuffle_indices",
        model="DeepMLP",
        config=dict(target_modules="all-linear", r=8, theta_d_length=20000, save_indices=True, proj_seed=2),
    ),
    dict(
        UNILORA,
        name="unilora_conv1d_random",
        model="MLPConv1D",
        config=dict(target_modules=["c_fc", "c_proj"], r=2, theta_d_length=30, init_weights=False, save_indices=True),
    ),
    dict(UNILORA, name="unilora_bias_only", model="MLP", config=dict(target_modules=["lin0"], r=2, theta_d_length=8, bias="unilora_only")),
    dict(UNILORA, name="unilora_bias_all", model="MLP", config=dict(target_modules=["lin1"], r=2, theta_d_length=8, bias="all", init_theta_d_bound=0.5)),
]

# Training: the same optimizer steps in PEFT and in Rust (θ is all that trains; dropout draws in order).
TRAIN_CASES = [
    dict(UNILORA, name="unilora_sgd", model="MLP", optimizer="sgd", lr=0.1, steps=5, config=dict(target_modules=["lin0", "lin1"], r=2, theta_d_length=16)),
    dict(
        UNILORA,
        name="unilora_dropout_adamw",
        model="DeepMLP",
        optimizer="adamw",
        lr=0.01,
        steps=4,
        config=dict(target_modules=["lin0", "out"], r=2, theta_d_length=20, unilora_dropout=0.3, save_indices=True),
    ),
    dict(
        UNILORA,
        name="unilora_conv1d_adamw",
        model="MLPConv1D",
        optimizer="adamw",
        lr=0.01,
        steps=3,
        config=dict(target_modules=["c_fc", "c_proj"], r=3, theta_d_length=12, init_weights=False),
    ),
]

# adapter_config.json files written by PEFT.
CONFIG_CASES = [
    dict(name="unilora_defaults", method="UNILORA", kwargs=dict()),
    dict(
        name="unilora_full",
        method="UNILORA",
        kwargs=dict(
            r=8,
            proj_seed=0,
            theta_d_length=4096,
            target_modules=["q_proj", "v_proj"],
            unilora_dropout=0.05,
            fan_in_fan_out=True,
            bias="unilora_only",
            modules_to_save=["score"],
            init_theta_d_bound=0.1,
            init_weights=False,
            save_indices=True,
            layers_to_transform=[0, 2],
            layers_pattern="layers",
            task_type="SEQ_CLS",
            base_model_name_or_path="org/llama",
            inference_mode=True,
        ),
    ),
    dict(name="unilora_regex", method="UNILORA", kwargs=dict(target_modules=r".*\.(q|v)_proj", r=2)),
]
