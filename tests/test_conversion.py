"""The authors' checkpoints convert to ours: every key has a home, and (where their code is at hand) the outputs
agree."""

import json
import os
import runpy
import sys
from pathlib import Path

import pytest
import torch

from metris_hf import MetrisForReferringSegmentation
from metris_hf.conversion import authors_config, convert_authors_key, convert_authors_state_dict

FIXTURE = Path(__file__).parent / "fixtures" / "authors_metris_state_dict.json"


def authors_keys() -> dict[str, list[int]]:
    """Names and shapes of the state dict their code builds (facts recorded from their model, not their code)."""
    return json.loads(FIXTURE.read_text())["keys"]


def test_every_authors_key_lands_on_exactly_our_state_dict():
    theirs = {key: torch.empty(shape, device="meta") for key, shape in authors_keys().items()}
    converted = convert_authors_state_dict(theirs)
    with torch.device("meta"):
        ours = MetrisForReferringSegmentation(authors_config()).state_dict()
    assert set(converted) == set(ours), (
        sorted(set(ours) - set(converted))[:5],
        sorted(set(converted) - set(ours))[:5],
    )
    wrong_shapes = {
        key: (tuple(value.shape), tuple(ours[key].shape))
        for key, value in converted.items()
        if value.shape != ours[key].shape
    }
    assert not wrong_shapes
    assert len(theirs) == 905  # of which 24 Swin relative-position indices our Swin rebuilds itself


def test_fused_projections_are_split_in_order():
    kv = torch.arange(6.0).reshape(6, 1)
    parts = convert_authors_key("net.cross1.attn.kv.weight", kv)
    assert parts["metris.decoder.blocks.3.attention.k_proj.weight"].flatten().tolist() == [0, 1, 2]
    assert parts["metris.decoder.blocks.3.attention.v_proj.weight"].flatten().tolist() == [3, 4, 5]
    tau = convert_authors_key("net.VIS.tau", torch.tensor([0.25]))  # τ itself, shape (1,), as theirs
    assert tau["metris.visual_expression_extractor.temperature"].tolist() == [0.25]


def test_an_unknown_key_is_refused_by_name():
    with pytest.raises(KeyError, match="net.extra_head.weight"):
        convert_authors_state_dict({"net.extra_head.weight": torch.zeros(2, 2)})


def build_authors_model(source: Path):
    """Their model as their train.py builds it (argument defaults: Swin-B window 12), random weights."""
    sys.path.insert(0, str(source))
    from args import get_parser
    from lib import segmentation

    args = get_parser().parse_args([])
    return segmentation.metris(pretrained=args.pretrained_swin_weights, args=args).eval()


def compare_with_authors(theirs, dtype: torch.dtype) -> float:
    """Max |ours − theirs| over the 2-class logits at 480² for two images, expressions of 20 and 7 tokens."""
    ours = MetrisForReferringSegmentation(authors_config()).eval()
    ours.load_state_dict(convert_authors_state_dict(theirs.state_dict()), strict=True)
    theirs, ours = theirs.to(dtype), ours.to(dtype)
    pixels = torch.randn(2, 3, 480, 480, dtype=dtype)
    input_ids = torch.randint(1000, 2000, (2, 20))
    input_ids[:, 0] = 101  # [CLS]
    attention_mask = torch.ones(2, 20, dtype=torch.long)
    attention_mask[1, 7:] = 0
    input_ids[1, 7:] = 0
    class_logits = {}
    ours.classifier.register_forward_hook(lambda module, args, output: class_logits.setdefault("ours", output))
    with torch.no_grad():
        expected = theirs(pixels, input_ids, attention_mask, training=False)  # (2, 2, 480, 480)
        outputs = ours(pixel_values=pixels, input_ids=input_ids, attention_mask=attention_mask)
    # Their decoder ends at stride 4 and upsamples to the input with align_corners=True: so do we here.
    resize = dict(size=(480, 480), mode="bilinear", align_corners=True)
    difference = (torch.nn.functional.interpolate(class_logits["ours"], **resize) - expected).abs().max().item()
    single = torch.nn.functional.interpolate(outputs.logits, **resize)[:, 0]
    assert (single - (expected[:, 1] - expected[:, 0])).abs().max().item() <= 2 * difference + 1e-12
    return difference


@pytest.fixture(scope="module")
def authors_source() -> Path:
    """A copy of the authors' code made runnable on CPU (stand-ins for mmcv/mmseg, no download), from the env."""
    source = os.environ.get("METRIS_AUTHORS_SRC")
    if not source:
        pytest.skip("METRIS_AUTHORS_SRC is not set: no CPU-runnable copy of the authors' code to compare with")
    return Path(source)


@pytest.mark.slow
def test_converted_authors_weights_give_their_logits(authors_source):
    torch.manual_seed(0)
    difference = compare_with_authors(build_authors_model(authors_source), torch.float32)
    print(f"float32, their random init: max |ours - theirs| = {difference:.2e}")
    assert difference < 1e-4


@pytest.mark.slow
def test_every_converted_tensor_is_used_as_theirs(authors_source):
    """Their init leaves gates, biases and BatchNorm statistics at zero, which would hide a wrong mapping of
    them: perturb every tensor and compare in float64, where only a real difference can exceed rounding."""
    torch.manual_seed(1)
    theirs = build_authors_model(authors_source)
    with torch.no_grad():
        for name, tensor in theirs.state_dict().items():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.02)
            if name.endswith("running_var"):
                tensor.abs_()
        theirs.net.VIS.tau.fill_(0.07)
    difference = compare_with_authors(theirs, torch.float64)
    print(f"float64, every tensor perturbed: max |ours - theirs| = {difference:.2e}")
    assert difference < 1e-8


def test_a_metris_hf_01_checkpoint_warm_starts_todays_model():
    """The embedded checkpoint of metris-hf 0.1 (names and shapes recorded) seeds today's layout of its shape
    (scripts/dev/warm_start_from_legacy.py, the maintainer's tool that rebuilt the embedded checkpoint)."""
    from metris_hf.testing_utils import small_metris_config

    script = Path(__file__).resolve().parents[1] / "scripts" / "dev" / "warm_start_from_legacy.py"
    warm_start_from_legacy = runpy.run_path(str(script))["warm_start_from_legacy"]

    recorded = json.loads((FIXTURE.parent / "metris_hf_0.1_small_state_dict.json").read_text())["keys"]
    torch.manual_seed(0)
    legacy = {key: torch.randn(shape) for key, shape in recorded.items()}
    model = MetrisForReferringSegmentation(small_metris_config())
    fresh = warm_start_from_legacy(model, legacy)
    # Only what today's layout added starts from init: Mix-FFN convolutions and the self-attention context norms.
    assert fresh and all(
        key.endswith(("mlp.dwconv.weight", "mlp.dwconv.bias", "norm_kv.weight", "norm_kv.bias")) for key in fresh
    ), fresh
    state = model.state_dict()
    torch.testing.assert_close(state["classifier.weight"], legacy["decoder.classifier.weight"])
    torch.testing.assert_close(
        state["metris.vision_encoder.backbone.swin.encoder.layers.0.blocks.0.attention.q_proj.weight"],
        legacy["vision_encoder.backbone.encoder.layers.0.blocks.0.attention.self.query.weight"],
    )
    old_fc1 = legacy["decoder.blocks.3.mlp.fc1.weight"]  # the decoder's MLP grew from 2× to 4×
    torch.testing.assert_close(state["metris.decoder.blocks.3.mlp.fc1.weight"][: old_fc1.shape[0]], old_fc1)
    assert state["metris.decoder.blocks.3.mlp.fc2.weight"][:, old_fc1.shape[0] :].abs().sum() == 0
    dwconv = state["metris.decoder.blocks.3.mlp.dwconv.weight"]
    assert dwconv[:, 0, 1, 1].eq(1).all() and dwconv.abs().sum() == dwconv.shape[0]  # starts as the identity
