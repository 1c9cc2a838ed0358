import pytest
import torch
from torchvision.ops import box_iou

from lite_detr.modeling.box_ops import box_cxcywh_to_xyxy
from lite_detr.modeling.denoising import ContrastiveDenoising, build_dn_attn_mask


def test_attention_mask_isolates_matching_queries_and_groups():
    groups, size, queries = 3, 4, 5
    mask = build_dn_attn_mask(groups, size, queries)
    pad = groups * size
    assert mask.shape == (pad + queries, pad + queries) and mask.dtype == torch.bool
    # matching queries never see dn queries, but see each other
    assert mask[pad:, :pad].all() and not mask[pad:, pad:].any()
    for g in range(groups):
        rows = slice(g * size, (g + 1) * size)
        for h in range(groups):
            cols = slice(h * size, (h + 1) * size)
            assert mask[rows, cols].all() != (g == h) and mask[rows, cols].any() != (g == h)
        assert not mask[rows, pad:].any()  # dn queries may look at matching queries


def targets():
    return [
        {
            "labels": torch.tensor([1, 2, 0]),
            "boxes": torch.tensor(
                [[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.4, 0.2], [0.5, 0.5, 0.5, 0.5]]
            ),
        },
        {"labels": torch.tensor([4]), "boxes": torch.tensor([[0.2, 0.7, 0.1, 0.3]])},
    ]


def test_query_layout_and_noise():
    torch.manual_seed(0)
    dn = ContrastiveDenoising(num_classes=5, embed_dim=16, num_dn_queries=12, label_noise_ratio=0.0)
    content, boxes, mask, meta = dn(targets(), num_queries=7)
    assert meta == {"num_groups": 4, "group_size": 6, "pad_size": 24}
    assert content.shape == (2, 24, 16) and boxes.shape == (2, 24, 4) and mask.shape == (31, 31)
    # without label noise the content is the label embedding of the target; padding is zero
    emb = dn.label_enc.weight
    for g in range(4):
        for half in range(2):
            start = g * 6 + half * 3
            assert torch.equal(content[0, start : start + 3], emb[torch.tensor([1, 2, 0])])
            assert torch.equal(content[1, start], emb[4])
            assert (
                not content[1, start + 1 : start + 3].any()
                and not boxes[1, start + 1 : start + 3].any()
            )
    # positives stay closer to their ground truth than negatives
    gt = box_cxcywh_to_xyxy(targets()[0]["boxes"])
    pos = torch.cat([boxes[0, g * 6 : g * 6 + 3] for g in range(4)]).sigmoid()
    neg = torch.cat([boxes[0, g * 6 + 3 : g * 6 + 6] for g in range(4)]).sigmoid()
    iou_pos = box_iou(box_cxcywh_to_xyxy(pos), gt.repeat(4, 1)).diagonal()
    iou_neg = box_iou(box_cxcywh_to_xyxy(neg), gt.repeat(4, 1)).diagonal()
    assert iou_pos.mean() > iou_neg.mean() + 0.2


def test_label_noise_flips_labels():
    torch.manual_seed(0)
    dn = ContrastiveDenoising(
        num_classes=50, embed_dim=8, num_dn_queries=100, label_noise_ratio=1.0, box_noise_scale=0.0
    )
    t = [
        {"labels": torch.zeros(1, dtype=torch.int64), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}
    ]
    content, boxes, _, meta = dn(t, num_queries=3)
    flipped = (content[0] != dn.label_enc.weight[0]).any(-1).float().mean().item()
    assert 0.3 < flipped < 0.7  # probability label_noise_ratio / 2 (minus flips to class 0)
    assert torch.allclose(boxes[0].sigmoid(), t[0]["boxes"].expand(200, 4), atol=1e-5)


def test_no_ground_truth_and_errors():
    dn = ContrastiveDenoising(num_classes=5, embed_dim=8)
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    assert dn([empty, empty], num_queries=4) is None
    big = [{"labels": torch.zeros(150, dtype=torch.int64), "boxes": torch.rand(150, 4) * 0.5 + 0.2}]
    assert dn(big, 4)[3]["num_groups"] == 1  # more targets than dn queries: one group
    with pytest.raises(ValueError, match="num_dn_queries"):
        ContrastiveDenoising(num_classes=5, num_dn_queries=0)
