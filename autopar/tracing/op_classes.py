"""Classify ATen operators into the few classes the cost models treat differently.

Matmuls and attention are compute-bound and costed on the device's FLOP roofline; the rest are
memory-bound (elementwise, normalisation, embedding, reduction) or free (views). Normalisation is
decided by the owning module as well as the op, because many models write RMSNorm out of plain
elementwise and reduction ops.
"""

from __future__ import annotations

from typing import Literal

OpClass = Literal[
    "matmul", "attention", "elementwise", "normalisation", "embedding", "reduction", "view"
]

_MATMUL = {
    "linear", "mm", "addmm", "bmm", "baddbmm", "matmul", "einsum", "conv1d", "conv2d", "conv3d",
    "convolution", "_convolution", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "addbmm", "addmv", "mv", "dot", "_scaled_mm", "bilinear", "_grouped_mm", "grouped_mm",
}
_ATTENTION_PREFIXES = ("scaled_dot_product", "_scaled_dot_product", "_flash_attention",
                       "_efficient_attention", "flex_attention")
_NORMALISATION = {
    "layer_norm", "native_layer_norm", "group_norm", "native_group_norm", "batch_norm",
    "native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
    "_native_batch_norm_legit_functional", "instance_norm", "rms_norm", "_fused_rms_norm",
}
_EMBEDDING = {"embedding", "embedding_bag", "_embedding_bag"}
_REDUCTION = {
    "sum", "mean", "amax", "amin", "max", "min", "softmax", "_softmax", "log_softmax",
    "_log_softmax", "_safe_softmax", "cross_entropy_loss", "nll_loss", "nll_loss_forward",
    "nll_loss2d", "var", "std", "var_mean", "norm", "linalg_vector_norm", "argmax", "argmin",
    "topk", "cumsum", "prod", "logsumexp", "any", "all", "mse_loss", "sort",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "avg_pool1d", "avg_pool2d", "max_pool1d",
    "max_pool2d", "max_pool2d_with_indices", "_adaptive_avg_pool2d",
}
_VIEW = {
    "view", "_unsafe_view", "reshape", "transpose", "t", "permute", "expand", "expand_as",
    "slice", "select", "unsqueeze", "squeeze", "alias", "detach", "split", "split_with_sizes",
    "chunk", "unbind", "flatten", "unflatten", "narrow", "as_strided", "view_as", "movedim",
    "_assert_tensor_metadata", "sym_size", "sym_numel", "lift_fresh_copy", "_to_copy_view",
    "diagonal", "unfold", "getitem", "tensor_split", "_reshape_alias", "lift_fresh",
}
_NORM_MODULE_SUFFIXES = ("Norm", "LayerNorm", "RMSNorm", "BatchNorm1d", "BatchNorm2d",
                         "BatchNorm3d", "GroupNorm")


def op_name(target: object) -> str:
    """The bare operator name of an ATen target: ``aten.linear.default`` -> ``linear``."""
    name = getattr(target, "__name__", None) or str(target)
    # OpOverload.__name__ is "linear.default"; packets and HOPs have plain names.
    base = name.split(".")[0]
    return base.removeprefix("aten::")


def classify(target: object, module_type: str = "") -> OpClass:
    """The class of one operator; ``module_type`` is the owning module's class name."""
    name = op_name(target)
    if name in _VIEW:
        return "view"
    if name in _MATMUL:
        return "matmul"
    if name.startswith(_ATTENTION_PREFIXES):
        return "attention"
    if name in _NORMALISATION or module_type.endswith(_NORM_MODULE_SUFFIXES):
        return "normalisation"
    if name in _EMBEDDING:
        return "embedding"
    if name in _REDUCTION:
        return "reduction"
    return "elementwise"
