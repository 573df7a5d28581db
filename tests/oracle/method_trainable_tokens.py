"""Trainable-tokens rows of the method parity matrix (see gen_methods.py for what each table means)."""

# TRAINABLE_TOKENS (the rows are tokens the test input contains, see models.example_input): rows of an
# embedding trained in full (the padding row among them), a target given as a
# regex, several active adapters (disjoint rows, applied together), one of several active, a linear head
# (PEFT computes it without its bias while unmerged), and a random init. Tied heads are covered by the
# tied-Llama row of gen_models.py.
EMB = dict(method="TRAINABLE_TOKENS", model="EmbMLP")
CASES = [
    dict(EMB, name="tt_emb", adapters={"default": dict(target_modules=["emb"], token_indices=[0, 3, 7, 29])}),
    dict(EMB, name="tt_emb_regex", adapters={"default": dict(target_modules="emb", token_indices=[5])}),
    dict(
        EMB,
        name="tt_two_active",
        adapters={
            "alpha": dict(target_modules=["emb"], token_indices=[6, 12]),
            "gamma": dict(target_modules=["emb"], token_indices=[9, 4, 11]),
        },
        active=["gamma", "alpha"],
    ),
    dict(
        EMB,
        name="tt_second_active",
        adapters={
            "alpha": dict(target_modules=["emb"], token_indices=[5, 7]),
            "gamma": dict(target_modules=["emb"], token_indices=[7, 13]),
        },
        active=["gamma"],
    ),
    dict(EMB, name="tt_linear_head", adapters={"default": dict(target_modules=["emb", "lin1"], token_indices=[0, 1])}),
    dict(
        EMB,
        name="tt_random_init",
        perturb=0.0,
        adapters={"default": dict(target_modules=["emb"], token_indices=[5, 10], init_weights=False)},
    ),
]

# Same-seed initialisation: base model and adapter created under torch.manual_seed(0).
INIT_CASES = [
    dict(EMB, name="tt_default", config=dict(target_modules=["emb"], token_indices=[1, 4])),
    dict(EMB, name="tt_random", config=dict(target_modules=["emb"], token_indices=[4, 20, 1], init_weights=False)),
]

# Training: the same optimizer steps in PEFT and in Rust (dropout of the test models active).
TRAIN_CASES = [
    dict(EMB, name="tt_sgd", optimizer="sgd", lr=0.5, steps=5, config=dict(target_modules=["emb"], token_indices=[4, 5, 6, 10, 12])),
    dict(EMB, name="tt_adamw", optimizer="adamw", lr=0.01, steps=4, config=dict(target_modules=["emb"], token_indices=[0, 7])),
]

# adapter_config.json files written by PEFT.
CONFIG_CASES = [
    dict(name="tt_defaults", method="TRAINABLE_TOKENS", kwargs=dict(token_indices=[1, 2])),
    dict(
        name="tt_full",
        method="TRAINABLE_TOKENS",
        kwargs=dict(
            token_indices=[32000, 32001],
            target_modules=["embed_tokens"],
            init_weights=False,
            task_type="CAUSAL_LM",
            base_model_name_or_path="org/llama",
        ),
    ),
    dict(name="tt_regex", method="TRAINABLE_TOKENS", kwargs=dict(token_indices=[5], target_modules="model.embed_tokens")),
]
