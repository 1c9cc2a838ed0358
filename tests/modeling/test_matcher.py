import itertools

import pytest
import torch

from lite_detr.modeling.box_ops import box_xyxy_to_cxcywh
from lite_detr.modeling.matcher import HungarianMatcher


def random_boxes(n, generator):
    xy = torch.rand(n, 2, generator=generator) * 0.6
    wh = torch.rand(n, 2, generator=generator) * 0.3 + 0.05
    return box_xyxy_to_cxcywh(torch.cat([xy, xy + wh], -1))


def brute_force(cost):
    """Minimal total cost over all injective assignments of targets (columns) to queries."""
    q, t = cost.shape
    best = None
    for rows in itertools.permutations(range(q), t):
        total = sum(cost[r, c].item() for c, r in enumerate(rows))
        if best is None or total < best - 1e-9:
            best = total
    return best


@pytest.mark.parametrize("num_queries,num_targets", [(1, 1), (3, 2), (4, 4), (5, 3), (6, 1)])
def test_matcher_is_optimal_against_brute_force(num_queries, num_targets):
    g = torch.Generator().manual_seed(num_queries * 10 + num_targets)
    matcher = HungarianMatcher()
    for _ in range(3):
        outputs = {
            "pred_logits": torch.randn(2, num_queries, 4, generator=g),
            "pred_boxes": torch.stack([random_boxes(num_queries, g) for _ in range(2)]),
        }
        targets = [
            {
                "labels": torch.randint(0, 4, (num_targets,), generator=g),
                "boxes": random_boxes(num_targets, g),
            }
            for _ in range(2)
        ]
        indices = matcher(outputs, targets)
        for i, (rows, cols) in enumerate(indices):
            assert len(rows) == len(cols) == num_targets
            assert sorted(cols.tolist()) == list(range(num_targets))
            assert len(set(rows.tolist())) == num_targets  # one-to-one
            cost = matcher.cost_matrix(
                outputs["pred_logits"][i],
                outputs["pred_boxes"][i],
                targets[i]["labels"],
                targets[i]["boxes"],
            )
            assert cost[rows, cols].sum().item() == pytest.approx(brute_force(cost), abs=1e-4)


def test_matcher_finds_obvious_assignment():
    boxes = torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.7, 0.7, 0.2, 0.2], [0.5, 0.2, 0.3, 0.1]])
    logits = torch.full((1, 3, 2), -5.0)
    logits[0, 0, 1] = logits[0, 1, 0] = logits[0, 2, 1] = 5.0
    targets = [{"labels": torch.tensor([0, 1]), "boxes": boxes[[1, 0]]}]
    rows, cols = HungarianMatcher()({"pred_logits": logits, "pred_boxes": boxes[None]}, targets)[0]
    assert dict(zip(cols.tolist(), rows.tolist())) == {0: 1, 1: 0}


def test_matcher_cost_terms():
    """The classification cost prefers confident correct classes; the box costs prefer overlap."""
    matcher = HungarianMatcher(cost_class=1.0, cost_bbox=0.0, cost_giou=0.0)
    logits = torch.tensor([[4.0, -4.0], [-4.0, 4.0]])
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2]] * 2)
    cost = matcher.cost_matrix(logits, boxes, torch.tensor([0]), boxes[:1])
    assert cost[0, 0] < 0 < cost[1, 0]
    matcher = HungarianMatcher(cost_class=0.0, cost_bbox=1.0, cost_giou=0.0)
    far = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.2, 0.2]])
    cost = matcher.cost_matrix(logits, far, torch.tensor([0]), far[:1])
    assert cost[0, 0] == 0 and cost[1, 0] == pytest.approx(0.8)


def test_matcher_empty_targets():
    outputs = {"pred_logits": torch.randn(2, 5, 3), "pred_boxes": torch.rand(2, 5, 4)}
    targets = [
        {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)},
        {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])},
    ]
    (r0, c0), (r1, c1) = HungarianMatcher()(outputs, targets)
    assert len(r0) == len(c0) == 0 and len(r1) == len(c1) == 1


def test_matcher_errors():
    with pytest.raises(ValueError, match="all costs are 0"):
        HungarianMatcher(0, 0, 0)
    with pytest.raises(ValueError, match="pred_boxes"):
        HungarianMatcher()(
            {"pred_logits": torch.randn(1, 5, 3), "pred_boxes": torch.rand(1, 4, 4)}, [{}]
        )
    with pytest.raises(ValueError, match="targets for a batch"):
        HungarianMatcher()(
            {"pred_logits": torch.randn(2, 5, 3), "pred_boxes": torch.rand(2, 5, 4)}, []
        )
    boxes = torch.rand(1, 5, 4)
    boxes[0, 2, 0] = float("nan")
    targets = [{"labels": torch.tensor([1]), "boxes": torch.rand(1, 4)}]
    with pytest.raises(FloatingPointError, match="NaN/inf"):
        HungarianMatcher()({"pred_logits": torch.randn(1, 5, 3), "pred_boxes": boxes}, targets)
