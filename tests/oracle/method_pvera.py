"""PVeRA rows of the method parity matrix (see gen_methods.py for what each table means)."""

# PVeRA: VeRA's shared projections (pvera_A with 2r rows) and trained vectors; the mean path in evaluation,
# sampled codes with sample_at_inference from each layer's own seeded generator, and in training from the
# global stream; nn.Linear and GPT-2 Conv1D; projections saved or drawn again on load; several adapters
# sharing the first one's projections; bias, layer selection, modules_to_save, a random init.
PVERA = dict(method="PVERA")
CASES = [
    dict(PVERA, name="pvera_mlp", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"], r=4)}),
    dict(PVERA, name="pvera_conv1d", model="MLPConv1D", adapters={"default": dict(target_modules=["c_fc", "c_proj"], r=2)}),
    dict(
        PVERA,
        name="pvera_sampled",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=3, sample_at_inference=True, generator_seed=7)},
    ),
    dict(
        PVERA,
        name="pvera_two_active",
        model="DeepMLP",
        adapters={
            "alpha": dict(target_modules=["lin0", "out"], r=2, projection_prng_key=3),
            "gamma": dict(target_modules=["lin0"], r=2, projection_prng_key=3, d_initial=0.5),
        },
        active=["gamma", "alpha"],
    ),
    dict(
        PVERA,
        name="pvera_unsaved_projections",
        model="MLP",
        adapters={"default": dict(target_modules=r"lin\d", r=2, save_projection=False, projection_prng_key=11)},
    ),
    dict(PVERA, name="pvera_bias_all", model="MLP", adapters={"default": dict(target_modules=["lin0"], r=2, bias="all")}),
    dict(
        PVERA,
        name="pvera_deep_selection",
        model="DeepMLP",
        adapters={
            "default": dict(
                target_modules=["lin0", "lin1"],
                layers_to_transform=[1, 3],
                layers_pattern="layers",
                modules_to_save=["layers.3.lin1"],
                r=2,
            )
        },
    ),
    dict(
        PVERA,
        name="pvera_random_init",
        model="MLP",
        perturb=0.0,
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=4, init_weights=False)},
    ),
]

# Same-seed initialisation: base model and adapter created under torch.manual_seed(0).
INIT_CASES = [
    dict(PVERA, name="pvera_default", model="MLP", config=dict(target_modules=["lin0", "lin1"], r=2)),
    dict(PVERA, name="pvera_random", model="DeepMLP", config=dict(target_modules="all-linear", r=3, init_weights=False)),
]

# Training: the same optimizer steps in PEFT and in Rust (dropout and PVeRA's sampling active).
TRAIN_CASES = [
    dict(PVERA, name="pvera_sgd", model="MLP", optimizer="sgd", lr=0.5, steps=5, config=dict(target_modules=["lin0", "lin1"], r=2, pvera_dropout=0.1)),
    dict(
        PVERA,
        name="pvera_seeded_adamw",
        model="DeepMLP",
        optimizer="adamw",
        lr=0.01,
        steps=4,
        config=dict(target_modules=["lin0", "out"], r=2, generator_seed=5, d_initial=0.3),
    ),
]

# adapter_config.json files written by PEFT.
CONFIG_CASES = [
    dict(name="pvera_defaults", method="PVERA", kwargs=dict()),
    dict(
        name="pvera_full",
        method="PVERA",
        kwargs=dict(
            r=16,
            target_modules=["q_proj", "v_proj"],
            projection_prng_key=5,
            save_projection=True,
            pvera_dropout=0.05,
            d_initial=0.2,
            fan_in_fan_out=True,
            bias="pvera_only",
            modules_to_save=["score"],
            init_weights=False,
            layers_to_transform=[0, 1],
            layers_pattern="layers",
            sample_at_inference=True,
            generator_seed=3,
            task_type="SEQ_CLS",
            base_model_name_or_path="org/llama",
        ),
    ),
    dict(name="pvera_unsaved", method="PVERA", kwargs=dict(target_modules=r".*\.(q|v)_proj", save_projection=False)),
]
