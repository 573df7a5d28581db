"""BOFT rows of the method parity matrix (see gen_methods.py for what each table means).

Butterfly factors: PEFT 0.21.2 builds a rotation of several butterfly factors only through its optional
CUDA extension `fbd_cuda`; on a machine without it (this oracle's) it warns and silently uses one factor.
The extension's kernel only places each factor's blocks on a block diagonal (and its backward gathers
them back), so below it is replaced by the same placement with torch ops — for the adapters whose config
asks for more than one factor only, so every other row runs PEFT's own tensor path untouched. PEFT then
computes everything else (the butterfly permutations, the Cayley transforms, the products, the dropout)
itself. check_load.py (PEFT loading what peft-rs saved) runs without this patch, so rows with more than
one factor are in INIT_CASES and TRAIN_CASES (PEFT -> peft-rs) only.
"""

import torch

import peft.tuners.boft.layer as _boft


class _TorchFbd:
    """`fbd_cuda` with torch ops: (N, D, H, H) blocks -> (N, D*H, D*H) block diagonals, and back."""

    @staticmethod
    def forward(x):
        return [torch.stack([torch.block_diag(*torch.unbind(f)) for f in torch.unbind(x)])]

    @staticmethod
    def backward(grad, x):
        n, d, h, _ = x.shape
        blocks = [[grad[i, j * h : (j + 1) * h, j * h : (j + 1) * h] for j in range(d)] for i in range(n)]
        return [torch.stack([torch.stack(row) for row in blocks])]


_butterfly = {"on": False}


def _fbd_forward(ctx, x):
    ctx.save_for_backward(x)
    return _TorchFbd.forward(x)[0]


def _fbd_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return _TorchFbd.backward(grad, x)[0]


def _with_butterfly(update_layer):
    """`update_layer` seeing the extension exactly when the config asks for more than one factor."""

    def wrapped(self, adapter_name, config, **kwargs):
        _butterfly["on"] = config.boft_n_butterfly_factor > 1
        try:
            return update_layer(self, adapter_name, config, **kwargs)
        finally:
            _butterfly["on"] = False

    return wrapped


_boft.get_fbd_cuda = lambda: _TorchFbd if _butterfly["on"] else None
_boft.FastBlockDiag.forward = staticmethod(_fbd_forward)
_boft.FastBlockDiag.backward = staticmethod(_fbd_backward)
_boft.BOFTLayer.update_layer = _with_butterfly(_boft.BOFTLayer.update_layer)
_boft.Conv2d.update_layer = _with_butterfly(_boft.Conv2d.update_layer)

# MLP: lin0 10 -> 20, lin1 20 -> 2; DeepMLP: 10s; ConvNet: conv2d 2 x 3x3 = 18, conv1x1 8, lin 72 (grouped is
# refused, as PEFT refuses groups > 1).
CASES = [
    dict(name="boft_mlp", method="BOFT", model="MLP", adapters={"default": dict(target_modules=["lin0", "lin1"], boft_block_size=5)}),
    dict(
        name="boft_block_num",
        method="BOFT",
        model="MLP",
        adapters={"default": dict(target_modules=r"lin\d", boft_block_size=0, boft_block_num=2)},
    ),
    # boft_dropout acts in training only: these outputs are evaluations.
    dict(
        name="boft_dropout_eval",
        method="BOFT",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], boft_block_size=2, boft_dropout=0.5)},
    ),
    # conv2d: 9 blocks of 2, conv1x1: 4, lin: 36.
    dict(
        name="boft_convnet",
        method="BOFT",
        model="ConvNet",
        adapters={"default": dict(target_modules=["conv2d", "conv1x1", "lin"], boft_block_size=2)},
    ),
    # conv2d: 2 blocks of 9, conv1x1: 2 of 4, lin: 2 of 36.
    dict(
        name="boft_convnet_block_num",
        method="BOFT",
        model="ConvNet",
        adapters={"default": dict(target_modules=["conv2d", "conv1x1", "lin"], boft_block_size=0, boft_block_num=2)},
    ),
    dict(
        name="boft_two_active",
        method="BOFT",
        model="MLP",
        adapters={
            "alpha": dict(target_modules=["lin0", "lin1"], boft_block_size=5),
            "beta": dict(target_modules=["lin0"], boft_block_size=0, boft_block_num=5),
        },
        active=["alpha", "beta"],
    ),
    dict(
        name="boft_two_active_conv",
        method="BOFT",
        model="ConvNet",
        adapters={
            "alpha": dict(target_modules=["conv2d", "lin"], boft_block_size=6),
            "beta": dict(target_modules=["conv2d"], boft_block_size=3),
        },
        active=["alpha", "beta"],
    ),
    dict(
        name="boft_second_active",
        method="BOFT",
        model="MLP",
        adapters={
            "alpha": dict(target_modules=["lin0"], boft_block_size=5),
            "beta": dict(target_modules=["lin0", "lin1"], boft_block_size=10),
        },
        active=["beta"],
    ),
    dict(
        name="boft_deep_layers",
        method="BOFT",
        model="DeepMLP",
        adapters={
            "default": dict(
                target_modules=["lin0", "lin1"],
                layers_to_transform=[1, 3],
                layers_pattern="layers",
                boft_block_size=5,
            )
        },
    ),
    dict(
        name="boft_deep_exclude",
        method="BOFT",
        model="DeepMLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], exclude_modules=["layers.0.lin0"], boft_block_size=2)},
    ),
    dict(
        name="boft_modules_to_save",
        method="BOFT",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0"], boft_block_size=5, modules_to_save=["lin1"])},
    ),
    # fan_in_fan_out=True on nn.Linear: PEFT warns and saves False.
    dict(
        name="boft_bias_fan_in_fan_out",
        method="BOFT",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], boft_block_size=5, bias="boft_only", fan_in_fan_out=True)},
    ),
    dict(
        name="boft_random_init",
        method="BOFT",
        model="MLP",
        perturb=0.0,
        adapters={"default": dict(target_modules=["lin0", "lin1"], boft_block_size=5, init_weights=False)},
    ),
]

# Same-seed initialisation: base model and adapter created under torch.manual_seed(0).
INIT_CASES = [
    dict(name="boft_default", method="BOFT", model="MLP", config=dict(target_modules=["lin0", "lin1"], boft_block_size=5)),
    dict(
        name="boft_random",
        method="BOFT",
        model="MLP",
        config=dict(target_modules=["lin0", "lin1"], boft_block_size=0, boft_block_num=2, init_weights=False),
    ),
    dict(
        name="boft_random_conv",
        method="BOFT",
        model="ConvNet",
        config=dict(target_modules=["conv2d", "conv1x1", "lin"], boft_block_size=2, init_weights=False),
    ),
    # Two factors on lin1 (10 blocks of 2).
    dict(
        name="boft_random_butterfly",
        method="BOFT",
        model="MLP",
        config=dict(target_modules=["lin1"], boft_block_size=2, boft_n_butterfly_factor=2, init_weights=False),
    ),
    # Three factors: conv1x1 (4 blocks of 2), lin (36 blocks of 2).
    dict(
        name="boft_random_butterfly_conv",
        method="BOFT",
        model="ConvNet",
        config=dict(target_modules=["conv1x1", "lin"], boft_block_size=2, boft_n_butterfly_factor=3, init_weights=False),
    ),
    dict(name="boft_all_linear", method="BOFT", model="DeepMLP", config=dict(target_modules="all-linear", boft_block_size=5, bias="all")),
]

# Training: the same optimizer steps in PEFT and in Rust (dropout of the test models and BOFT's multiplicative
# dropout active: its draws, torch.randint then torch.randperm, come from the global generator).
TRAIN_CASES = [
    dict(name="boft_sgd", method="BOFT", model="MLP", optimizer="sgd", lr=0.5, steps=5, config=dict(target_modules=["lin0", "lin1"], boft_block_size=5)),
    dict(
        name="boft_dropout_sgd",
        method="BOFT",
        model="MLP",
        optimizer="sgd",
        lr=0.5,
        steps=4,
        config=dict(target_modules=["lin0", "lin1"], boft_block_size=2, boft_dropout=0.5),
    ),
    dict(
        name="boft_butterfly_dropout_adamw",
        method="BOFT",
        model="MLP",
        optimizer="adamw",
        lr=0.01,
        steps=4,
        config=dict(target_modules=["lin1"], boft_block_size=2, boft_n_butterfly_factor=2, boft_dropout=0.3),
    ),
    dict(
        name="boft_butterfly_block_num_sgd",
        method="BOFT",
        model="MLP",
        optimizer="sgd",
        lr=0.5,
        steps=3,
        config=dict(target_modules=["lin1"], boft_block_size=0, boft_block_num=2, boft_n_butterfly_factor=2),
    ),
    dict(
        name="boft_conv_adamw",
        method="BOFT",
        model="ConvNet",
        optimizer="adamw",
        lr=0.01,
        steps=4,
        config=dict(target_modules=["conv2d", "conv1x1", "lin"], boft_block_size=2, boft_dropout=0.2),
    ),
    dict(
        name="boft_butterfly_conv_adamw",
        method="BOFT",
        model="ConvNet",
        optimizer="adamw",
        lr=0.01,
        steps=3,
        config=dict(target_modules=["conv1x1", "lin"], boft_block_size=2, boft_n_butterfly_factor=3, boft_dropout=0.5),
    ),
]

# adapter_config.json files written by PEFT.
CONFIG_CASES = [
    dict(name="boft_defaults", method="BOFT", kwargs=dict()),
    dict(
        name="boft_full",
        method="BOFT",
        kwargs=dict(
            boft_block_size=0,
            boft_block_num=8,
            boft_n_butterfly_factor=3,
            target_modules=["q", "v", "wo"],
            exclude_modules=r".*\.0\..*",
            boft_dropout=0.1,
            fan_in_fan_out=True,
            bias="boft_only",
            modules_to_save=["head"],
            init_weights=False,
            layers_to_transform=[0, 1],
            layers_pattern="block",
            task_type="SEQ_2_SEQ_LM",
            base_model_name_or_path="org/t5",
        ),
    ),
]
