"""A fast slice of the model-type sweep (benchmarks/sweep.py): a few families outside the
zoo, one or two per category, built tiny from their config class alone, as the full sweep
builds them. The full sweep (every model type, with ONNX) is a benchmark; its results are
docs/support.md."""

import pytest
import torch

from benchmarks.sweep import CHECKS, check_type

# Each exercises what the zoo does not: GPT-J (interleaved rotary via repeat_interleave),
# Falcon (multi-query qkv read by constant indices, a read-only head_dim), LayoutLM (a
# pooler the config sizes with the hidden size), BEiT (relative position bias, backbone
# stages re-indexed with depth), CTRL
# (sinusoidal positions as wide as the hidden size, read at computed rows), ViTDet (layers
# that change layout, channel-first layer norms), GPT-BigCode (multi-query attention),
# Whisper's decoder (its head count in decoder_attention_heads, the encoder's apart),
# SigLIP (an attention-pooling head whose heads follow the layers' cut through the config,
# nn.MultiheadAttention's unflatten sizes), ViT-MAE (patches shuffled by gather), RF-DETR's
# DINOv2 (windows of patches folded into the attention's batch: not heads), EmbeddingGemma
# 2 (per-layer inputs: one projection whose rows are cut with the layers; each layer's
# output scaled in place), T5Gemma 2 (a config per stack, nested: sizes, head counts and
# per-layer lists written into the encoder's text config; a sliding-window mask that
# transformers builds with vmap; image features written over tokens by index_put). XLM
# and ALBERT
# have tests of their own below.
# Encoder-decoders that pass: tests/test_stacks.py, on the zoo's T5 and BART.
PASSING = {
    "gptj": "decoder",
    "falcon": "decoder",
    "layoutlm": "encoder",
    "beit": "vision",
    "ctrl": "decoder",
    "vitdet": "vision",
    "whisper": "decoder",
    "siglip_vision_model": "vision",
    "vit_mae": "vision",
    "rf_detr_dinov2": "vision",
    "embedding_gemma2_text": "encoder",
    "t5gemma2": "encoder-decoder",
    "radio": "vision",  # its folder, traced on meta, indexes by a constant of unknown value
    "swin": "vision",  # stages of layers, a width each; every other layer's windows shifted
    "roformer": "encoder",  # `embedding_size`: a projection its class builds where the
    # config's embedding size differs from the hidden size (not in a child cut in both)
}
# A refused type is one line by construction of the sweep's checks (a SurgeonError's
# first line): the reasons are in docs/support.md. (Doge's skips, each scaled by a learnt
# weight, pass since: tests/test_depth.py has them on a zoo model. GPT-BigCode's
# multi-query attention has a test of its own below.)


# Whose folder check (a save_pretrained folder through the CLI, analysed on the meta
# device through its shallow twin) the slice makes too, for time only where the folder's
# path differs in kind: a constant of unknown value on meta (RADIO), stages of layers
# (Swin), per-layer inputs (EmbeddingGemma 2), a decoder whose config names its heads
# apart (Whisper), an attention-pooling head (SigLIP). The full sweep checks every type's
# folder; encoder-decoder folders go through the CLI in tests/test_stacks.py too.
FOLDER_IN_THE_SLICE = {"radio", "swin", "embedding_gemma2_text", "whisper", "siglip_vision_model"}
# Whose base model class (`AutoModel`'s) the slice checks too, beside the task head: a
# decoder's and a vision backbone's (the full sweep checks every type's).
BASE_IN_THE_SLICE = {"falcon": "FalconModel", "beit": "BeitModel"}


@pytest.mark.parametrize("model_type", sorted(PASSING))
def test_family_outside_the_zoo_passes_every_check(model_type):
    skip = ("onnx",) if model_type in FOLDER_IN_THE_SLICE else ("onnx", "folder")
    skip += () if model_type in BASE_IN_THE_SLICE else ("base",)
    record = check_type(model_type, skip=skip)  # ONNX: tests/test_onnx.py, on the zoo
    assert record["buildable"], record.get("why")
    assert record["category"] == PASSING[model_type]
    checks = dict(record["checks"])
    failed = {k: c for k, c in checks.items() if c["result"] != "ok"}
    assert not failed, failed
    assert set(record["checks"]) == set(CHECKS) - set(skip)
    if model_type in BASE_IN_THE_SLICE:
        base = record["base"]
        assert base["cls"] == BASE_IN_THE_SLICE[model_type]
        assert {k: c["result"] for k, c in base["checks"].items()} == dict.fromkeys(
            set(CHECKS) - set(skip), "ok"
        )
        assert record["passed"]


def test_multi_query_attention_keeps_its_one_key_value_head():
    import surgeon
    from benchmarks.sweep import build

    model, inputs = build("gpt_bigcode")[:2]
    parent = surgeon.prepare(model, inputs)
    with pytest.raises(surgeon.PlanError, match="one key/value head shared by every query head"):
        surgeon.apply(parent, {"target": {"num_heads": 2, "num_kv_heads": 2}})
    child = surgeon.apply(parent, {"target": {"num_heads": 2, "hidden_size": 32}})
    assert child.config.n_head == 2 and child.config.multi_query


def test_a_layer_spread_over_several_module_lists_is_one_layer():
    import surgeon
    from benchmarks.sweep import build

    model, inputs = build("xlm")[:2]
    analysis = surgeon.prepare(model, inputs).analysis
    parts = ("attentions", "layer_norm1", "ffns", "layer_norm2")
    assert [sorted(layer.parts) for layer in analysis.layers] == [
        sorted(f"transformer.{p}.{i}" for p in parts) for i in range(4)
    ]
    assert analysis.stacks == ["transformer.attentions"]
    assert analysis.couplings["other_stacks"] == []
    with pytest.raises(surgeon.PlanError, match="whose parts lie in several module lists"):
        surgeon.apply(model, {"depth": [0, 0, 1]}, example_inputs=inputs)


def test_a_layer_applied_several_times_is_cut_in_width_only():
    import surgeon
    from benchmarks.sweep import build

    model, inputs = build("albert")[:2]  # one layer's weights, applied 4 times
    parent = surgeon.prepare(model, inputs)
    assert [layer.applied for layer in parent.analysis.layers] == [4]
    assert surgeon.inspect(parent).to_dict()["layers"][0]["applied"] == 4
    target = {"hidden_size": 32, "intermediate_size": 64, "num_heads": 2}
    child = surgeon.apply(parent, {"target": target})
    assert (child.config.hidden_size, child.config.intermediate_size) == (32, 64)
    assert child.config.num_hidden_layers == 4
    with pytest.raises(surgeon.PlanError, match="is applied 4 times in one forward"):
        surgeon.apply(parent, {"depth": [0, 0]})


def test_a_tensor_the_forward_never_reads_is_cut_as_the_stream_it_shares():
    """RF-DETR's DINOv2 backbone has a mask token its forward never reads (no mask is
    passed). Its hidden axis is cut at the positions the residual stream keeps: the
    ones the (read) class token keeps, found by matching the parent's distinct values."""
    import surgeon
    from benchmarks.sweep import build

    model, inputs = build("rf_detr_dinov2")[:2]
    parent = surgeon.prepare(model, inputs)
    child = surgeon.apply(
        parent, {"target": {"hidden_size": 32, "num_heads": 2}, "importance": "weight"}
    )
    cls_parent = model.embeddings.cls_token.detach().flatten()
    cls_child = child.embeddings.cls_token.detach().flatten()
    kept = [int((cls_parent - v).abs().argmin()) for v in cls_child]
    assert len(set(kept)) == 32 and kept != list(range(32))  # permuted, then cut
    torch.testing.assert_close(child.embeddings.mask_token, model.embeddings.mask_token[:, kept])


def test_a_fix_up_of_a_sub_config_joins_its_tiny_sizes():
    # gemma4's experts are its text model's, off by default: the fix-up turns them on
    # and the text config keeps the sweep's tiny sizes beside it
    from benchmarks.sweep import tiny_config

    text = tiny_config("gemma4").text_config
    assert text.enable_moe_block and text.top_k_experts == 2 and text.num_experts == 4
    assert (text.hidden_size, text.num_hidden_layers, text.vocab_size) == (64, 4, 128)
