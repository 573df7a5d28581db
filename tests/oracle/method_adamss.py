"""AdaMSS rows of the method parity matrix (see gen_methods.py for what each table means)."""

# AdaMSS on nn.Linear (PEFT refuses every other layer type). Each layer's SVD is seeded (random_seed) and
# its clusters come from scikit-learn's KMeans (random_state fixed by PEFT), so loading rebuilds the same
# subspaces; the Gram-matrix SVDs that start each A_i draw from the global generator (the init rows).
ADAMSS = dict(method="ADAMSS")
CASES = [
    dict(ADAMSS, name="adamss_mlp", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"], r=6, num_subspaces=3)}),
    dict(ADAMSS, name="adamss_defaults", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"])}),
    dict(
        ADAMSS,
        name="adamss_rank2",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0"], r=8, num_subspaces=4, subspace_rank=2, random_seed=3)},
    ),
    dict(
        ADAMSS,
        name="adamss_deep_regex",
        model="DeepMLP",
        adapters={"default": dict(target_modules=r"layers\.[12]\.lin0|out", modules_to_save=["layers.3.lin1"], r=5, num_subspaces=2, subspace_rank=3)},
    ),
    dict(
        ADAMSS,
        name="adamss_dynamic_rank",
        model="DeepMLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=7, num_subspaces=3, subspace_rank=4, use_dynamic_rank=True, svd_threshold=0.3)},
    ),
    dict(
        ADAMSS,
        name="adamss_two_active",
        model="MLP",
        adapters={
            "alpha": dict(target_modules=["lin0", "lin1"], r=4, num_subspaces=2),
            "gamma": dict(target_modules=["lin0"], r=7, num_subspaces=5, subspace_rank=2, random_seed=11),
        },
        active=["gamma", "alpha"],
    ),
    dict(ADAMSS, name="adamss_random_init", model="MLP", perturb=0.0, adapters={"default": dict(target_modules=["lin0", "lin1"], r=5, init_weights=None)}),
    dict(ADAMSS, name="adamss_layers", model="DeepMLP", adapters={"default": dict(target_modules=["lin1"], layers_to_transform=[0, 2], layers_pattern="layers", r=4)}),
]

# Same-seed initialisation: base model and adapter created under torch.manual_seed(0).
INIT_CASES = [
    dict(ADAMSS, name="adamss_default", model="MLP", config=dict(target_modules=["lin0", "lin1"], r=8)),
    dict(ADAMSS, name="adamss_all_linear", model="DeepMLP", config=dict(target_modules="all-linear", r=6, num_subspaces=4, subspace_rank=2)),
    dict(ADAMSS, name="adamss_dynamic", model="DeepMLP", config=dict(target_modules=["lin0"], r=10, num_subspaces=3, subspace_rank=3, use_dynamic_rank=True)),
    dict(ADAMSS, name="adamss_rank0", model="MLP", config=dict(target_modules=["lin0"], r=4, num_subspaces=3, subspace_rank=0)),
    dict(ADAMSS, name="adamss_random", model="MLP", config=dict(target_modules=["lin0"], r=5, num_subspaces=2, init_weights=None, random_seed=5)),
]

# A few optimizer steps from a saved initial adapter.
TRAIN_CASES = [
    dict(ADAMSS, name="adamss_sgd", model="MLP", optimizer="sgd", lr=0.1, steps=5, config=dict(target_modules=["lin0", "lin1"], r=6, num_subspaces=3)),
    dict(ADAMSS, name="adamss_adamw", model="DeepMLP", optimizer="adamw", lr=0.01, steps=4, config=dict(target_modules=["lin0", "out"], r=5, num_subspaces=2, subspace_rank=2)),
]

# adapter_config.json files written by PEFT, parsed and written back byte for byte.
CONFIG_CASES = [
    dict(name="adamss_defaults", method="ADAMSS", kwargs=dict()),
    dict(
        name="adamss_full",
        method="ADAMSS",
        kwargs=dict(
            r=64,
            num_subspaces=8,
            subspace_rank=2,
            target_modules=["q_proj", "v_proj"],
            init_weights=None,
            modules_to_save=["score"],
            layers_to_transform=[0, 1],
            layers_pattern="layers",
            use_asa=True,
            asa_target_subspaces=20,
            init_warmup=10,
            final_warmup=200,
            mask_interval=20,
            asa_importance_beta=0.9,
            asa_uncertainty_beta=0.8,
            asa_schedule_exponent=2,
            use_dynamic_rank=True,
            svd_threshold=0.05,
            random_seed=7,
            task_type="SEQ_CLS",
            base_model_name_or_path="org/llama",
            inference_mode=True,
        ),
    ),
    dict(name="adamss_regex", method="ADAMSS", kwargs=dict(target_modules=r".*\.(q|v)_proj", init_weights=False)),
]
