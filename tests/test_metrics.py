import math

import pytest
import torch

from maskvlp.metrics import (
    mean_per_class_recall,
    pairwise_choice_accuracy,
    per_class_recall,
    retrieval_recall,
    topk_accuracy,
)


def test_topk_by_hand():
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.5, 0.4, 0.1]])
    labels = torch.tensor([0, 2, 2, 1])
    assert topk_accuracy(logits, labels, 1) == 0.5  # rows 0 and 2
    assert topk_accuracy(logits, labels, 2) == 1.0


def test_topk_ties_count_against_the_label():
    logits = torch.zeros(4, 10)  # a constant model must not score 100%
    labels = torch.arange(4)
    assert topk_accuracy(logits, labels, 1) == 0.0
    assert topk_accuracy(logits, labels, 10) == 1.0


def test_per_class_recall_by_hand():
    pred = torch.tensor([0, 0, 1, 1, 1, 2])
    labels = torch.tensor([0, 1, 1, 1, 2, 2])
    recall = per_class_recall(pred, labels, 4)
    assert recall[:3].tolist() == pytest.approx([1.0, 2 / 3, 0.5])
    assert math.isnan(recall[3])  # no sample of class 3
    assert mean_per_class_recall(pred, labels, 4) == pytest.approx((1 + 2 / 3 + 0.5) / 3)


def test_retrieval_with_several_captions_per_image():
    # 2 images, 3 captions: captions 0 and 1 belong to image 0, caption 2 to image 1
    sim = torch.tensor(
        [
            [0.1, 0.9, 0.5],  # image 0: best caption (1) is its own -> i2t hit at 1
            [0.8, 0.2, 0.3],
        ]
    )  # image 1: its caption (2) ranks 2nd -> hit at 5 only
    res = retrieval_recall(sim, torch.tensor([0, 0, 1]), ks=(1, 5))
    assert res["i2t_r1"] == 0.5 and res["i2t_r5"] == 1.0
    # t2i: caption 0 -> image 1 (0.8) beats image 0 (0.1): miss; caption 1 -> image 0: hit; caption 2 -> image 0 (0.5 > 0.3): miss
    assert res["t2i_r1"] == pytest.approx(1 / 3) and res["t2i_r5"] == 1.0


def test_retrieval_ties_are_pessimistic():
    sim = torch.ones(5, 5)
    res = retrieval_recall(sim, torch.arange(5), ks=(1, 5))
    assert res["i2t_r1"] == 0.0 and res["t2i_r1"] == 0.0
    assert res["i2t_r5"] == 1.0


def test_identical_caption_strings_are_positives_of_every_image_that_has_them():
    from maskvlp.metrics import text_positives

    own = [["a red circle"], ["a red circle"], ["a blue square", "a square"]]
    texts = ["a red circle", "a red circle", "a blue square", "a square"]
    pos = text_positives(own, texts)
    assert pos.tolist() == [[True, True, False, False], [True, True, False, False], [False, False, True, True]]
    # both "red circle" images score their (identical) captions equally: with one positive each,
    # pessimistic ties would make image 1 miss at R@1 whatever the model did
    sim = torch.tensor([[0.9, 0.9, 0.1, 0.1], [0.8, 0.8, 0.2, 0.5], [0.0, 0.0, 0.7, 0.3]])
    res = retrieval_recall(sim, pos, ks=(1,))
    assert res["i2t_r1"] == 1.0
    assert res["t2i_r1"] == pytest.approx(3 / 4)  # "a square": image 1 (0.5) beats its image 2 (0.3)
    owner_only = retrieval_recall(sim, torch.tensor([0, 1, 2, 2]), ks=(1,))
    assert owner_only["i2t_r1"] < 1.0


def test_perfect_retrieval():
    res = retrieval_recall(torch.eye(7), torch.arange(7))
    assert all(v == 1.0 for v in res.values())


def test_pairwise_choice():
    assert pairwise_choice_accuracy(torch.tensor([1.0, 0.5, 0.2]), torch.tensor([0.0, 0.5, 0.3])) == pytest.approx(
        1 / 3
    )


def test_the_majority_baseline_is_the_largest_class_share():
    import torch

    from maskvlp.metrics import majority_key, majority_share

    assert majority_share(torch.tensor([0, 2, 2, 1, 2])) == pytest.approx(3 / 5)
    assert majority_key("zeroshot/val/top1") == "zeroshot/val/majority_top1"
    assert majority_key("linear_probe/x/top1") == "linear_probe/x/majority_top1"
    assert majority_key("retrieval/val/t2i_r1") is None
