"""gor_det.distill.agreement: anchor matching and the teachers' agreement with the ground truth, on hand-made heads."""

import math

import pytest
import torch

import gor_det  # noqa: F401  (before ultralytics)
from gor_det.distill import GroundTruth, HeadOutputs, agreement_shares
from gor_det.distill.agreement import anchor_centers, match_anchors, teacher_agreement

LEVELS = [(2, 2), (1, 1)]  # at 32 x 32 px: strides 16 and 32, anchors 0-3 (P3, row-major) and 4 (P4)
IMG = (32, 32)


def _gt():
    """Image 0: a big box over the whole input (class 1) and a small one in its top-left corner (class 2); image 1:
    one box (class 0) around anchor 3 only. Given as an Ultralytics batch (normalised xywh)."""
    xyxy = torch.tensor([[0.0, 0.0, 32.0, 32.0], [0.0, 0.0, 20.0, 20.0], [18.0, 18.0, 30.0, 30.0]])
    xywh = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1) / 32
    batch = {"img": torch.zeros(2, 3, *IMG), "batch_idx": torch.tensor([0.0, 0.0, 1.0]),
             "cls": torch.tensor([[1.0], [2.0], [0.0]]), "bboxes": xywh}
    return GroundTruth.from_yolo_batch(batch), xyxy


def test_anchor_centers_and_ground_truth():
    centers, strides = anchor_centers(LEVELS, IMG)
    assert centers.tolist() == [[8, 8], [24, 8], [8, 24], [24, 24], [16, 16]]
    assert strides.tolist() == [16, 16, 16, 16, 32]
    gt, xyxy = _gt()
    torch.testing.assert_close(gt.boxes, xyxy)
    assert gt.cls.tolist() == [1, 2, 0] and gt.batch_idx.tolist() == [0, 0, 1] and gt.img_hw == IMG


def test_match_anchors_smallest_box_of_the_same_image():
    gt, _ = _gt()
    centers, _ = anchor_centers(LEVELS, IMG)
    match = match_anchors(gt, centers, 2)
    # image 0: anchors 0 and 4 (centres (8, 8), (16, 16)) lie in both boxes -> the small one (1); the rest in the big
    # one; image 1: only anchor 3 (24, 24) lies in its box (2)
    assert match.tolist() == [[1, 0, 0, 0, 1], [-1, -1, -1, 2, -1]]
    empty = GroundTruth(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0, 4), IMG)
    assert match_anchors(empty, centers, 2).tolist() == [[-1] * 5] * 2


def _teacher(ltrb_px, logits):
    """A YOLO26-style head (reg_max 1: raw ltrb in grid units) predicting the same box offsets (pixels, per anchor
    ``(A, 4)``) and class logits ``(nc, A)`` on both images."""
    _, strides = anchor_centers(LEVELS, IMG)
    boxes = (ltrb_px / strides.unsqueeze(1)).t().unsqueeze(0).repeat(2, 1, 1)  # (2, 4, A)
    feats = [torch.zeros(2, 1, h, w) for h, w in LEVELS]
    return HeadOutputs(feats, logits.unsqueeze(0).repeat(2, 1, 1), boxes, 1)


def _matched():
    """The labels, anchors, their matches, and the ltrb offsets (pixels, ``(A, 4)``) that reproduce at each anchor the
    box it is matched to in image 0 (box 1 at anchors 0 / 4, box 0 elsewhere)."""
    gt, xyxy = _gt()
    centers, strides = anchor_centers(LEVELS, IMG)
    match = match_anchors(gt, centers, 2)
    target = xyxy[match[0]]
    return gt, centers, strides, match, torch.cat([centers - target[:, :2], target[:, 2:] - centers], 1)


def test_teacher_agreement_is_class_probability_times_iou_or_no_object():
    gt, centers, strides, match, ltrb = _matched()
    logits = torch.full((3, 5), -2.0)
    logits[2, [0, 4]] = 1.0  # class 2 (the small box's) at anchors 0, 4
    logits[1, [1, 2, 3]] = 0.5  # class 1 (the big box's) at anchors 1-3
    q = teacher_agreement(_teacher(ltrb, logits), gt, match, centers, strides)
    sig = torch.sigmoid
    expect0 = [float(sig(torch.tensor(v))) for v in (1.0, 0.5, 0.5, 0.5, 1.0)]  # exact boxes: IoU 1
    torch.testing.assert_close(q[0], torch.tensor(expect0))
    # image 1: anchor 3 is matched to box 2 (class 0, logit -2) while the teacher's box at anchor 3 is the big box
    # (IoU 144 / 1024); elsewhere background: 1 - max probability
    bg = [1 - float(sig(logits[:, a]).max()) for a in range(5)]
    torch.testing.assert_close(q[1], torch.tensor([bg[0], bg[1], bg[2], float(sig(torch.tensor(-2.0))) * 144 / 1024,
                                                   bg[4]]))


def test_agreement_shares():
    gt, _, _, _, right = _matched()
    logits = torch.full((3, 5), -2.0)
    logits[1, :] = 3.0
    good, shrunk = _teacher(right, logits), _teacher(right - 8.0, logits)  # 8 px in from every side
    w = agreement_shares([good, shrunk], gt, [3, 1])
    assert w.shape == (2, 2, 5)
    torch.testing.assert_close(w.sum(0), torch.ones(2, 5))
    # image 0, anchor 1 (matched to the big box, class 1): q = p * IoU, the shrunk box is the centre 16 x 16 of 32 x 32
    p = float(torch.sigmoid(torch.tensor(3.0)))
    q_good, q_shrunk = p + 1e-3, p * 256 / 1024 + 1e-3
    assert float(w[0, 0, 1]) == pytest.approx(3 * q_good / (3 * q_good + q_shrunk), rel=1e-5)
    # background anchors (image 1, all but 3): equal class scores -> equal agreement -> the fixed shares 3:1
    torch.testing.assert_close(w[0, 1, [0, 1, 2, 4]], torch.full((4,), 0.75))
    # identical teachers keep the fixed shares everywhere
    torch.testing.assert_close(agreement_shares([good, good], gt, [3, 1])[0], torch.full((2, 5), 0.75))
    assert math.isclose(float(agreement_shares([good, good], gt)[1, 0, 0]), 0.5, rel_tol=1e-6)
