"""The encoders and the decoder of every detector here, as functions of the few knobs that differ
between detectors (FFN width, dropout, the decoder's query and head settings) and between Lite
DETR variants (H, A, B).

Each returns a node to be placed at ``model.encoder`` / ``model.decoder``: its sizes interpolate
the model's ``embed_dim`` / ``num_feature_levels`` / ``num_classes``. An encoder kept at the top
level of a config (``baseline_encoder``, swapped in by ``model.encoder='${baseline_encoder}'``)
goes through :func:`top_level` first.
"""

from detectron2.config import LazyCall as L

from lite_detr.modeling import DeformableDecoder, DeformableEncoder, InterleavedEncoder


def deformable_encoder(feedforward_dim: int, dropout: float):
    """The baselines' encoder: 6 layers of multi-scale deformable self-attention over all tokens."""
    return L(DeformableEncoder)(
        num_layers=6,
        embed_dim="${..embed_dim}",
        num_heads=8,
        num_levels="${..num_feature_levels}",
        num_points=4,
        feedforward_dim=feedforward_dim,
        dropout=dropout,
        attention="deformable",
        attention_dropout=0.0,
    )


def interleaved_encoder(
    feedforward_dim: int,
    dropout: float,
    num_blocks: int = 3,
    num_high_updates: int = 2,
    num_high_levels: int = 3,
):
    """Lite DETR's interleaved encoder with key-aware deformable attention (KDA), by default
    H3L1-(2+1)x3: ``num_blocks`` B blocks of ``num_high_updates`` A high-level updates + one
    low-level update, the top ``num_high_levels`` levels high. ``feedforward_dim`` and ``dropout``
    are those of the baseline encoder it replaces; the low-level update's FFN is 256 wide."""
    return L(InterleavedEncoder)(
        num_blocks=num_blocks,  # B
        num_high_updates=num_high_updates,  # A
        num_high_levels=num_high_levels,  # H3L1
        embed_dim="${..embed_dim}",
        num_heads=8,
        num_levels="${..num_feature_levels}",
        num_points=4,
        feedforward_dim=feedforward_dim,
        low_feedforward_dim=256,
        dropout=dropout,
        attention="key_aware",
        attention_dropout=0.0,
        separate_key_proj=False,  # W_K = W_V, the paper's and the release's
    )


def deformable_decoder(
    feedforward_dim: int,
    dropout: float,
    *,
    look_forward_twice: bool,
    share_heads: bool,
    positional_queries: str,
    final_norm: bool,
    inverse_sigmoid_eps: float,
    **kwargs,
):
    """The decoder of every detector here: 6 layers of self-attention + multi-scale deformable
    cross-attention + FFN, with box refinement; the keyword arguments are the detector's choices
    (see :class:`~lite_detr.modeling.DeformableDecoder`), ``kwargs`` further arguments."""
    return L(DeformableDecoder)(
        num_classes="${..num_classes}",
        num_layers=6,
        embed_dim="${..embed_dim}",
        num_heads=8,
        num_levels="${..num_feature_levels}",
        num_points=4,
        feedforward_dim=feedforward_dim,
        dropout=dropout,
        # an explicit choice, not the encoder's: swapping the encoder leaves the decoder as it is
        cross_attention="deformable",
        attention_dropout=0.0,
        separate_key_proj=False,
        look_forward_twice=look_forward_twice,
        share_heads=share_heads,
        positional_queries=positional_queries,
        final_norm=final_norm,
        inverse_sigmoid_eps=inverse_sigmoid_eps,
        **kwargs,
    )


def top_level(encoder):
    """``encoder`` (taken from ``model.encoder``) as a top-level node: its interpolations name the
    model's keys in full, so that ``model.encoder='${baseline_encoder}'`` resolves them."""
    encoder.embed_dim = "${model.embed_dim}"
    encoder.num_levels = "${model.num_feature_levels}"
    return encoder
