"""RandLoRA rows of the method parity matrix (see gen_methods.py for what each table means)."""

# RandLoRA: shared bases sized by the largest targeted layer (dense bf16 draws, `sparse` and `very_sparse`
# ternary ones; saved as base_model.randlora_A / randlora_B plus a copy under every layer, or drawn again
# from projection_prng_key), layers wider than tall and the reverse (the factors swap), a number of bases
# that does not divide the layer, GPT-2 Conv1D, layer selection, several adapters, bias and
# modules_to_save. The default randlora_alpha (640) makes large updates; some rows use smaller ones.
RANDLORA = dict(method="RANDLORA")
CASES = [
    dict(RANDLORA, name="randlora_mlp", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"], r=4)}),
    dict(
        RANDLORA,
        name="randlora_sparse_dropout",
        model="MLP",
        adapters={
            "default": dict(
                target_modules=["lin0", "lin1"], r=3, sparse=True, randlora_dropout=0.1, projection_prng_key=5, randlora_alpha=12
            )
        },
    ),
    dict(
        RANDLORA,
        name="randlora_very_sparse",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=4, very_sparse=True, randlora_alpha=8.0)},
    ),
    dict(
        RANDLORA,
        name="randlora_conv1d",
        model="MLPConv1D",
        adapters={"default": dict(target_modules=["c_fc", "c_proj"], r=4, fan_in_fan_out=True, randlora_alpha=20)},
    ),
    dict(
        RANDLORA,
        name="randlora_deep_layers",
        model="DeepMLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=3, layers_to_transform=[0, 2], layers_pattern="layers")},
    ),
    dict(
        RANDLORA,
        name="randlora_two_active",
        model="MLP",
        adapters={
            "first": dict(target_modules=["lin0", "lin1"], r=4, randlora_alpha=16),
            "second": dict(target_modules=["lin0", "lin1"], r=4),
        },
        active=["first", "second"],
    ),
    # The second adapter on fewer layers: PEFT's shared BufferDict gives every layer's status a device entry
    # for both adapters, and PEFT's file for `gamma` carries copies of the bases under `out` too.
    dict(
        RANDLORA,
        name="randlora_two_active_disjoint",
        model="DeepMLP",
        adapters={
            "alpha": dict(target_modules=["lin0", "out"], r=2, randlora_alpha=4),
            "gamma": dict(target_modules=["lin0"], r=2, randlora_alpha=6),
        },
        active=["gamma", "alpha"],
    ),
    dict(
        RANDLORA,
        name="randlora_no_saved_projection",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=4, save_projection=False, projection_prng_key=11)},
    ),
    dict(RANDLORA, name="randlora_bias", model="MLP", adapters={"default": dict(target_modules=["lin0"], r=4, bias="randlora_only")}),
    dict(
        RANDLORA,
        name="randlora_modules_to_save",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0"], r=5, modules_to_save=["lin1"])},
    ),
    dict(
        RANDLORA,
        name="randlora_random_init",
        model="DeepMLP",
        perturb=0.0,
        adapters={"default": dict(target_modules=["lin0", "out"], r=3, init_weights=False, randlora_alpha=3)},
    ),
]

INIT_CASES = [
    dict(RANDLORA, name="randlora_default", model="MLP", config=dict(target_modules=["lin0", "lin1"], r=4)),
    dict(
        RANDLORA,
        name="randlora_random",
        model="DeepMLP",
        config=dict(target_modules="all-linear", r=3, init_weights=False, projection_prng_key=3),
    ),
    dict(RANDLORA, name="randlora_conv1d", model="MLPConv1D", config=dict(target_modules=["c_fc", "c_proj"], r=6)),
    dict(RANDLORA, name="randlora_sparse", model="MLP", config=dict(target_modules=["lin0", "lin1"], r=4, sparse=True)),
    dict(
        RANDLORA,
        name="randlora_very_sparse_bias_all",
        model="MLP",
        config=dict(target_modules=["lin0"], r=2, very_sparse=True, bias="all", projection_prng_key=9),
    ),
]

TRAIN_CASES = [
    dict(RANDLORA, name="randlora_sgd_dropout", model="MLP", optimizer="sgd", lr=0.05, steps=5,
         config=dict(target_modules=["lin0", "lin1"], r=4, randlora_dropout=0.2, randlora_alpha=8)),
    dict(RANDLORA, name="randlora_conv1d_adamw", model="MLPConv1D", optimizer="adamw", lr=0.01, steps=4,
         config=dict(target_modules=["c_fc", "c_proj"], r=3, fan_in_fan_out=True, randlora_alpha=6)),
    dict(RANDLORA, name="randlora_sparse_deep_adamw", model="DeepMLP", optimizer="adamw", lr=0.01, steps=3,
         config=dict(target_modules=["lin0", "lin1", "out"], r=4, sparse=True, randlora_alpha=4)),
]

CONFIG_CASES = [
    dict(RANDLORA, name="randlora_defaults", kwargs=dict()),
    dict(
        RANDLORA,
        name="randlora_full",
        kwargs=dict(
            r=16,
            target_modules=["q_proj", "v_proj"],
            projection_prng_key=42,
            save_projection=False,
            sparse=True,
            very_sparse=True,
            randlora_dropout=0.05,
            fan_in_fan_out=True,
            randlora_alpha=320.5,
            bias="randlora_only",
            modules_to_save=["score"],
            init_weights=False,
            layers_to_transform=[0, 1],
            layers_pattern="layers",
            task_type="CAUSAL_LM",
        ),
    ),
]
