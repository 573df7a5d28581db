"""Super-Tuning rows of the method parity matrix (see gen_methods.py for what each table means)."""

# Super-Tuning on nn.Linear (PEFT refuses GPT-2's Conv1D and every other layer type): the support of the
# largest (select_top) or smallest magnitudes at several sparsities, PEFT's default 0.99 on the 10x10 DeepMLP
# layers (one entry each), the Supra LoRA pair (default alpha = 2r, a given alpha, dropout), several active
# adapters composed into one weight plus their pairs, modules_to_save, regex selection, a random init, and
# save_precomputed_indices=False (no indices in the file: both sides recompute them from the base weight).
ST = dict(method="SUPERTUNING")
CASES = [
    dict(ST, name="supertuning_mlp", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"], sparsity=0.9)}),
    dict(ST, name="supertuning_default_sparsity", model="DeepMLP", adapters={"default": dict(target_modules=["lin0", "lin1"])}),
    dict(
        ST,
        name="supertuning_bottom",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], sparsity=0.75, select_top=False)},
    ),
    dict(ST, name="supertuning_supra", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"], sparsity=0.8, r=2)}),
    dict(
        ST,
        name="supertuning_supra_alpha_dropout",
        model="DeepMLP",
        adapters={
            "default": dict(target_modules=r"layers\.[02]\.lin[01]|out", sparsity=0.5, r=3, lora_alpha=5.0, lora_dropout=0.1)
        },
    ),
    dict(
        ST,
        name="supertuning_two_active",
        model="MLP",
        adapters={
            "first": dict(target_modules=["lin0", "lin1"], sparsity=0.9, r=2),
            "second": dict(target_modules=["lin0"], sparsity=0.6, select_top=False),
        },
        active=["second", "first"],
    ),
    dict(
        ST,
        name="supertuning_three_active",
        model="DeepMLP",
        adapters={
            "a": dict(target_modules=["lin0"], sparsity=0.7, r=1),
            "b": dict(target_modules=["lin0", "out"], sparsity=0.5),
            "c": dict(target_modules=["lin0", "lin1"], sparsity=0.9, r=2, lora_alpha=3),
        },
        active=["a", "b", "c"],
    ),
    dict(
        ST,
        name="supertuning_modules_to_save",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0"], sparsity=0.95, modules_to_save=["lin1"])},
    ),
    dict(
        ST,
        name="supertuning_random_init",
        model="MLP",
        perturb=0.0,
        adapters={"default": dict(target_modules=["lin0", "lin1"], sparsity=0.5, r=4, init_weights=False)},
    ),
    dict(
        ST,
        name="supertuning_no_saved_indices",
        model="MLP",
        adapters={
            "default": dict(target_modules=["lin0", "lin1"], sparsity=0.85, r=2, save_precomputed_indices=False),
            "other": dict(target_modules=["lin0"], sparsity=0.3, save_precomputed_indices=False),
        },
        active=["default", "other"],
    ),
]

# Same-seed initialisation: base model and adapter created under torch.manual_seed(0).
INIT_CASES = [
    dict(ST, name="supertuning_default", model="DeepMLP", config=dict(target_modules=["lin0", "lin1"])),
    dict(ST, name="supertuning_random", model="MLP", config=dict(target_modules=["lin0", "lin1"], sparsity=0.5, init_weights=False)),
    dict(ST, name="supertuning_supra_init", model="MLP", config=dict(target_modules=["lin0", "lin1"], sparsity=0.9, r=3)),
    dict(
        ST,
        name="supertuning_supra_random",
        model="DeepMLP",
        config=dict(target_modules=["lin1", "out"], sparsity=0.2, select_top=False, r=2, lora_alpha=1.5, init_weights=False),
    ),
    dict(ST, name="supertuning_no_saved_indices", model="MLP", config=dict(target_modules=["lin0"], sparsity=0.9, save_precomputed_indices=False)),
]

# A few optimizer steps from a saved initial adapter (the test models' dropout active, and the Supra
# pair's in one row).
TRAIN_CASES = [
    dict(ST, name="supertuning_sgd", model="MLP", optimizer="sgd", lr=0.5, steps=5, config=dict(target_modules=["lin0", "lin1"], sparsity=0.8)),
    dict(
        ST,
        name="supertuning_supra_adamw",
        model="DeepMLP",
        optimizer="adamw",
        lr=0.01,
        steps=4,
        config=dict(target_modules=["lin0", "out"], sparsity=0.6, r=2, lora_dropout=0.2),
    ),
    dict(
        ST,
        name="supertuning_bottom_adamw",
        model="MLP",
        optimizer="adamw",
        lr=0.01,
        steps=3,
        config=dict(target_modules=["lin0"], sparsity=0.5, select_top=False, r=1, init_weights=False),
    ),
]

# adapter_config.json files written by PEFT, parsed and written back byte for byte.
CONFIG_CASES = [
    dict(ST, name="supertuning_defaults", kwargs=dict()),
    dict(ST, name="supertuning_supra_default_alpha", kwargs=dict(target_modules=["q_proj", "v_proj"], r=8)),
    dict(
        ST,
        name="supertuning_full",
        kwargs=dict(
            target_modules=["q_proj", "v_proj"],
            modules_to_save=["score"],
            sparsity=0.9,
            select_top=False,
            r=4,
            lora_alpha=16.0,
            lora_dropout=0.05,
            init_weights=False,
            save_precomputed_indices=False,
            task_type="SEQ_CLS",
            base_model_name_or_path="org/llama",
            inference_mode=True,
        ),
    ),
    dict(ST, name="supertuning_integer_numbers", kwargs=dict(target_modules=r".*\.(q|v)_proj", sparsity=0, r=2, lora_alpha=3, lora_dropout=0)),
]
