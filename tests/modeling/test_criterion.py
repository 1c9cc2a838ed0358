import pytest
import torch

from lite_detr.modeling.criterion import SetCriterion, dn_match_indices
from lite_detr.modeling.matcher import HungarianMatcher

K = 3


def make_targets():
    return [
        {
            "labels": torch.tensor([0, 2]),
            "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]]),
        },
        {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)},
    ]


def outputs_for(targets, num_queries=5, logit=10.0):
    """Predictions that reproduce the targets exactly in the first queries, background elsewhere."""
    logits = torch.full((len(targets), num_queries, K), -logit)
    boxes = torch.full((len(targets), num_queries, 4), 0.5)
    for i, t in enumerate(targets):
        n = len(t["labels"])
        logits[i, torch.arange(n), t["labels"]] = logit
        boxes[i, :n] = t["boxes"]
    return {"pred_logits": logits.requires_grad_(), "pred_boxes": boxes.requires_grad_()}


def test_perfect_predictions_have_near_zero_loss():
    targets = make_targets()
    criterion = SetCriterion(K, HungarianMatcher())
    losses = criterion(outputs_for(targets), targets)
    assert set(losses) == {"loss_class", "loss_bbox", "loss_giou"}
    assert all(v.item() < 1e-4 for v in losses.values()), losses
    bad = outputs_for(targets, logit=-1.0)
    bad["pred_boxes"] = bad["pred_boxes"].detach() * 0.8
    worse = criterion(bad, targets)
    assert all(worse[k] > losses[k] + 1e-3 for k in losses)


def test_weights_aux_interm_and_dn_keys():
    targets = make_targets()
    weights = {"loss_class": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    criterion = SetCriterion(K, HungarianMatcher(), weights)
    plain = SetCriterion(K, HungarianMatcher(), dict.fromkeys(weights, 1.0))
    out = outputs_for(targets)
    out["pred_boxes"] = out["pred_boxes"].detach() * 0.9  # non-zero box losses
    out["aux_outputs"] = [dict(out), dict(out)]
    out["interm_outputs"] = dict(out)
    dn = outputs_for(targets, num_queries=8)  # 2 groups of 2 * max_gt = 4 queries
    dn["aux_outputs"] = [dict(dn)]
    out["dn_outputs"] = dn
    meta = {"num_groups": 2, "group_size": 4, "pad_size": 8}
    losses = criterion(out, targets, meta)
    base = plain(out, targets, meta)
    for suffix in ["", "_0", "_1", "_enc", "_dn", "_dn_0"]:
        for k, w in weights.items():
            assert losses[k + suffix].item() == pytest.approx(w * base[k + suffix].item())
    assert len(losses) == 18
    # only group 0 of the dn queries is exact; group 1 queries (4, 5) predict background
    assert losses["loss_class_dn"] > 1.0
    with pytest.raises(ValueError, match="dn_meta"):
        criterion(out, targets)


def test_dn_match_indices_layout():
    targets = make_targets()
    (q0, t0), (q1, t1) = dn_match_indices(targets, num_groups=3, group_size=4)
    assert q0.tolist() == [0, 1, 4, 5, 8, 9] and t0.tolist() == [0, 1, 0, 1, 0, 1]
    assert len(q1) == len(t1) == 0


def test_empty_batch_gives_finite_losses_and_gradients():
    targets = [make_targets()[1]] * 2
    out = outputs_for(targets, logit=1.0)
    losses = SetCriterion(K, HungarianMatcher())(out, targets)
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total) and losses["loss_bbox"].item() == 0.0
    assert out["pred_logits"].grad.abs().sum() > 0  # every query is pushed to background


def test_num_boxes_normalisation():
    targets = make_targets()
    criterion = SetCriterion(K, HungarianMatcher())
    assert criterion.num_boxes(targets, "cpu") == 2.0
    assert criterion.num_boxes([targets[1]], "cpu") == 1.0  # clamped, never divides by 0


def test_weight_dict_validation():
    with pytest.raises(ValueError, match="loss_ce"):
        SetCriterion(K, HungarianMatcher(), {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0})
    with pytest.raises(ValueError, match="missing"):
        SetCriterion(K, HungarianMatcher(), {"loss_class": 1.0})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_giou_loss_is_torchvisions_without_masks(dtype):
    """The box loss's GIoU term: torchvision's value and gradients, bit for bit, for overlapping,
    touching and disjoint pairs (it clamps where torchvision masks: no data-dependent shape)."""
    import torchvision

    from lite_detr.modeling.box_ops import generalized_box_iou_loss

    g = torch.Generator().manual_seed(0)
    xy1, xy2 = torch.rand(2, 300, 2, generator=g, dtype=dtype)
    wh1, wh2 = torch.rand(2, 300, 2, generator=g, dtype=dtype) * 0.4
    wh2[:10] = 0.0  # degenerate boxes
    b1 = torch.cat((xy1, xy1 + wh1), 1).requires_grad_()
    b2 = torch.cat((xy2, xy2 + wh2), 1)
    b2[10:20] = b1[10:20].detach()  # identical pairs
    b2[20, :2], b2[20, 2:] = b1[20, 2:].detach(), b1[20, 2:].detach() + 0.1  # touching corner
    b2.requires_grad_()
    ours = generalized_box_iou_loss(b1, b2)
    ref = torchvision.ops.generalized_box_iou_loss(b1, b2, reduction="sum")
    assert torch.equal(ours, ref)
    for a, b in zip(torch.autograd.grad(ours, (b1, b2)), torch.autograd.grad(ref, (b1, b2))):
        assert torch.equal(a, b)
    assert generalized_box_iou_loss(torch.zeros(0, 4), torch.zeros(0, 4)).item() == 0.0
