"""VB-LoRA rows of the method parity matrix (see gen_methods.py for what each table means)."""

# VB-LoRA on nn.Linear and GPT-2's Conv1D (fan_in_fan_out): banks of different sizes and top-k, vector
# lengths 2 and 5, layer selection, modules_to_save, dropout (inactive in evaluation). One adapter per
# model: PEFT 0.21.2 replaces the shared bank dict when a second VB-LoRA adapter is added (the first
# adapter's layers then read the second's bank), which peft-rs does not reproduce.
VBLORA = dict(method="VBLORA")
CASES = [
    dict(
        VBLORA,
        name="vblora_mlp",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=2, num_vectors=8, vector_length=2)},
    ),
    dict(
        VBLORA,
        name="vblora_deep_l5",
        model="DeepMLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=3, num_vectors=6, vector_length=5, topk=3)},
    ),
    dict(
        VBLORA,
        name="vblora_conv1d",
        model="MLPConv1D",
        adapters={"default": dict(target_modules=["c_fc", "c_proj"], r=4, num_vectors=10, vector_length=2)},
    ),
    dict(
        VBLORA,
        name="vblora_regex_dropout",
        model="MLP",
        adapters={"default": dict(target_modules=r"lin\d", r=2, num_vectors=5, vector_length=2, topk=1, vblora_dropout=0.2)},
    ),
    # The inference-only file form: top-k indices (uint8) and weights instead of the logits. The outputs
    # of the reloaded adapter (logits rebuilt as log-weights) equal the original's to rounding.
    dict(
        VBLORA,
        name="vblora_topk_only",
        model="MLP",
        atol=1e-6,
        adapters={"default": dict(target_modules=["lin0", "lin1"], r=2, num_vectors=8, vector_length=2, topk=3, save_only_topk_weights=True)},
    ),
    dict(
        VBLORA,
        name="vblora_deep_selection",
        model="DeepMLP",
        adapters={
            "default": dict(
                target_modules=["lin0", "lin1"],
                layers_to_transform=[0, 3],
                layers_pattern="layers",
                exclude_modules=["layers.3.lin1"],
                # (not "out": PEFT matches modules_to_save as a plain suffix, and `vblora_dropout` ends in "out")
                modules_to_save=["layers.2.lin1"],
                r=2,
                num_vectors=4,
                vector_length=5,
            )
        },
    ),
]

# Same-seed initialisation: base model and adapter created under torch.manual_seed(0) (the bank is drawn
# again for every targeted layer, as PEFT draws it).
INIT_CASES = [
    dict(VBLORA, name="vblora_default", model="MLP", config=dict(target_modules=["lin0", "lin1"], num_vectors=16, vector_length=2)),
    dict(
        VBLORA,
        name="vblora_deep",
        model="DeepMLP",
        config=dict(target_modules=["lin0", "lin1"], r=2, num_vectors=7, vector_length=5, topk=3, init_logits_std=0.5, init_vector_bank_bound=0.3),
    ),
]

# Training: the same optimizer steps in PEFT and in Rust (the bank trains with the logits).
TRAIN_CASES = [
    dict(
        VBLORA,
        name="vblora_sgd",
        model="MLP",
        optimizer="sgd",
        lr=0.5,
        steps=5,
        config=dict(target_modules=["lin0", "lin1"], r=2, num_vectors=8, vector_length=2, init_vector_bank_bound=0.5, vblora_dropout=0.1),
    ),
    dict(
        VBLORA,
        name="vblora_conv1d_adamw",
        model="MLPConv1D",
        optimizer="adamw",
        lr=0.01,
        steps=4,
        config=dict(target_modules=["c_fc", "c_proj"], r=2, num_vectors=6, vector_length=2, topk=3, init_vector_bank_bound=0.5),
    ),
]

# adapter_config.json files written by PEFT.
CONFIG_CASES = [
    dict(name="vblora_defaults", method="VBLORA", kwargs=dict()),
    dict(
        name="vblora_full",
        method="VBLORA",
        kwargs=dict(
            r=8,
            num_vectors=90,
            vector_length=64,
            topk=3,
            target_modules=["q_proj", "v_proj"],
            exclude_modules=["lm_head"],
            vblora_dropout=0.05,
            fan_in_fan_out=False,
            bias="vblora_only",
            modules_to_save=["score"],
            init_vector_bank_bound=0.05,
            init_logits_std=0.2,
            save_only_topk_weights=True,
            layers_to_transform=[0, 1],
            layers_pattern="layers",
            task_type="SEQ_CLS",
            base_model_name_or_path="org/llama",
        ),
    ),
    dict(name="vblora_regex", method="VBLORA", kwargs=dict(target_modules=r".*\.(q|v)_proj")),
]
