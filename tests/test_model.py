import pytest
import torch
import torch.nn.functional as F

from maskvlp.model import CLIP, TEXT_PRESETS, VISION_PRESETS, count_params


@pytest.fixture(scope="module")
def model() -> CLIP:
    torch.manual_seed(0)
    return CLIP("tiny", "tiny", image_size=32, patch_size=8, embed_dim=32, context_length=12).eval()


def reference_image_features(model: CLIP, images: torch.Tensor, keep_idx: torch.Tensor) -> torch.Tensor:
    """Explicit, loop-based reference: embed every patch, add positions, take the kept ones one image
    at a time, prepend the class token, run the blocks."""
    v = model.visual
    out = []
    for b in range(images.shape[0]):
        patches = v.patch_embed(images[b : b + 1]).flatten(2).transpose(1, 2)[0]  # (L, w)
        tokens = patches + v.positional_embedding[1:]
        kept = torch.stack([tokens[i] for i in keep_idx[b].tolist()])
        cls = (v.class_embedding + v.positional_embedding[0])[None]
        x = v.ln_pre(torch.cat([cls, kept])[None])
        for block in v.transformer.blocks:
            x = block(x)
        out.append(v.ln_post(x[0, 0]) @ v.proj)
    return F.normalize(torch.stack(out), dim=-1)


def test_masked_forward_matches_explicit_reference(model):
    images = torch.randn(3, 3, 32, 32)
    keep = torch.stack([torch.randperm(16)[:6].sort().values for _ in range(3)])
    with torch.no_grad():
        ours = model.encode_image(images, keep)
        ref = reference_image_features(model, images, keep)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


def test_no_keep_idx_equals_keeping_every_patch(model):
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        full = model.encode_image(images)
        all_kept = model.encode_image(images, torch.arange(16).expand(2, -1))
    torch.testing.assert_close(full, all_kept)


def test_order_of_kept_indices_does_not_matter(model):
    # positions are added before the gather, so the kept set, not its order, defines the output
    images = torch.randn(2, 3, 32, 32)
    keep = torch.tensor([[0, 3, 5, 9, 12], [1, 2, 7, 8, 15]])
    with torch.no_grad():
        a = model.encode_image(images, keep)
        b = model.encode_image(images, keep.flip(1))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_transformer_sees_only_kept_tokens(model):
    seen = []
    hook = model.visual.transformer.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    with torch.no_grad():
        model.encode_image(torch.randn(2, 3, 32, 32), torch.arange(4).expand(2, -1))
    hook.remove()
    assert seen == [5]  # 4 kept patches + class token


def test_text_tower_is_causal_and_pools_at_end_of_text(model):
    tokens = torch.zeros(1, 12, dtype=torch.long)
    tokens[0, :4] = torch.tensor([49406, 320, 1125, 49407])
    changed = tokens.clone()
    changed[0, 6] = 999  # after the end token: invisible to a causal model pooled at the end token
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(tokens), model.encode_text(changed))
        other = tokens.clone()
        other[0, 2] = 2000
        assert not torch.allclose(model.encode_text(tokens), model.encode_text(other))


def test_forward_returns_normalised_features_and_temperature(model):
    img, txt, scale = model(torch.randn(2, 3, 32, 32), torch.randint(1, 49407, (2, 12)))
    assert img.shape == txt.shape == (2, 32)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(2))
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(1)
    a = CLIP("tiny", "tiny", 32, 8, 32, 12)
    b = CLIP("tiny", "tiny", 32, 8, 32, 12)
    b.load_state_dict(a.state_dict())
    b.set_grad_checkpointing()
    images, tokens = torch.randn(2, 3, 32, 32), torch.randint(1, 49407, (2, 12))
    for m in (a, b):
        i, t, s = m(images, tokens, torch.arange(8).expand(2, -1))
        (s * i @ t.T).sum().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_b16_preset_matches_clip_shapes():
    v, t = VISION_PRESETS["B"], TEXT_PRESETS["B"]
    assert (v.width, v.layers, v.heads) == (768, 12, 12)
    assert (t.width, t.layers, t.heads) == (512, 12, 8)
    model = CLIP("B", "B", image_size=224, patch_size=16, embed_dim=512, context_length=77)
    assert model.visual.num_patches == 196
    # CLIP ViT-B/16 has ~149.6M parameters
    assert 149e6 < count_params(model) < 150.5e6


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="multiple of model.patch_size"):
        CLIP(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="model.vision"):
        CLIP(vision="XL")


def test_flip_options_sincos_positions_and_average_pooling():
    torch.manual_seed(0)
    m = CLIP("tiny", "tiny", 32, 8, 16, 8, pos_embed="sincos", pool="avg", init_temperature=0.01)
    names = dict(m.named_parameters())
    assert "visual.positional_embedding" not in names and "visual.class_embedding" not in names  # fixed, no cls
    assert m.visual.positional_embedding.shape == (16, 128)  # one row per patch
    assert m.logit_scale.exp().item() == pytest.approx(100.0, rel=1e-5)
    images = torch.randn(2, 3, 32, 32)
    x = m.visual.patch_tokens(images)
    keep = torch.tensor([[0, 3, 5, 9], [1, 2, 8, 15]])
    kept = torch.gather(x, 1, keep[..., None].expand(-1, -1, x.shape[-1]))
    v = m.visual
    expected = v.ln_post(v.transformer(v.ln_pre(kept)).mean(1)) @ v.proj  # the mean of the kept tokens
    torch.testing.assert_close(v(images, keep), expected)
    # FLOPs count exactly the kept tokens (no class token) and the sin-cos table is the same in every model
    cls_model = CLIP("tiny", "tiny", 32, 8, 16, 8)
    assert m.train_flops_per_sample(4) < cls_model.train_flops_per_sample(4)
    assert m.train_flops_per_sample(4) == CLIP("tiny", "tiny", 32, 8, 16, 8, pool="avg").train_flops_per_sample(4)
    torch.manual_seed(1)
    other = CLIP("tiny", "tiny", 32, 8, 16, 8, pos_embed="sincos", pool="avg")
    assert torch.equal(other.visual.positional_embedding, m.visual.positional_embedding)


def test_sincos_positions_tell_patches_apart():
    from maskvlp.model import sincos_positions

    pos = sincos_positions(8, 64)
    assert pos.shape == (64, 64)
    sim = torch.nn.functional.normalize(pos, dim=1) @ torch.nn.functional.normalize(pos, dim=1).T
    assert (sim - torch.eye(64)).max() < 0.999  # no two patches share a position code
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_positions(4, 30)


def decayed_names(cfg) -> dict[str, bool]:
    """{parameter name: weight-decayed?} of the optimizer the training loop builds for cfg."""
    from maskvlp.session import build_optimizer

    model = CLIP.from_config(cfg.model)
    decayed = {id(p) for p in build_optimizer(model, cfg).param_groups[0]["params"]}
    return {n: id(p) in decayed for n, p in model.named_parameters()}


def test_recipe_flip_sets_the_papers_values_and_explicit_keys_win():
    from maskvlp.params import load_config

    cfg = load_config(None, ["train.recipe=flip", "train.beta2=0.9"])
    t, m, a = cfg.train, cfg.model, cfg.data.augment
    assert (t.lr, t.lr_scaling, t.beta1, t.weight_decay) == (4e-6, "linear", 0.9, 0.2)
    assert t.beta2 == 0.9  # set beside the recipe: wins
    assert (a.crop_scale_min, a.crop_scale_max, a.hflip) == (0.5, 1.0, True)
    assert (m.pos_embed, m.pool, m.context_length, m.init_temperature) == ("sincos", "avg", 32, 0.01)
    # FLIP: no decay on biases, norms, class token, positions; decay on the token embedding and matrices
    d = decayed_names(load_config(None, ["train.recipe=flip", "model.pos_embed=learned", "model.pool=cls"]))
    assert not d["visual.positional_embedding"] and not d["visual.class_embedding"]
    assert not d["text.positional_embedding"] and not d["visual.ln_pre.weight"] and not d["logit_scale"]
    assert d["text.token_embedding.weight"] and d["visual.transformer.blocks.0.qkv.weight"]
    # open_clip (cluster recipe): only 1-D parameters and the temperature escape decay
    d = decayed_names(load_config(None, ["train.recipe=cluster"]))
    assert d["visual.positional_embedding"] and not d["visual.class_embedding"]
    assert load_config(None, ["train.recipe=cluster"]).model.context_length == 77


def test_the_scaling_family_spans_30x_in_non_embedding_parameters_with_depth_growing():
    from maskvlp.model import CLIP, SCALING_FAMILY

    sizes = []
    for name in SCALING_FAMILY:
        model = CLIP(vision=name, text=name, image_size=32, patch_size=8, embed_dim=32, context_length=16)
        counts = model.nonembedding_params()
        sizes.append(counts["vision"] + counts["text"])
    assert len(sizes) >= 5 and sizes == sorted(sizes) and sizes[-1] / sizes[0] >= 30
    depths = [shape.layers for shape in SCALING_FAMILY.values()]
    assert depths == sorted(depths) and depths[-1] > depths[0]
