"""A literal, dense transcription of the CZSL calibration-bias protocol, for parity tests.

It follows the protocol steps one by one on the full score matrix, with explicit float32
arithmetic and lowest-index tie-breaking, the way the czsl library / CSP evaluator does
(their evaluator keeps several dense copies; memory is no concern at test sizes).
"""

from __future__ import annotations

import numpy as np
import torch


def _topk_lowest_index(scores: torch.Tensor, k: int) -> torch.Tensor:
    # Stable descending sort: among equal scores the lowest column comes first.
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]


def dense_reference(scores, attr_idx, obj_idx, pairs, seen_pairs, candidate_mask=None, topk=1):
    scores = torch.as_tensor(np.asarray(scores), dtype=torch.float32)
    pairs = [tuple(map(int, p)) for p in np.asarray(pairs)]
    seen = {tuple(map(int, p)) for p in np.asarray(seen_pairs)}
    attr_idx = torch.as_tensor(np.asarray(attr_idx))
    obj_idx = torch.as_tensor(np.asarray(obj_idx))
    n, p = scores.shape
    seen_mask = torch.tensor([pair in seen for pair in pairs])
    allowed = (
        torch.ones(p, dtype=torch.bool)
        if candidate_mask is None
        else torch.as_tensor(candidate_mask)
    )
    column = {pair: i for i, pair in enumerate(pairs)}
    truth = [(int(a), int(o)) for a, o in zip(attr_idx, obj_idx)]
    true_col = torch.tensor([column.get(t, -1) for t in truth])
    image_seen = torch.tensor([t in seen for t in truth])
    pair_tensor = torch.tensor(pairs)

    def predict(bias):
        biased = scores.clone()
        biased[:, ~seen_mask] += torch.tensor(bias, dtype=torch.float32)
        biased[:, ~allowed] = -1e10
        return _topk_lowest_index(biased, topk)

    def match(pred):
        return (pred == true_col.unsqueeze(1)).any(1) & (true_col >= 0)

    def mean(x):
        return float(x.float().mean()) if x.numel() else 0.0

    unbiased = predict(0.0)
    closed_acc = mean(match(unbiased))
    top1 = pair_tensor[unbiased[:, 0]]
    attr_acc = mean(top1[:, 0] == attr_idx)
    obj_acc = mean(top1[:, 1] == obj_idx)

    at_max = match(predict(1000.0))
    unseen_rows = torch.nonzero(~image_seen).flatten()
    correct_scores = scores[unseen_rows, true_col[unseen_rows].clamp(min=0)]
    kth_seen = scores[unseen_rows][:, seen_mask].topk(topk, dim=1).values[:, topk - 1]
    diff = (kth_seen - correct_scores)[at_max[unseen_rows]] - 1e-4
    diff = torch.sort(diff).values
    biases = diff[:: max(len(diff) // 20, 1)]
    seen_acc, unseen_acc = [], []
    for bias in biases:
        m = match(predict(float(bias)))
        seen_acc.append(mean(m[image_seen]))
        unseen_acc.append(mean(m[~image_seen]))
    seen_acc.append(mean(at_max[image_seen]))
    unseen_acc.append(mean(at_max[~image_seen]))
    s, u = np.array(seen_acc), np.array(unseen_acc)
    hm = np.array([2 * a * b / (a + b) if a > 0 and b > 0 else 0.0 for a, b in zip(s, u)])
    idx = int(np.argmax(hm))
    auc = float(np.sum((u[1:] - u[:-1]) * (s[1:] + s[:-1]) / 2))
    return {
        "best_seen": float(s.max()),
        "best_unseen": float(u.max()),
        "best_hm": float(hm[idx]),
        "auc": auc,
        "attr_acc": attr_acc,
        "obj_acc": obj_acc,
        "closed_acc": closed_acc,
        "bias_term": float(biases[idx]) if idx < len(biases) else 1000.0,
        "seen_curve": s.tolist(),
        "unseen_curve": u.tolist(),
    }
