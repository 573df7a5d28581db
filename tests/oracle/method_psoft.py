"""PSOFT rows of the method parity matrix (see gen_methods.py for what each table means)."""

# PSOFT on nn.Linear: the frozen principal subspace from the weight's SVD (full, or torch.svd_lowrank under
# random_seed), psoft_init and pissa_init splits, the Cayley transform (exact solve, or the Neumann series
# with and without the norm bound; 3 and 4 terms give the same series in PEFT), free R, the magnitude
# vectors on and off, psoft_alpha, dropout, several adapters, layer selection, modules_to_save, random R.
PSOFT = dict(method="PSOFT")
CASES = [
    dict(PSOFT, name="psoft_mlp", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"], r=2)}),
    dict(
        PSOFT,
        name="psoft_pissa_alpha",
        model="DeepMLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=4, ab_svd_init="pissa_init", psoft_alpha=8, psoft_dropout=0.1)},
    ),
    dict(
        PSOFT,
        name="psoft_lowrank",
        model="DeepMLP",
        adapters={"default": dict(target_modules=["lin0", "out"], r=2, psoft_svd="lowrank", psoft_svd_lowrank_niter=3, random_seed=5)},
    ),
    dict(
        PSOFT,
        name="psoft_free_r_no_mags",
        model="MLP",
        adapters={"default": dict(target_modules=r"lin\d", r=2, psoft_orth=False, psoft_mag_a=False, psoft_mag_b=False)},
    ),
    dict(
        PSOFT,
        name="psoft_neumann",
        model="DeepMLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=5, use_cayley_neumann=True, num_cayley_neumann_terms=6)},
    ),
    dict(
        PSOFT,
        name="psoft_neumann_bounded",
        model="DeepMLP",
        adapters={
            "default": dict(
                target_modules=["lin0", "lin1"], r=5, use_cayley_neumann=True, num_cayley_neumann_terms=4, cayley_neumann_eps=0.3
            )
        },
    ),
    dict(
        PSOFT,
        name="psoft_two_active",
        model="DeepMLP",
        adapters={
            "alpha": dict(target_modules=["lin0", "out"], r=2),
            "gamma": dict(target_modules=["lin0"], r=3, psoft_mag_a=False, use_cayley_neumann=True, num_cayley_neumann_terms=3),
        },
        active=["gamma", "alpha"],
    ),
    dict(
        PSOFT,
        name="psoft_deep_selection",
        model="DeepMLP",
        adapters={
            "default": dict(
                target_modules=["lin0", "lin1"],
                layers_to_transform=[1, 3],
                layers_pattern="layers",
                exclude_modules=["layers.3.lin1"],
                modules_to_save=["layers.3.lin1"],
                r=3,
            )
        },
    ),
    dict(
        PSOFT,
        name="psoft_random_init",
        model="DeepMLP",
        perturb=0.0,
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=4, init_weights=False)},
    ),
    dict(
        PSOFT,
        name="psoft_random_free_r",
        model="DeepMLP",
        perturb=0.0,
        adapters={"default": dict(target_modules=["lin0"], r=4, init_weights=False, psoft_orth=False)},
    ),
]

# Same-seed initialisation: base model and adapter created under torch.manual_seed(0).
INIT_CASES = [
    dict(PSOFT, name="psoft_default", model="MLP", config=dict(target_modules=["lin0", "lin1"], r=2)),
    dict(PSOFT, name="psoft_random", model="DeepMLP", config=dict(target_modules="all-linear", r=2, init_weights=False)),
    dict(PSOFT, name="psoft_lowrank_init", model="DeepMLP", config=dict(target_modules=["lin0"], r=3, psoft_svd="lowrank", init_weights=False, psoft_orth=False)),
]

# Training: the same optimizer steps in PEFT and in Rust (the test models' dropout and PSOFT's active).
TRAIN_CASES = [
    dict(PSOFT, name="psoft_sgd", model="MLP", optimizer="sgd", lr=0.5, steps=5, config=dict(target_modules=["lin0", "lin1"], r=2, psoft_dropout=0.1)),
    dict(
        PSOFT,
        name="psoft_neumann_adamw",
        model="DeepMLP",
        optimizer="adamw",
        lr=0.01,
        steps=4,
        config=dict(target_modules=["lin0", "out"], r=2, use_cayley_neumann=True, init_weights=False),
    ),
]

# adapter_config.json files written by PEFT.
CONFIG_CASES = [
    dict(name="psoft_defaults", method="PSOFT", kwargs=dict()),
    dict(
        name="psoft_full",
        method="PSOFT",
        kwargs=dict(
            r=16,
            target_modules=["q_proj", "v_proj"],
            exclude_modules=["lm_head"],
            psoft_alpha=64,
            psoft_dropout=0.05,
            ab_svd_init="pissa_init",
            psoft_svd="lowrank",
            psoft_svd_lowrank_niter=4,
            random_seed=3,
            psoft_orth=False,
            psoft_mag_b=False,
            psoft_mag_a=True,
            use_cayley_neumann=True,
            num_cayley_neumann_terms=7,
            cayley_neumann_eps=0.5,
            init_weights=False,
            layers_to_transform=[0, 1],
            layers_pattern="layers",
            modules_to_save=["score"],
            task_type="SEQ_CLS",
            base_model_name_or_path="org/llama",
        ),
    ),
    dict(name="psoft_regex", method="PSOFT", kwargs=dict(target_modules=r".*\.(q|v)_proj", num_cayley_neumann_terms=3)),
]
