"""OSF rows of the method parity matrix (see gen_methods.py for what each table means).

OSF adapts nn.Linear only (PEFT leaves Conv1D, embeddings and convolutions unadapted without a word;
peft-rs refuses them, see crates/peft-osf). The rows cover both non-square cases (lin0 20x10 keeps U_high,
lin1 2x20 keeps V_high), square layers (DeepMLP's 10x10 blocks, projected through the low init),
`effective_rank` as an integer, a fraction and the default half, `rank_pattern` (regex search, first
match wins), a preserved rank equal to the full rank (nothing left to train), several adapters (only the
first active one acts), modules_to_save and a random init. PEFT's OSF merges but cannot unmerge: the output
rows say merge="no_unmerge" (merged and merge_and_unload outputs, no unmerge). The training rows check the
gradient projection.
"""

OSF = dict(method="OSF")
CASES = [
    dict(OSF, name="osf_mlp", model="MLP", merge="no_unmerge", adapters={"default": dict(target_modules=["lin0", "lin1"])}),
    dict(
        OSF,
        name="osf_square_fraction",
        model="DeepMLP",
        merge="no_unmerge",
        adapters={"default": dict(target_modules="all-linear", effective_rank=0.6)},
    ),
    dict(
        OSF,
        name="osf_rank_pattern",
        model="DeepMLP",
        merge="no_unmerge",
        adapters={
            "default": dict(
                target_modules=["lin0", "lin1", "out"],
                effective_rank=2,
                rank_pattern={r"layers\.1": 0.5, "lin1": 7, "out": 1.0},
            )
        },
    ),
    dict(
        OSF,
        name="osf_two_adapters",
        model="MLP",
        merge="no_unmerge",
        adapters={
            "alpha": dict(target_modules=["lin0", "lin1"], effective_rank=4),
            "beta": dict(target_modules=["lin0"], effective_rank=0.5),
        },
        active=["beta", "alpha"],
    ),
    dict(
        OSF,
        name="osf_modules_to_save",
        model="MLP",
        merge="no_unmerge",
        adapters={"default": dict(target_modules=["lin0"], effective_rank=3, modules_to_save=["lin1"])},
    ),
    dict(
        OSF,
        name="osf_random_init",
        model="MLP",
        merge="no_unmerge",
        perturb=0.0,
        adapters={"default": dict(target_modules=["lin0", "lin1"], effective_rank=6, init_weights=False)},
    ),
]

# Same-seed initialisation: base model and adapter created under torch.manual_seed(0).
INIT_CASES = [
    dict(OSF, name="osf_default", model="MLP", config=dict(target_modules=["lin0", "lin1"])),
    dict(OSF, name="osf_all_linear_by_default", model="DeepMLP", config=dict(effective_rank=3)),
    dict(OSF, name="osf_random", model="MLP", config=dict(target_modules=["lin0", "lin1"], effective_rank=0.5, init_weights=False)),
    dict(OSF, name="osf_modules_to_save_init", model="MLP", config=dict(target_modules=["lin0"], modules_to_save=["lin1"])),
]

# A few optimizer steps from a saved initial adapter: PEFT's gradient hooks project U_low's and V_low's
# gradients; the same steps here go through the libtorch hook.
TRAIN_CASES = [
    dict(OSF, name="osf_sgd", model="MLP", optimizer="sgd", lr=0.1, steps=5, config=dict(target_modules=["lin0", "lin1"], effective_rank=3)),
    dict(OSF, name="osf_square_adamw", model="DeepMLP", optimizer="adamw", lr=0.01, steps=4, config=dict(target_modules="all-linear", effective_rank=0.7)),
    dict(
        OSF,
        name="osf_pattern_adamw",
        model="MLP",
        optimizer="adamw",
        lr=0.01,
        steps=4,
        config=dict(target_modules=["lin0", "lin1"], rank_pattern={"lin1": 1}, init_weights=False),
    ),
]

# adapter_config.json files written by PEFT.
CONFIG_CASES = [
    dict(name="osf_defaults", method="OSF", kwargs=dict()),
    dict(
        name="osf_full",
        method="OSF",
        kwargs=dict(
            effective_rank=0.5,
            target_modules=["q_proj", "v_proj", "q_proj"],
            rank_pattern={r"layers\.0\.": 4, "v_proj": 0.25},
            init_weights=False,
            modules_to_save=["score"],
            target_svd_config={"lin0.weight": 8},
            task_type="SEQ_CLS",
            base_model_name_or_path="org/llama",
            inference_mode=True,
        ),
    ),
    dict(name="osf_int_rank", method="OSF", kwargs=dict(effective_rank=16, target_modules="all-linear")),
    dict(name="osf_float_one", method="OSF", kwargs=dict(effective_rank=1.0, target_modules=r".*\.(q|v)_proj")),
]
