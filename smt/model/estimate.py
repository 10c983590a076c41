"""Analytic size model of the SMT: parameters, training-step memory and FLOPs, from the config
alone (no tensors are allocated), so autotune can predict a machine it does not have (a T4)
before it builds anything.

The activation count follows what autograd keeps alive for backward in `SMTModel.forward` +
`loss`, tensor by tensor (see `_activation_elements`); `tests/smt/test_model.py` checks it
against autograd's saved tensors exactly and against measured RSS for a whole CPU step.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from smt.config import DOWNSAMPLE, SMTConfig

# Lightning precision names -> (bytes per parameter/gradient/optimizer-state element,
# bytes per activation element, autocast keeps a 16-bit copy of the weights).
_PRECISIONS: dict[str, tuple[int, int, bool]] = {
    "32": (4, 4, False), "32-true": (4, 4, False),
    "64": (8, 8, False), "64-true": (8, 8, False),
    "16-mixed": (4, 2, True), "bf16-mixed": (4, 2, True),
    "16-true": (2, 2, False), "bf16-true": (2, 2, False),
    "16": (4, 2, True), "bf16": (4, 2, True),
}
STAT_BYTES = 4          # LayerNorm mean/rstd and attention log-sum-exp stay float32
INDEX_BYTES = 8         # token ids and targets are int64
# Dropout's mask: float on CPU (bool, 1 byte, on CUDA); counted at the activation size, which
# overestimates a GPU step by a few bytes per token and layer.


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted peak memory of one training step (forward + backward + Adam step).

    total_bytes is the sum of the parts: with gradients and Adam state kept between steps
    (the steady state of training) they all coexist with the activations of the next step.
    activations_bytes includes the input batch and the largest transient gradients of backward.
    """
    weights_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    total_bytes: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def count_params(config: SMTConfig) -> int:
    """Trainable parameters, counted from the config (equals `SMTModel(config).num_params()`)."""
    c_in, widths, depths = config.in_channels, config.encoder_widths, config.encoder_depths
    total = c_in * widths[0] * 16 + widths[0] + 2 * widths[0]           # stem conv + norm
    for i, (w, depth) in enumerate(zip(widths, depths)):
        if i > 0:
            total += 2 * widths[i - 1] + widths[i - 1] * w * 4 + w       # norm + 2x2 conv
        block = (49 * w + w) + 2 * w + (w * 4 * w + 4 * w) + (4 * w * w + w) + w
        total += depth * block
    d, ff, v = config.d_model, config.ff_dim, config.vocab_size
    attention = 4 * (d * d + d)
    layer = 2 * attention + (d * ff + ff) + (ff * d + d) + 3 * 2 * d
    return total + config.n_layers * layer + v * d + (d * v + v)


def build_bytes(config: SMTConfig) -> int:
    """float32 bytes of the model as built: its parameters and its positional tables (the 1D
    table of max_seq_len rows and the 2D one of the largest image's feature grid)."""
    tables = config.max_seq_len * config.d_model + config.grid_height * config.grid_width * config.d_model
    return 4 * (count_params(config) + tables)


def _precision(precision: str | int) -> tuple[int, int, bool]:
    key = str(precision)
    if key not in _PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {sorted(_PRECISIONS)}")
    return _PRECISIONS[key]


def _check_sizes(config: SMTConfig, batch_size: int, height: int, width: int, seq_len: int) -> None:
    for name, value in (("batch_size", batch_size), ("height", height), ("width", width),
                        ("seq_len", seq_len)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if height > config.max_height or width > config.max_width:
        raise ValueError(f"image of {height}x{width} px exceeds the model's maximum "
                         f"{config.max_height}x{config.max_width}")
    if seq_len > config.max_seq_len:
        raise ValueError(f"seq_len {seq_len} exceeds SMTConfig.max_seq_len={config.max_seq_len}")


def _grid(height: int, width: int) -> list[int]:
    """Positions of the feature map at strides 4, 8, 16 for an image padded to a multiple of 16."""
    h16, w16 = -(-height // DOWNSAMPLE) * DOWNSAMPLE, -(-width // DOWNSAMPLE) * DOWNSAMPLE
    return [(h16 // s) * (w16 // s) for s in (4, 8, 16)]


def _activation_bytes(config: SMTConfig, batch_size: int, height: int, width: int, seq_len: int,
                      act: int) -> tuple[int, int]:
    """(bytes autograd saves for backward, bytes of the largest transient gradients) per step."""
    widths, depths = config.encoder_widths, config.encoder_depths
    positions = _grid(height, width)
    h16w16 = positions[0] * 16
    saved = config.in_channels * h16w16 * act                         # the (padded) image, kept by the stem
    saved += (widths[0] * act + 2 * STAT_BYTES) * positions[0]         # stem norm input + stats
    for i, (w, depth, p) in enumerate(zip(widths, depths, positions)):
        if i > 0:
            prev_w, prev_p = widths[i - 1], positions[i - 1]
            # norm input, its stats, the masked norm output the 2x2 conv keeps, the mask
            saved += (2 * prev_w * act + 2 * STAT_BYTES + act) * prev_p
        saved += act * p                                               # the stage's padding mask
        # per block: masked input (dwconv), dwconv out (norm), norm out (pw1), pw1 out 4C (GELU),
        # GELU out 4C (pw2), pw2 out (layer scale): 12 C, plus the norm's two stats
        saved += depth * (12 * w * act + 2 * STAT_BYTES) * p
    d, ff, heads, s = config.d_model, config.ff_dim, config.n_heads, positions[2]
    saved += (d + d) * s * act                                         # memory values (features) + keys (+2D pos)
    # per token and layer: self-attn input, q, k, v, output; norm1 input; cross-attn input, q,
    # output; norm2 input; ff input; norm3 input (12 d); the ReLU output (ff); the stats of three
    # norms and the log-sum-exp of two attentions
    per_token = (12 * d + ff) * act + (2 * heads + 6) * STAT_BYTES
    if config.dropout > 0:
        # masks after self-attn, cross-attn, inside and after the feed-forward, and the
        # dropped-out hidden the second ff linear keeps
        per_token += (3 * d + 2 * ff) * act
    # cross-attention K and V of this layer, and the attention mask SDPA converts per call
    per_layer_memory = (2 * d + 1) * s * act
    saved += config.n_layers * (per_token * seq_len + per_layer_memory)
    saved += seq_len * INDEX_BYTES                                     # input ids (embedding)
    saved += seq_len * d * act * (2 if config.dropout > 0 else 1)   # head input
    # logits (returned, alive through backward) and log-softmax (kept by the loss, float32), targets
    saved += seq_len * (config.vocab_size * (act + 4) + INDEX_BYTES)
    saved *= batch_size
    # Backward of the largest ConvNeXt block holds the gradient of its 4C hidden twice (GELU in
    # and out) and of its C-wide input/output while that block's saved tensors are still alive.
    transient = max((8 * w + 2 * w) * p for w, p in zip(widths, positions)) * act * batch_size
    transient = max(transient, 2 * batch_size * seq_len * config.vocab_size * 4)
    return saved, transient


def estimate_memory(config: SMTConfig, batch_size: int, height: int, width: int, seq_len: int,
                    precision: str | int = "32") -> MemoryEstimate:
    """Peak memory of one training step at (batch_size, height x width px, seq_len tokens) with
    Adam, for a Lightning precision string ("32", "16-mixed", "bf16-mixed", "16-true", ...).
    Only the float32 figure is checked against measurement (on CPU); the 16-bit ones scale the
    same tensor count by element size."""
    _check_sizes(config, batch_size, height, width, seq_len)
    param_bytes, act_bytes, autocast_copy = _precision(precision)
    params = count_params(config)
    weights = params * param_bytes + (params * 2 if autocast_copy else 0)
    gradients = params * param_bytes
    optimizer = 2 * params * param_bytes                               # Adam: exp_avg, exp_avg_sq
    saved, transient = _activation_bytes(config, batch_size, height, width, seq_len, act_bytes)
    activations = saved + transient
    return MemoryEstimate(weights, gradients, optimizer, activations,
                          weights + gradients + optimizer + activations)


def estimate_flops(config: SMTConfig, batch_size: int, height: int, width: int, seq_len: int) -> int:
    """Floating-point operations of one training step (forward + backward ~ 3x forward),
    counting 2 per multiply-add of convolutions, linears and attention; elementwise work and
    norms are left out (a few percent)."""
    _check_sizes(config, batch_size, height, width, seq_len)
    widths, depths = config.encoder_widths, config.encoder_depths
    positions = _grid(height, width)
    macs = positions[0] * config.in_channels * 16 * widths[0]          # stem 4x4/4
    for i, (w, depth, p) in enumerate(zip(widths, depths, positions)):
        if i > 0:
            macs += p * widths[i - 1] * 4 * w                          # 2x2/2 downsampling conv
        macs += depth * p * (49 * w + 8 * w * w)                       # depthwise 7x7 + 4x MLP
    d, ff, s, t = config.d_model, config.ff_dim, positions[2], seq_len
    per_layer = (4 * d * d * t + t * t * d                             # self-attn projections; causal QK^T + AV
                 + 2 * d * d * t + 2 * d * d * s + 2 * t * s * d       # cross-attn q/out, k/v of memory, QK^T + AV
                 + 2 * d * ff * t)                                     # feed-forward
    macs += config.n_layers * per_layer + t * d * config.vocab_size    # output projection
    return int(3 * 2 * macs * batch_size)
