import math

import pytest
import torch
import torch.nn.functional as F

from maskvlp.loss import clip_loss, distributed_clip_loss


def test_hand_computable_case():
    # two orthogonal pairs: logits = s * I, each row's CE = log(1 + exp(-s))
    s = torch.tensor(3.0)
    feats = torch.eye(2)
    assert clip_loss(feats, feats, s).item() == pytest.approx(math.log(1 + math.exp(-3.0)), rel=1e-6)


def test_symmetric_in_images_and_texts():
    torch.manual_seed(0)
    i, t = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    s = torch.tensor(10.0)
    assert clip_loss(i, t, s).item() == pytest.approx(clip_loss(t, i, s).item(), rel=1e-6)


def test_chance_level_for_identical_features():
    feats = F.normalize(torch.ones(8, 4), dim=-1)
    assert clip_loss(feats, feats, torch.tensor(5.0)).item() == pytest.approx(math.log(8), rel=1e-6)


def test_single_process_distributed_loss_is_the_plain_loss():
    i, t = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    s = torch.tensor(7.0)
    for local in (False, True):
        assert distributed_clip_loss(i, t, s, local).item() == pytest.approx(clip_loss(i, t, s).item())
