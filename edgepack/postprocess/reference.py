"""A plain NumPy NMS (the reference the runtimes' NMS is checked against) and mAP@0.5 between detections.

:func:`reference_nms` does on a raw head output exactly what the appended graph does
(:mod:`edgepack.postprocess.graph`), written independently of any runtime: decode ``cx, cy, w, h`` to
``x1, y1, x2, y2``, take each box's best class, drop scores ``<= conf``, greedy class-aware suppression at
IoU ``> iou``, keep at most ``max_det`` (best first), pad to ``max_det``.

:func:`detection_map` scores detections against reference detections (the fp32 model's, or labels) as the
mean over classes of the VOC-style all-point average precision at IoU 0.5.
"""

from __future__ import annotations

import numpy as np

from edgepack.postprocess.settings import Layout, NmsSettings

PAD_CLASS = -1
"""``classes`` value of the padding rows (boxes and scores pad with 0)."""


def decode(raw: np.ndarray, layout: Layout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(boxes_xyxy [N, 4], best_score [N], best_class [N])`` of one head output of batch 1."""
    rows = np.asarray(raw, np.float32).reshape(raw.shape[-2:])
    rows = rows.T if layout == "channels_first" else rows
    cx, cy, w, h = (rows[:, i] for i in range(4))
    boxes = np.stack([cx - w * np.float32(0.5), cy - h * np.float32(0.5),
                      cx + w * np.float32(0.5), cy + h * np.float32(0.5)], axis=1)
    scores = rows[:, 4:]
    best = np.argmax(scores, axis=1)
    return boxes, scores[np.arange(len(best)), best], best


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes ``a [M, 4]`` and ``b [K, 4]`` (corners in either order)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a_lo, a_hi = np.minimum(a[:, :2], a[:, 2:]), np.maximum(a[:, :2], a[:, 2:])
    b_lo, b_hi = np.minimum(b[:, :2], b[:, 2:]), np.maximum(b[:, :2], b[:, 2:])
    lo = np.maximum(a_lo[:, None, :], b_lo[None, :, :])
    hi = np.minimum(a_hi[:, None, :], b_hi[None, :, :])
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=2)
    area_a = np.prod(a_hi - a_lo, axis=1)
    area_b = np.prod(b_hi - b_lo, axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def reference_nms(raw: np.ndarray, layout: Layout, settings: NmsSettings) -> dict[str, np.ndarray]:
    """``{"boxes" [1, D, 4], "scores" [1, D], "classes" [1, D] int32, "count" [1] int32}`` with ``D = max_det``."""
    boxes, scores, classes = decode(raw, layout)
    candidates = np.flatnonzero(scores > settings.conf)
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    keep: list[int] = []
    suppressed = np.zeros(len(boxes), bool)
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        if len(keep) == settings.max_det:
            break
        same = order[(classes[order] == classes[i]) & ~suppressed[order]]
        overlap = iou_matrix(boxes[i : i + 1], boxes[same])[0]
        suppressed[same[overlap > settings.iou]] = True
    return pad(boxes[keep], scores[keep], classes[keep], settings.max_det)


def pad(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, max_det: int) -> dict[str, np.ndarray]:
    """Fixed-size outputs: the first ``count`` rows are detections, the rest zeros (classes :data:`PAD_CLASS`)."""
    count = min(len(boxes), max_det)
    out_boxes = np.zeros((1, max_det, 4), np.float32)
    out_scores = np.zeros((1, max_det), np.float32)
    out_classes = np.full((1, max_det), PAD_CLASS, np.int32)
    out_boxes[0, :count] = boxes[:count]
    out_scores[0, :count] = scores[:count]
    out_classes[0, :count] = classes[:count]
    return {"boxes": out_boxes, "scores": out_scores, "classes": out_classes, "count": np.array([count], np.int32)}


def detections(outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(boxes [k, 4], scores [k], classes [k])`` of one sample's fixed-size NMS outputs."""
    count = int(np.asarray(outputs["count"]).reshape(-1)[0])
    boxes = np.asarray(outputs["boxes"], np.float64).reshape(-1, 4)[:count]
    scores = np.asarray(outputs["scores"], np.float64).reshape(-1)[:count]
    classes = np.rint(np.asarray(outputs["classes"], np.float64).reshape(-1)[:count]).astype(np.int64)
    return boxes, scores, classes


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point interpolated area under a precision/recall curve (VOC 2010+)."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[1.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def detection_map(
    predicted: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    truth: list[tuple[np.ndarray, np.ndarray]],
    iou_threshold: float = 0.5,
) -> float:
    """mAP@``iou_threshold`` of ``predicted`` ``(boxes, scores, classes)`` per image against ``truth``
    ``(boxes, classes)`` per image: mean AP over the classes present in ``truth`` or ``predicted``.
    1.0 when neither has any box (nothing to find, nothing found)."""
    classes = sorted({int(c) for _, t in truth for c in np.asarray(t).reshape(-1)}
                     | {int(c) for _, _, p in predicted for c in np.asarray(p).reshape(-1)})
    if not classes:
        return 1.0
    aps = []
    for cls in classes:
        records: list[tuple[float, bool]] = []
        positives = 0
        for (p_boxes, p_scores, p_classes), (t_boxes, t_classes) in zip(predicted, truth):
            gt = np.asarray(t_boxes, np.float64).reshape(-1, 4)[np.asarray(t_classes) == cls]
            positives += len(gt)
            mask = np.asarray(p_classes) == cls
            boxes, scores = np.asarray(p_boxes).reshape(-1, 4)[mask], np.asarray(p_scores)[mask]
            used = np.zeros(len(gt), bool)
            overlaps = iou_matrix(boxes, gt) if len(gt) and len(boxes) else np.zeros((len(boxes), len(gt)))
            for i in np.argsort(-scores, kind="stable"):
                hit = False
                if len(gt):
                    candidates = np.where(used, -1.0, overlaps[i])
                    j = int(np.argmax(candidates))
                    if candidates[j] >= iou_threshold:
                        used[j], hit = True, True
                records.append((float(scores[i]), hit))
        if positives == 0:
            aps.append(0.0)  # only false positives for this class
            continue
        records.sort(key=lambda r: -r[0])
        hits = np.array([r[1] for r in records], bool)
        tp, fp = np.cumsum(hits), np.cumsum(~hits)
        recall = tp / positives if len(hits) else np.zeros(0)
        precision = tp / np.maximum(tp + fp, 1) if len(hits) else np.zeros(0)
        aps.append(average_precision(recall, precision))
    return float(np.mean(aps))
