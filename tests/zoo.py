"""The model zoo: the one place that builds test models.

Every entry is small (seconds to build and trace), has random weights drawn from a fixed
seed, and comes with example inputs. `build(name)` returns `(model, example_inputs)` with
the model in eval mode; `example_inputs` is a dict of keyword arguments for Hugging Face
models and a tuple of positional arguments for plain modules. Each entry also works as a
`--model tests/zoo.py:NAME` factory for the CLI.

Sizes are chosen so that every dimension is distinct where the analysis must tell them
apart: hidden 64, FFN 96 (or 128), 4 query heads, 2 KV groups, head_dim 16, 3 layers,
vocab 128.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BATCH",
    "SEQ",
    "NAMES",
    "HF_NAMES",
    "LAYOUT_NAMES",
    "LOOP_NAMES",
    "STREAM_NAMES",
    "build",
    "stream_inputs",
    "nanogpt",
    "untraceable",
    "unsupported_op",
]

BATCH, SEQ, VOCAB, SEED = 2, 8, 128, 0


# ---------------------------------------------------------------------------------------
# nanoGPT: pre-LN, fused qkv, tied head, GELU MLP, as in karpathy/nanoGPT model.py
# ---------------------------------------------------------------------------------------
@dataclass
class GPTConfig:
    block_size: int = 32
    vocab_size: int = VOCAB
    n_layer: int = 3
    n_head: int = 4
    n_embd: int = 64
    bias: bool = True


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.n_head = config.n_head
        self.n_embd = config.n_embd

    def forward(self, x):
        B, T, C = x.size()  # (B, T, C)
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx):
        b, t = idx.size()  # (B, T)
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        return self.lm_head(x)  # (B, T, vocab)


def nanogpt(device: str = "cpu"):
    """nanoGPT-style model; traced with torch.fx.symbolic_trace (`frontend="fx"`)."""
    torch.manual_seed(SEED)
    with torch.device(device):
        model = GPT(GPTConfig()).eval()
    return model, (_tokens(),)


class _Untraceable(nn.Module):
    """Branches on a tensor's value read through numpy: neither torch.export nor torch.fx
    can trace it (nor specialise it, as export does a branch on a tensor's value)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        y = self.proj(x)
        if y.detach().numpy().sum() > 0:
            return y
        return -y


def untraceable():
    torch.manual_seed(SEED)
    return _Untraceable().eval(), (torch.randn(2, 8),)


class _Warns(nn.Module):
    """A forward that warns: tests that a recalled trace gives its warnings again."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        warnings.warn("a warning from the forward", UserWarning, stacklevel=1)
        return self.proj(x)


def warns():
    torch.manual_seed(SEED)
    return _Warns().eval(), (torch.randn(2, 8),)


# ---------------------------------------------------------------------------------------
# Hugging Face models from small configs
# ---------------------------------------------------------------------------------------
_CAUSAL = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    use_cache=False,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def _hf_configs():
    import transformers as tf

    return {
        "gpt2": (
            tf.GPT2LMHeadModel,
            tf.GPT2Config(
                vocab_size=VOCAB,
                n_positions=64,
                n_embd=64,
                n_layer=3,
                n_head=4,
                n_inner=96,
                use_cache=False,
                bos_token_id=1,
                eos_token_id=2,
            ),
        ),
        "llama": (tf.LlamaForCausalLM, tf.LlamaConfig(**_CAUSAL, tie_word_embeddings=True)),
        "qwen2": (tf.Qwen2ForCausalLM, tf.Qwen2Config(**_CAUSAL, tie_word_embeddings=False)),
        # per-head q/k norms
        "qwen3": (tf.Qwen3ForCausalLM, tf.Qwen3Config(**_CAUSAL, head_dim=16)),
        "mistral": (tf.MistralForCausalLM, tf.MistralConfig(**_CAUSAL, sliding_window=None)),
        "phi3": (tf.Phi3ForCausalLM, tf.Phi3Config(**_CAUSAL)),
        "phi": (tf.PhiForCausalLM, tf.PhiConfig(**_CAUSAL, partial_rotary_factor=0.5)),
        "gemma": (tf.GemmaForCausalLM, tf.GemmaConfig(**_CAUSAL, head_dim=16)),
        "gemma2": (
            tf.Gemma2ForCausalLM,
            tf.Gemma2Config(
                **_CAUSAL,
                head_dim=16,
                sliding_window=4,
                query_pre_attn_scalar=16,
            ),
        ),
        "gpt_neox": (
            tf.GPTNeoXForCausalLM,
            tf.GPTNeoXConfig(
                vocab_size=VOCAB,
                hidden_size=64,
                intermediate_size=96,
                num_hidden_layers=3,
                num_attention_heads=4,
                max_position_embeddings=64,
                rotary_pct=0.5,
                use_parallel_residual=True,
                use_cache=False,
            ),
        ),
        "opt": (
            tf.OPTForCausalLM,
            tf.OPTConfig(
                vocab_size=VOCAB,
                hidden_size=64,
                ffn_dim=96,
                num_hidden_layers=3,
                num_attention_heads=4,
                max_position_embeddings=64,
                word_embed_proj_dim=64,
                use_cache=False,
                pad_token_id=0,
            ),
        ),
        "bert": (
            tf.BertForMaskedLM,
            tf.BertConfig(
                vocab_size=VOCAB,
                hidden_size=64,
                intermediate_size=96,
                num_hidden_layers=3,
                num_attention_heads=4,
                max_position_embeddings=64,
            ),
        ),
        "vit": (
            tf.ViTForImageClassification,
            tf.ViTConfig(
                image_size=16,
                patch_size=4,
                num_channels=3,
                hidden_size=64,
                intermediate_size=96,
                num_hidden_layers=3,
                num_attention_heads=4,
                num_labels=10,
            ),
        ),
    }


def _tokens():
    g = torch.Generator().manual_seed(SEED + 1)
    return torch.randint(3, VOCAB, (BATCH, SEQ), generator=g)


def _hf(name: str, device: str = "cpu", changes: dict | None = None):
    configs = (_hf_configs, _moe_configs, _hybrid_configs, _enc_dec_configs, _stream_configs)
    configs += (_layout_configs, _loop_configs)
    cls, config = {k: v for f in configs for k, v in f().items()}[name]
    if changes:
        config = _changed(config, changes)
    torch.manual_seed(SEED)
    with torch.device(device):
        model = cls(config).eval()
    if name in STREAM_NAMES:
        return model, stream_inputs(name)
    if name == "vit":
        g = torch.Generator().manual_seed(SEED + 1)
        return model, {"pixel_values": torch.randn(BATCH, 3, 16, 16, generator=g)}
    ids = _tokens()
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if (
        name in ENC_DEC_NAMES + ENC_DEC_FOLDERS
    ):  # the decoder reads the same tokens, one step behind
        inputs["decoder_input_ids"] = torch.cat([torch.ones_like(ids[:, :1]), ids[:, :-1]], 1)
    return model, inputs


HF_NAMES = (
    "gpt2",
    "llama",
    "qwen2",
    "qwen3",
    "mistral",
    "phi3",
    "phi",
    "gemma",
    "gemma2",
    "gpt_neox",
    "opt",
    "bert",
    "vit",
)
NAMES = ("nanogpt",) + HF_NAMES
# Mixture-of-experts decoders: 8 experts, 2 per token (not in NAMES: the tests of experts
# use them; the whole-zoo tests stay as fast as they were).
MOE_NAMES = ("mixtral", "qwen2_moe", "olmoe")
# Routing and expert layouts beside those (tests/test_moe_reference.py)
MOE_SHAPES = ("deepseek_v3", "gpt_oss", "gemma4_text", "muse_spark_text", "inkling_text")


def _moe_configs():
    import transformers as tf

    moe = dict(_CAUSAL, num_experts_per_tok=2)
    return {
        "mixtral": (tf.MixtralForCausalLM, tf.MixtralConfig(**moe, num_local_experts=8)),
        "qwen2_moe": (  # routed experts beside a shared expert with its own gate
            tf.Qwen2MoeForCausalLM,
            tf.Qwen2MoeConfig(
                **moe,
                num_experts=8,
                moe_intermediate_size=32,
                shared_expert_intermediate_size=48,
                decoder_sparse_step=1,
                mlp_only_layers=[],
            ),
        ),
        "olmoe": (tf.OlmoeForCausalLM, tf.OlmoeConfig(**moe, num_experts=8)),
        # MOE_SHAPES: multi-head latent attention, a dense first layer, group-limited
        # routing (2 groups of 4 experts) with a score-correction bias, 2 shared experts
        "deepseek_v3": (
            tf.DeepseekV3ForCausalLM,
            tf.DeepseekV3Config(
                **{**moe, "num_key_value_heads": 4},
                n_routed_experts=8,
                moe_intermediate_size=32,
                n_shared_experts=2,
                n_group=2,
                topk_group=1,
                first_k_dense_replace=1,
                q_lora_rank=48,
                kv_lora_rank=32,
                qk_rope_head_dim=8,
                qk_nope_head_dim=16,
                v_head_dim=16,
                head_dim=8,
            ),
        ),
        # gate and up projections interleaved in one stacked tensor, biases on experts
        "gpt_oss": (
            tf.GptOssForCausalLM,
            tf.GptOssConfig(**moe, num_local_experts=8, head_dim=16, sliding_window=8),
        ),
        # a dense MLP beside the experts in one block, a router with a norm and scale of
        # its own, a per-expert scale gathered by the routing indices
        "gemma4_text": (
            tf.Gemma4ForCausalLM,
            tf.Gemma4TextConfig(
                **_CAUSAL,
                head_dim=16,
                global_head_dim=16,
                layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                sliding_window=8,
                enable_moe_block=True,
                num_experts=8,
                top_k_experts=2,
                moe_intermediate_size=32,
                hidden_size_per_layer_input=0,
                vocab_size_per_layer_input=VOCAB,
            ),
        ),
        # experts that read and write a space of their own (48 wide): a projection of the
        # stream into it, normed, and one out of it (`moe_hidden_size`, kept); no LM head
        "muse_spark_text": (
            tf.MuseSparkTextModel,
            tf.MuseSparkTextConfig(
                **{**moe, "num_hidden_layers": 2},
                num_local_experts=8,
                moe_intermediate_size=32,
                moe_hidden_size=48,
                head_dim=16,
                sliding_window=8,
            ),
        ),
        # a sliding-window layer (its own head counts, `swa_*`: 4 heads on 1 KV head) before
        # a full-attention one (4 on 2); shared experts scored on the router's last rows,
        # run as one stacked batch; a routing scale of 8.0, the square root of the width
        "inkling_text": (
            tf.InklingForCausalLM,
            tf.InklingTextConfig(
                **{**moe, "num_hidden_layers": 2},
                head_dim=16,
                swa_num_attention_heads=4,
                swa_num_key_value_heads=1,
                swa_head_dim=16,
                local_layer_ids=[0],
                n_routed_experts=8,
                n_shared_experts=2,
                moe_intermediate_size=32,
                sliding_window_size=8,
                rel_extent=16,
                d_rel=8,
            ),
        ),
    }


# Attention laid out otherwise (tests/test_attention_layouts.py): CodeGen's fused qkv in 4
# model-parallel blocks (8 heads = 4 blocks x 2 heads each); XLNet's relative positions,
# sines | cosines of d_model / 2 frequencies its forward computes, read by each layer's `r`.
LAYOUT_NAMES = ("codegen", "xlnet")


def _layout_configs():
    import transformers as tf

    return {
        "codegen": (
            tf.CodeGenForCausalLM,
            tf.CodeGenConfig(
                vocab_size=VOCAB,
                n_positions=64,
                n_ctx=64,
                n_embd=64,
                n_layer=2,
                n_head=8,
                rotary_dim=8,
                n_inner=96,
                use_cache=False,
                bos_token_id=1,
                eos_token_id=2,
            ),
        ),
        "xlnet": (
            tf.XLNetLMHeadModel,
            tf.XLNetConfig(
                vocab_size=VOCAB,
                d_model=64,
                n_layer=2,
                n_head=4,
                d_inner=96,
                use_mems_eval=False,
                pad_token_id=0,
                bos_token_id=1,
                eos_token_id=2,
            ),
        ),
    }


# Stacks run in a loop (tests/test_loops.py): Dory runs layer 0, then layers 1 and 2
# twice (its recurrent section), then layer 3; HRM runs its 2-layer L stack, then its
# 2-layer H stack, twice (`num_layers_per_stack` sizes both stacks).
LOOP_NAMES = ("dory", "hrm_text")


def _loop_configs():
    import transformers as tf

    return {
        "dory": (
            tf.DoryForCausalLM,
            tf.DoryConfig(
                **{**_CAUSAL, "num_hidden_layers": 4},
                head_dim=16,
                n_input_layers=1,
                n_output_layers=1,
                n_recurrent_loops=2,
                sliding_window=8,
            ),
        ),
        "hrm_text": (
            tf.HrmTextForCausalLM,
            tf.HrmTextConfig(
                **{k: v for k, v in _CAUSAL.items() if k != "num_key_value_heads"}
                | {"num_hidden_layers": 2},
                head_dim=16,
                H_cycles=2,
                L_cycles=1,
            ),
        ),
    }


# Hybrids: linear-attention layers (their own head counts, `linear_num_*_heads`) beside
# softmax attention (`num_attention_heads`), whose gated queries double q_proj's rows;
# recurrent layers whose gates are block-diagonal in `num_attention_heads` blocks beside
# one attention layer (layer 2 of 3).
HYBRID_NAMES = ("qwen3_5_text", "recurrent_gemma")


def _hybrid_configs():
    import transformers as tf

    return {
        "qwen3_5_text": (
            tf.Qwen3_5ForCausalLM,
            tf.Qwen3_5TextConfig(
                **{**_CAUSAL, "num_hidden_layers": 4},
                head_dim=16,
                layer_types=["linear_attention", "full_attention"] * 2,
                linear_num_key_heads=2,
                linear_num_value_heads=4,
                linear_key_head_dim=8,
                linear_value_head_dim=8,
            ),
        ),
        "recurrent_gemma": (
            tf.RecurrentGemmaForCausalLM,
            tf.RecurrentGemmaConfig(
                **{k: v for k, v in _CAUSAL.items() if k != "max_position_embeddings"},
                lru_width=64,
                attention_window_size=16,
            ),
        ),
    }


# Encoder-decoders: two stacks of layers (encoder, decoder) on one residual stream (their
# token embedding is shared); T5's first layer of each stack computes the position bias
# every later layer reads. Not in NAMES either: tests/test_stacks.py uses them.
ENC_DEC_NAMES = ("t5", "bart")
ENC_DEC_FOLDERS = ("marian", "led", "fsmt")  # through the CLI only (tests/test_stacks.py)


def _enc_dec_configs():
    import transformers as tf

    special = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    return {
        "t5": (
            tf.T5ForConditionalGeneration,
            tf.T5Config(
                vocab_size=VOCAB,
                d_model=64,
                d_kv=16,
                d_ff=96,
                num_layers=3,
                num_decoder_layers=3,
                num_heads=4,
                use_cache=False,
                **special,
            ),
        ),
        "bart": (
            tf.BartForConditionalGeneration,
            tf.BartConfig(
                vocab_size=VOCAB,
                d_model=64,
                encoder_layers=3,
                decoder_layers=3,
                encoder_attention_heads=4,
                decoder_attention_heads=4,
                encoder_ffn_dim=96,
                decoder_ffn_dim=96,
                max_position_embeddings=64,
                use_cache=False,
                **special,
            ),
        ),
        # sinusoidal positions stored as a parameter its class does not save
        "marian": (
            tf.MarianMTModel,
            tf.MarianConfig(
                vocab_size=VOCAB,
                d_model=64,
                encoder_layers=2,
                decoder_layers=2,
                encoder_attention_heads=4,
                decoder_attention_heads=4,
                encoder_ffn_dim=96,
                decoder_ffn_dim=96,
                max_position_embeddings=64,
                use_cache=False,
                **special,
            ),
        ),
        # its forward branches on its input values (`if is_global_attn:`)
        "led": (
            tf.LEDForConditionalGeneration,
            tf.LEDConfig(
                vocab_size=VOCAB,
                d_model=64,
                encoder_layers=2,
                decoder_layers=2,
                encoder_attention_heads=4,
                decoder_attention_heads=4,
                encoder_ffn_dim=96,
                decoder_ffn_dim=96,
                max_encoder_position_embeddings=64,
                max_decoder_position_embeddings=64,
                attention_window=4,
                use_cache=False,
                **special,
            ),
        ),
        # derives a decoder mask from pad tokens unless given one
        "fsmt": (
            tf.FSMTForConditionalGeneration,
            tf.FSMTConfig(
                langs=["en", "de"],
                src_vocab_size=VOCAB,
                tgt_vocab_size=VOCAB,
                d_model=64,
                encoder_layers=2,
                decoder_layers=2,
                encoder_attention_heads=4,
                decoder_attention_heads=4,
                encoder_ffn_dim=96,
                decoder_ffn_dim=96,
                max_position_embeddings=64,
                use_cache=False,
                **special,
            ),
        ),
    }


# Several residual streams: a stack with an input of its own (Whisper's audio encoder, a
# vision tower) writes a stream of its own, which another stack reads (cross-attention, a
# projector) or meets only at the output (CLIP's and SigLIP's two towers). The towers have
# other widths where the model allows it (CLIP's vision tower and LLaVA's are 48 wide).
# tests/test_streams.py uses them.
STREAM_NAMES = ("whisper", "clip", "siglip", "llava")
_PIXELS, _PATCH = 16, 4  # 16 patches per image
_TEXT = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2)
_VISION = dict(
    image_size=_PIXELS,
    patch_size=_PATCH,
    hidden_size=48,
    intermediate_size=80,
    num_hidden_layers=2,
    num_attention_heads=4,
)


def _stream_configs():
    import transformers as tf

    heads = dict(num_attention_heads=4, max_position_embeddings=32, bos_token_id=1, eos_token_id=2)
    return {
        "whisper": (
            tf.WhisperForConditionalGeneration,
            tf.WhisperConfig(
                vocab_size=VOCAB,
                num_mel_bins=8,
                d_model=64,
                encoder_layers=2,
                decoder_layers=2,
                encoder_attention_heads=4,
                decoder_attention_heads=4,
                encoder_ffn_dim=96,
                decoder_ffn_dim=96,
                max_source_positions=8,  # 16 frames of audio
                max_target_positions=16,
                use_cache=False,
                pad_token_id=0,
                bos_token_id=1,
                eos_token_id=2,
                decoder_start_token_id=1,
                begin_suppress_tokens=None,
            ),
        ),
        "clip": (
            tf.CLIPModel,
            tf.CLIPConfig(text_config={**_TEXT, **heads}, vision_config=_VISION, projection_dim=32),
        ),
        "siglip": (  # no projections: both towers end at the width of the joint space
            tf.SiglipModel,
            tf.SiglipConfig(
                text_config={**_TEXT, **heads},
                vision_config={**_VISION, "hidden_size": 64, "intermediate_size": 96},
            ),
        ),
        "llava": (
            tf.LlavaForConditionalGeneration,
            tf.LlavaConfig(
                vision_config=tf.CLIPVisionConfig(**_VISION),
                text_config=tf.LlamaConfig(**{**_CAUSAL, "num_hidden_layers": 2}),
                image_token_index=VOCAB - 1,
                image_seq_length=(_PIXELS // _PATCH) ** 2,
                vision_feature_layer=-1,
            ),
        ),
    }


def stream_inputs(name: str, batch: int = BATCH, seed: int = SEED + 1) -> dict:
    """Inputs for a model of `STREAM_NAMES`: tokens (a LLaVA prompt starts with an image's
    tokens), pixels or audio features."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB - 1, (batch, SEQ), generator=g)
    pixels = torch.randn(batch, 3, _PIXELS, _PIXELS, generator=g)
    if name == "whisper":
        start = torch.ones_like(ids[:, :1])
        features = torch.randn(batch, 8, 16, generator=g)
        return {"input_features": features, "decoder_input_ids": torch.cat([start, ids], 1)}
    if name == "llava":
        image = torch.full((batch, (_PIXELS // _PATCH) ** 2), VOCAB - 1)
        ids = torch.cat([image, ids], 1)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}


# families whose config names head_dim apart from hidden_size / num_attention_heads
TINY_FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma", "phi3", "gpt2", "gpt_neox")
_OWN_HEAD_DIM = ("qwen3", "gemma", "llama")
_MHA = ("gpt2", "gpt_neox")  # one key/value head per query head


def tiny_decoder(family, heads, kv, head_dim, ffn, layers, tied, hidden=None):
    """A zoo decoder of `family` (one of `TINY_FAMILIES`) with other sizes: `hidden`
    defaults to heads x head_dim (a family in `_OWN_HEAD_DIM` may take another); `kv` is
    ignored where the family has one key/value head per query head. Returns `(model,
    inputs)` as `build` does, or raises `ValueError` where the family's config refuses
    the sizes."""
    cls, base = _hf_configs()[family]
    hidden = heads * head_dim if hidden is None else hidden
    if family == "gpt2":
        sizes = dict(n_embd=hidden, n_head=heads, n_inner=ffn, n_layer=layers)
    else:
        sizes = dict(hidden_size=hidden, num_attention_heads=heads, intermediate_size=ffn)
        sizes["num_hidden_layers"] = layers
        if family not in _MHA:
            sizes["num_key_value_heads"] = kv
        if family in _OWN_HEAD_DIM:
            sizes["head_dim"] = head_dim
    kwargs = {k: v for k, v in base.to_diff_dict().items() if k != "layer_types"}
    torch.manual_seed(SEED)
    try:
        model = cls(type(base)(**{**kwargs, **sizes, "tie_word_embeddings": tied})).eval()
    except Exception as e:  # noqa: BLE001 (the config class's own validation, any kind)
        raise ValueError(f"{family} refuses these sizes: {e}") from e
    ids = _tokens()
    return like_trained(model), {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def build(name: str, device: str = "cpu", **changes):
    """Build zoo model `name`: returns `(model in eval mode, example_inputs)`.

    `device="meta"` builds the same architecture with no weights in memory (the inputs
    stay on the CPU: tracing moves them where the model is). `changes`: config fields
    the model is built with instead (a Hugging Face model; `num_hidden_layers=6` is a
    deeper one of the same kind, its per-layer lists, such as `layer_types`, made anew).
    """
    known = NAMES + MOE_NAMES + MOE_SHAPES + HYBRID_NAMES + ENC_DEC_NAMES + ENC_DEC_FOLDERS
    known += STREAM_NAMES + LAYOUT_NAMES + LOOP_NAMES
    if name not in known:
        raise KeyError(f"no zoo model {name!r}; known: {', '.join(known)}")
    model, inputs = nanogpt(device) if name == "nanogpt" else _hf(name, device, changes)
    return like_trained(model), inputs


def _changed(config, changes: dict):
    """`config` with `changes` (names as its class or its `attribute_map` spells them),
    built anew: lists as long as its old layer count are left to its class to derive."""
    n = config.num_hidden_layers
    fields = {
        k: v for k, v in config.to_dict().items() if not (isinstance(v, list) and len(v) == n)
    }
    mapped = {config.attribute_map.get(k, k): v for k, v in changes.items()}
    return type(config)(**{**fields, **mapped})


def like_trained(model: nn.Module, seed: int = SEED + 2) -> nn.Module:
    """Give every 1-D parameter (biases, norm weights and biases, scales, score
    corrections) distinct random values, around 1 for a norm's weights, as a trained
    model has them: an init of zeros and ones hides a wrong permutation or slice of them
    (a child that never permutes its biases still computes the parent's output)."""
    if any(p.device.type == "meta" for p in model.parameters()):
        return model
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, p in model.named_parameters():
            if p.dim() == 1:
                ones = bool((p == 1).all()) and "norm" in key.lower()
                p.copy_(0.1 * torch.randn(p.shape, generator=g) + (1 if ones else 0))
    return model


def save_letter_tokenizer(folder, sentencepiece: bool = False) -> None:
    """Save a tiny tokenizer (one token per letter, vocabulary 27) into `folder`, next to
    a zoo model whose vocabulary is at least that large, padded with unused tokens to the
    vocabulary of the config.json in `folder`. A byte-fallback BPE without merges: the kind
    llama.cpp's converter takes as a Llama tokenizer (llama.cpp wants one token per row),
    without a space prefix."""
    import json
    from pathlib import Path

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {chr(97 + i): i for i in range(26)} | {"[UNK]": 26}
    config = Path(folder) / "config.json"
    size = json.loads(config.read_text()).get("vocab_size", 27) if config.is_file() else 27
    # byte tokens (printable ASCII, and the bytes of llama.cpp's word marker U+2581) where
    # the vocabulary has room: llama.cpp's tokenizer aborts on a byte it cannot find
    marker = list(dict.fromkeys("\u2581".encode()))
    room = [f"<0x{b:02X}>" for b in [*range(0x20, 0x7F), *marker]]
    pad = room if size - 27 >= len(room) else []
    pad += [f"[unused{i}]" for i in range(27 + len(pad), size)]
    vocab |= {token: 27 + i for i, token in enumerate(pad)}
    tok = Tokenizer(models.BPE(vocab, [], unk_token="[UNK]", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", add_prefix_space=False)
    fast.save_pretrained(folder)
    if sentencepiece:  # the same vocabulary as tokenizer.model, which some converters want
        _save_sentencepiece(Path(folder) / "tokenizer.model", sorted(vocab, key=vocab.get))


def _save_sentencepiece(path, pieces: list[str]) -> None:
    """A SentencePiece model of `pieces` (in id order, no merges, no byte fallback)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    model = pb.ModelProto()
    model.trainer_spec.model_type = pb.TrainerSpec.BPE
    model.trainer_spec.vocab_size = len(pieces)
    model.trainer_spec.unk_id = pieces.index("[UNK]")
    model.trainer_spec.bos_id = model.trainer_spec.eos_id = model.trainer_spec.pad_id = -1
    model.normalizer_spec.name = "identity"
    model.normalizer_spec.add_dummy_prefix = False
    kinds = pb.ModelProto.SentencePiece
    for text in pieces:
        piece = model.pieces.add(piece=text, score=0.0)
        piece.type = kinds.UNKNOWN if text == "[UNK]" else kinds.NORMAL
    path.write_bytes(model.SerializeToString())


def _factory(name):
    def make():
        return build(name)

    make.__name__ = name
    make.__doc__ = f"Zoo model {name!r}: returns (model, example_inputs)."
    return make


for _name in HF_NAMES:
    globals()[_name] = _factory(_name)


class _Bessel(nn.Module):
    """Uses an op (a Bessel function) that has no rule in the analysis."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        return torch.special.bessel_j0(self.proj(x))


class _PerItem(nn.Module):
    """A forward that loops over the batch (Pixtral's images): export fixes the batch size."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        return torch.stack([self.proj(item) for item in x])


def ratio_sized():
    """A vision backbone whose config sizes its MLP by a ratio of the hidden size
    (Dinov2's `mlp_ratio`), with a mask token its forward does not read."""
    import transformers as tf

    config = tf.Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
    )
    torch.manual_seed(SEED)
    model = like_trained(tf.Dinov2Model(config).eval())
    return model, {"pixel_values": torch.randn(2, 3, 32, 32)}


def staged():
    """A hierarchical vision backbone (Swin): two stages, each a list of two layers at a
    width of its own (16, then 32 after a patch merge that concatenates 4 neighbours),
    with per-stage lists in its config (`depths`, `num_heads`) and the MLP sized by
    `mlp_ratio`. Returns (model, inputs, the config)."""
    import transformers as tf

    config = tf.SwinConfig(
        image_size=32,
        patch_size=4,
        embed_dim=16,
        depths=[2, 2],
        num_heads=[2, 4],
        window_size=4,
        num_labels=3,
    )
    torch.manual_seed(SEED)
    model = like_trained(tf.SwinForImageClassification(config).eval())
    return model, {"pixel_values": torch.randn(2, 3, 32, 32)}, config


def staged_in_sequentials():
    """A hierarchical backbone whose stages hold their layers in an `nn.Sequential` (CvT):
    two stages of 2 and 4 layers, widths 16 and 32, per-stage lists in its config
    (`depth`, `num_heads`, ...). Returns (model, inputs)."""
    import transformers as tf

    two = {"mlp_ratio": [4.0] * 2, "qkv_bias": [True] * 2, "kernel_qkv": [3] * 2}
    two.update(padding_kv=[1] * 2, stride_kv=[2] * 2, padding_q=[1] * 2, stride_q=[1] * 2)
    two.update(attention_drop_rate=[0.0] * 2, drop_rate=[0.0] * 2, drop_path_rate=[0.0] * 2)
    config = tf.CvtConfig(
        embed_dim=[16, 32], num_heads=[2, 4], depth=[2, 4], patch_sizes=[7, 3],
        patch_stride=[4, 2], patch_padding=[2, 1], cls_token=[False, True],
        qkv_projection_method=["dw_bn"] * 2, num_labels=3, **two,
    )  # fmt: skip
    torch.manual_seed(0)
    model = like_trained(tf.CvtForImageClassification(config).eval())
    return model, {"pixel_values": torch.randn(2, 3, 32, 32)}


def staged_with_reduction():
    """A hierarchical backbone whose attention reads its keys and values through a
    strided conv as wide as its stage (SegFormer's spatial reduction: a group of its own
    in the graph, tied to the stage width by the class) and whose MLP is sized by a ratio
    per stage (`mlp_ratios`): two stages of two layers, widths 16 and 32, a config with no
    image size. Returns (model, inputs, the config)."""
    import transformers as tf

    config = tf.SegformerConfig(
        num_encoder_blocks=2, depths=[2, 2], sr_ratios=[2, 1], hidden_sizes=[16, 32],
        patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[2, 2], mlp_ratios=[4, 4],
        num_labels=3,
    )  # fmt: skip
    torch.manual_seed(SEED)
    model = like_trained(tf.SegformerForImageClassification(config).eval())
    return model, {"pixel_values": torch.randn(2, 3, 32, 32)}, config


def stages_of_one_layer():
    """A hierarchical backbone whose stages are entries of a list of lists (PVT's
    `encoder.block.0.0`), each holding one layer. Returns (model, inputs)."""
    import transformers as tf

    config = tf.PvtConfig(
        num_encoder_blocks=2, depths=[1, 1], sequence_reduction_ratios=[2, 1],
        hidden_sizes=[16, 32], patch_sizes=[4, 2], strides=[4, 2], num_attention_heads=[2, 2],
        mlp_ratios=[4, 4], image_size=32, num_labels=3,
    )  # fmt: skip
    torch.manual_seed(SEED)
    model = like_trained(tf.PvtForImageClassification(config).eval())
    return model, {"pixel_values": torch.randn(2, 3, 32, 32)}


class NumbersOut(nn.Module):
    """A module that returns numbers beside its tensor (MaskFormer-Swin's
    `hidden_states_spatial_dimensions`): (x @ w, x's width, 4)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(SEED)
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        return self.proj(x), x.shape[-1], 4


def last_layer_of_its_own():
    """A decoder whose class gives its last layer alone a bias (GPT-NeoX-Japanese, placed
    by the end of the stack): 4 layers. Returns (model, inputs)."""
    import transformers as tf

    config = tf.GPTNeoXJapaneseConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
        intermediate_multiple_size=2, max_position_embeddings=32,
    )  # fmt: skip
    torch.manual_seed(0)
    model = like_trained(tf.GPTNeoXJapaneseForCausalLM(config).eval())
    return model, (torch.randint(0, 64, (2, 8)),)


def per_item():
    torch.manual_seed(SEED)
    return _PerItem().eval(), (torch.randn(2, 8),)


def masked_autoencoder():
    """ViT-MAE's encoder, called with images only: its forward draws the noise that
    shuffles the patches (one number per image and patch, no width a plan cuts)."""
    import transformers as tf

    config = tf.ViTMAEConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    torch.manual_seed(SEED)
    model = like_trained(tf.ViTMAEModel(config).eval())
    return model, {"pixel_values": torch.randn(2, 3, 32, 32)}


class _NoisyWidth(nn.Module):
    """Noise drawn along a width a plan cuts (12 hidden units)."""

    def __init__(self):
        super().__init__()
        self.a, self.c = nn.Linear(8, 12), nn.Linear(12, 5)

    def forward(self, x):
        h = self.a(x)
        return self.c(h + 0.1 * torch.randn_like(h))


def noisy_width():
    torch.manual_seed(SEED)
    return _NoisyWidth().eval(), (torch.randn(2, 8),)


def unsupported_op():
    torch.manual_seed(SEED)
    return _Bessel().eval(), (torch.randn(2, 8),)


# ---------------------------------------------------------------------------------------
# Op cases: Linear(8 -> 12) -> op -> Linear(-> 5), one per rule that needs care. Each is
# checked by permutation in tests/test_rules.py with both frontends.
# ---------------------------------------------------------------------------------------
class _OpCase(nn.Module):
    def __init__(self, fn, width: int = 12):
        super().__init__()
        self.a = nn.Linear(8, 12)
        self.fn = fn
        self.c = nn.Linear(width, 5)

    def forward(self, x):
        return self.c(self.fn(self.a(x)))  # x (2, 3, 8)


class _Depthwise(nn.Module):
    """A depthwise causal convolution over the sequence (Mamba's, gated DeltaNet's)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(12, 12, 3, groups=12, padding=2)

    def forward(self, h):
        return self.conv(h.transpose(1, 2))[..., : h.shape[1]].transpose(1, 2)


def _no_grad_region(h):
    """A scale computed under torch.no_grad() (CPM-Ant's position buckets): export keeps
    it as a `wrap_with_set_grad_enabled` region."""
    with torch.no_grad():
        scale = h.detach().abs().mean(-1, keepdim=True) + 1
    return h * scale


def _turned(z):
    return torch.view_as_real(z * torch.polar(torch.ones_like(z.real), z.imag)).flatten(2)


OP_CASES = {
    "movedim": (lambda h: torch.movedim(h.view(2, 3, 3, 4), 2, 3).reshape(2, 3, 12), 12),
    "permute_kwargs": (lambda h: h.permute(dims=(0, 2, 1)).transpose(1, 2), 12),
    "swapaxes_kwargs": (
        lambda h: torch.swapaxes(h.view(2, 3, 3, 4), axis0=2, axis1=3).reshape(2, 3, 12),
        12,
    ),
    "numpy_T": (lambda h: h.view(2, 3, 3, 4).T.permute(3, 2, 1, 0).reshape(2, 3, 12), 12),
    "norm_keepdim": (lambda h: h / h.norm(dim=-1, keepdim=True), 12),
    "max_binary": (lambda h: torch.max(h, 2 * h), 12),
    "max_dim": (lambda h: torch.max(h.view(2, 3, 3, 4), dim=2).values, 4),
    "narrow_negative": (lambda h: h.narrow(-1, -4, 4), 4),
    "cat_kwargs": (lambda h: torch.cat(tensors=[h[..., :6], h[..., 6:]], dim=-1), 12),
    "chunk_reversed": (lambda h: torch.cat(h.chunk(3, -1)[::-1], -1), 12),
    "split_slice": (lambda h: torch.cat(h.split(4, -1)[:2], -1), 8),
    "list_index": (lambda h: h[..., [0, 2, 5]], 3),
    "layer_norm_shape": (lambda h: F.layer_norm(h, h.shape[-1:]), 12),
    # (2, 3, 12) seen as (2, 3, 3, 4): 3 "heads" of 4
    "repeat_interleave": (lambda h: h.view(2, 3, 3, 4).repeat_interleave(2, -1).flatten(2), 24),
    "repeat_interleave_sized": (
        lambda h: h.view(2, 3, 3, 4).repeat_interleave(2, -2, output_size=6).flatten(2),
        24,
    ),
    "repeat": (lambda h: h.view(2, 3, 3, 4).repeat(1, 1, 2, 1).flatten(2), 24),
    "stack": (lambda h: torch.stack([h, 2 * h], dim=-1).flatten(2), 24),
    "topk": (lambda h: torch.topk(h.view(2, 3, 3, 4), 2, dim=-1).values.flatten(2), 6),
    "sort": (lambda h: torch.sort(h.view(2, 3, 3, 4), dim=-1).values.flatten(2), 12),
    "einsum": (lambda h: torch.einsum("bsij,bsij->bsi", h.view(2, 3, 3, 4), h.view(2, 3, 3, 4)), 3),
    "pad": (lambda h: F.pad(h.view(2, 3, 3, 4), (1, 1)).flatten(2), 18),
    "expm1": (lambda h: torch.expm1(h) + torch.log1p(h.abs()), 12),
    "group_norm": (lambda h: F.group_norm(h.transpose(1, 2), 3).transpose(1, 2), 12),
    "batch_norm": (
        lambda h: F.batch_norm(h.transpose(1, 2), torch.zeros(12), torch.ones(12)).transpose(1, 2),
        12,
    ),
    "max_pool": (lambda h: F.max_pool1d(h.transpose(1, 2), 1).transpose(1, 2), 12),
    "cumsum": (lambda h: h.view(2, 3, 3, 4).cumsum(1).flip(-1).flatten(2), 12),
    # a table read at computed rows (CTRL's sinusoidal positions), the last token (CLIP's)
    "gather_rows": (lambda h: h[torch.arange(2)[:, None], torch.arange(3).flip(0)], 12),
    "gather_last": (lambda h: h[torch.arange(2), 2 * torch.ones(2, dtype=torch.long)][:, None], 12),
    "no_grad_region": (_no_grad_region, 12),
    # GIT's token types: zeros like the hidden states, one position of the hidden axis
    "select_filled": (lambda h: h + torch.zeros_like(h, dtype=torch.long)[..., 0, None], 12),
    "depthwise_conv": (_Depthwise, 12),  # a module class: built per case
    # ViT-MAE's patch shuffle: token rows gathered by an index repeated across the width
    "gather_repeated": (
        lambda h: torch.gather(
            h, 1, torch.tensor([[2, 0, 1], [1, 2, 0]])[..., None].repeat(1, 1, 12)
        ),
        12,
    ),
    # ConvBERT's span convolution (F.unfold): the channels over 3 positions of the sequence
    "im2col": (
        lambda h: (
            torch.ops.aten.im2col(h.transpose(1, 2)[..., None], [3, 1], [1, 1], [1, 0], [1, 1])
            .view(2, 12, 3, 3)
            .sum(2)
            .transpose(1, 2)
        ),
        12,
    ),
    # nn.MultiheadAttention's `unflatten(-1, (2, E))`: sizes written in the call
    "unflatten": (lambda h: h.unflatten(-1, (3, 4)).flip(-2).flatten(2), 12),
    # DINOv3's feature map: [CLS | 3 tokens] viewed as a 2 x 2 grid, the width aligned past it
    "reshape_past_cat": (
        lambda h: torch.cat([h[:, :1] * 0 + 1, h], 1).reshape(2, 2, 2, 12).flatten(1, 2),
        12,
    ),
    # overlapping windows of the sequence (Longformer's chunks, written with unfold)
    "unfold": (lambda h: h.unfold(1, 2, 1).sum(-1), 12),
    # Llama 4's rotary in complex numbers: pairs of features as one complex each, turned
    # by `polar` angles (here from the features themselves), then pairs again
    "complex_rotary": (lambda h: _turned(torch.view_as_complex(h.reshape(2, 3, 6, 2))), 12),
    # image features written over their tokens' embeddings (`embeds[mask] = features`):
    # positions picked by indices, the features axis lined up with the values'
    "index_put": (
        lambda h: torch.index_put(h, (torch.tensor([0, 1]), torch.tensor([2, 0])), 2 * h[0, :2]),
        12,
    ),
    # the same with a token mask expanded over the features (LLaVA's `masked_scatter`)
    "masked_scatter": (
        lambda h: h.masked_scatter(
            (torch.arange(3) == 1)[None, :, None].expand_as(h), 2 * h[0, :2]
        ),
        12,
    ),
    # a concatenation of one tensor, then sliced (CANINE's): one part is the axis itself
    "cat_one": (lambda h: (torch.cat([h], -1) + h)[..., :4], 4),
    # a gated linear unit over the features (FastSpeech2's conformer convolution)
    "glu": (lambda h: F.glu(h, dim=-1), 6),
    # an in-place op on a computed value (`hidden_states *= self.layer_scalar`)
    "inplace_mul": (lambda h: (h + 1).mul_(2), 12),
    # Falcon's fused multi-query layout: 4 query heads, then one key and one value head
    "constant_index": (
        lambda h: (h.view(2, 3, 6, 2)[:, :, :-2] * h.view(2, 3, 6, 2)[:, :, [-2]]).flatten(2),
        8,
    ),
}


def op_case(name: str):
    torch.manual_seed(SEED)
    fn, width = OP_CASES[name]
    fn = fn() if isinstance(fn, type) else fn
    g = torch.Generator().manual_seed(SEED + 1)
    return _OpCase(fn, width).eval(), (torch.randn(2, 3, 8, generator=g),)


class _Chunks(nn.Module):
    """Longformer's sliding chunks: heads folded into the batch, the sequence cut into
    chunks of 4 positions, read overlapping by half with `as_strided`."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 12)
        self.c = nn.Linear(4, 5)

    def forward(self, x):  # x (2, 8, 8)
        h = self.a(x).view(2, 8, 3, 4).transpose(1, 2).reshape(6, 8, 4).view(6, 2, 4, 4)
        stride = list(h.stride())
        stride[1] //= 2
        return self.c(h.as_strided(size=[6, 3, 4, 4], stride=stride))


def chunks():
    torch.manual_seed(SEED)
    return _Chunks().eval(), (torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(SEED)),)


class _StridedChunks(nn.Module):
    """Longformer's chunks of a transposed view: the sequence comes first (Longformer's
    `(seq, batch, embed)`), so folding heads into the batch is a view whose storage is
    not in its logical order, and `as_strided` reads that storage."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 12)
        self.c = nn.Linear(4, 5)

    def forward(self, x):  # x (2, 8, 8)
        h = self.a(x.transpose(0, 1)).view(8, 2, 3, 4).permute(1, 2, 0, 3).reshape(6, 8, 4)
        h = h.view(6, 2, 4, 4)
        stride = list(h.stride())
        stride[1] //= 2
        return self.c(h.as_strided(size=[6, 3, 4, 4], stride=stride))


def strided_chunks():
    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    return _StridedChunks().eval(), (torch.randn(2, 8, 8, generator=g),)


def legacy_weights():
    """ImageGPT, whose layer norm makes its weight with a legacy constructor
    (`nn.Parameter(torch.Tensor(n))`) that ignores the default device: built on the meta
    device, that weight is on the CPU."""
    import transformers as tf

    config = tf.ImageGPTConfig(
        vocab_size=VOCAB, n_positions=16, n_embd=32, n_layer=2, n_head=2, use_cache=False
    )
    torch.manual_seed(SEED)
    model = like_trained(tf.ImageGPTForCausalImageModeling(config).eval())
    return model, {"input_ids": _tokens()}


def mixed_attention():
    """ConvBERT: half its config's heads are attention heads, the other half a dynamic
    convolution's (a kernel over 3 positions computed from weights, `F.unfold` windows),
    concatenated with them before one output projection."""
    import transformers as tf

    config = tf.ConvBertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=48, embedding_size=32, conv_kernel_size=3, head_ratio=2,
        max_position_embeddings=16,
    )  # fmt: skip
    torch.manual_seed(SEED)
    ids = _tokens()
    return like_trained(tf.ConvBertModel(config).eval()), {"input_ids": ids}


def differential_attention():
    """DiffLlama: each head's two softmax maps come from the two halves of its key/value
    heads (2 here), subtracted one from the other: those heads' positions mean something."""
    import transformers as tf

    config = tf.DiffLlamaConfig(**{**_CAUSAL, "num_hidden_layers": 1})
    torch.manual_seed(SEED)
    ids = _tokens()
    return like_trained(tf.DiffLlamaForCausalLM(config).eval()), {"input_ids": ids}


class _ScaledLayer(nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.lin = nn.Linear(12, 12)
        self.register_buffer("scale", torch.tensor(scale))

    def forward(self, x):
        x = x + self.lin(x)
        x *= self.scale
        return x


class _Layers(nn.Module):
    """Residual layers of width 12 in a numbered list, then a head of 5 outputs: the toys
    below differ only in their layers."""

    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def _toy(make_layers, seq: int = 3):
    """A `_Layers` toy (its layers made after seeding) and an input of (2, seq, 12)."""
    torch.manual_seed(SEED)
    return _Layers(make_layers()).eval(), (
        torch.randn(2, seq, 12, generator=torch.Generator().manual_seed(SEED)),
    )


def scaled_layers():
    """Residual layers that end in an in-place scale of their output
    (`hidden_states *= self.layer_scalar`, EmbeddingGemma's)."""
    return _toy(lambda: [_ScaledLayer(2.0 + i) for i in range(3)])


class _ElementwiseNorm(nn.Module):
    """A layer norm written out in elementwise ops (DeBERTa's, I-BERT's)."""

    def __init__(self, n: int):
        super().__init__()
        self.weight = nn.Parameter(1 + 0.1 * torch.randn(n))
        self.bias = nn.Parameter(0.1 * torch.randn(n))

    def forward(self, h):
        mean = h.mean(-1, keepdim=True)
        var = (h - mean).pow(2).mean(-1, keepdim=True)
        return self.weight * (h - mean) / torch.sqrt(var + 1e-5) + self.bias


class _PostNormLayers(nn.Module):
    """Post-norm residual layers, `x = norm(x + f(x))`, the norm in elementwise ops: its
    weights come after the residual addition, and the next layer reads its output."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(12, 12) for _ in range(3))
        self.norms = nn.ModuleList(_ElementwiseNorm(12) for _ in range(3))
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        for layer, norm in zip(self.layers, self.norms, strict=True):
            x = norm(x + layer(x))
        return self.head(x)


def post_norm_layers():
    torch.manual_seed(SEED)
    return _PostNormLayers().eval(), (
        torch.randn(2, 3, 12, generator=torch.Generator().manual_seed(SEED)),
    )


class _GatedSkipLayer(nn.Module):
    """`x = alpha * x + f(x)`: the skip scaled by a learned vector (Doge's) or by a number
    computed from a weight (MiniMax's, MuseSpark's gate)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(12, 12)
        self.alpha = nn.Parameter(1 + 0.1 * torch.randn(12))
        self.gate = nn.Parameter(torch.randn(()))

    def forward(self, x):
        x = self.alpha * x + self.lin(x)
        return torch.sigmoid(self.gate) * x + self.lin(x).relu()


def gated_skips():
    return _toy(lambda: [_GatedSkipLayer() for _ in range(3)])


class _Branches(nn.Module):
    """Takes one of two branches by the sign of a sum (as Longformer does by whether any
    token attends globally)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        y = self.proj(x)
        return y if x.sum() > 0 else -y


def branches():
    torch.manual_seed(SEED)
    return _Branches().eval(), (
        torch.randn(2, 8, generator=torch.Generator().manual_seed(SEED)).abs(),
    )


class _BiasAfterBranch(nn.Module):
    """GPT-NeoX-Japanese's last layer: the attention's bias, expanded as the stream
    (`bias.expand_as(residual)`), is added to the branch before the residual addition."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 12)
        self.f1, self.f2 = nn.Linear(12, 12), nn.Linear(12, 12)
        self.bias = nn.Parameter(torch.randn(12))
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.f1(h)
        h = h + (self.f2(h) + self.bias.expand_as(h))
        return self.head(h)


def bias_after_branch():
    torch.manual_seed(SEED)
    return _BiasAfterBranch().eval(), (torch.randn(2, 3, 8),)


class _ParamMatmulHead(nn.Module):
    """An untied output head written as `x @ w.t()`: a linear layer, not attention."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 12)
        self.w = nn.Parameter(torch.randn(5, 12))

    def forward(self, x):
        return self.a(x) @ self.w.t()


def param_matmul_head():
    torch.manual_seed(SEED)
    return _ParamMatmulHead().eval(), (torch.randn(2, 3, 8),)


class _Headless(nn.Module):
    """An embedding and residual MLP layers of width 12, no head: the output is the
    residual stream, so its axis is cut but never reordered (an ordered group). The
    stream's positions `HEADLESS_KNOWN` are x 20, so every importance ranks them first."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 12)
        self.ups = nn.ModuleList(nn.Linear(12, 20) for _ in range(2))
        self.downs = nn.ModuleList(nn.Linear(20, 12) for _ in range(2))
        known = list(HEADLESS_KNOWN)
        with torch.no_grad():  # x 20 in every tensor along the stream
            for lin in (self.embed, *self.downs):
                lin.weight[known] *= 20
                lin.bias[known] *= 20
            for lin in self.ups:
                lin.weight[:, known] *= 20

    def forward(self, x):
        h = self.embed(x)
        for up, down in zip(self.ups, self.downs, strict=True):
            h = h + down(up(h).relu())
        return h


HEADLESS_KNOWN = (9, 2, 6)  # listed out of order: the child keeps them in the parent's


def headless():
    torch.manual_seed(SEED)
    return _Headless().eval(), (
        torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(SEED)),
    )


# Important by construction, for the importance methods (tests/test_importance.py).
KNOWN_RESIDUAL = (3, 17, 40, 51)  # embedding columns x 20: large on the whole stream
KNOWN_FFN = (5, 77, 200)  # layer 0 FFN units whose input rows are x 10
KNOWN_HEAD = 2  # layer 1 head whose value rows are x 10


def known_importance():
    """nanoGPT with a few neurons made important by scaling their weights."""
    model, example = nanogpt()
    with torch.no_grad():
        wte = model.transformer.wte.weight
        wte[:, list(KNOWN_RESIDUAL)] *= 20
        model.transformer.wpe.weight[:, list(KNOWN_RESIDUAL)] *= 20
        fc = model.transformer.h[0].mlp.c_fc
        fc.weight[list(KNOWN_FFN)] *= 10
        attn = model.transformer.h[1].attn
        hd = attn.n_embd // attn.n_head
        rows = slice(2 * attn.n_embd + KNOWN_HEAD * hd, 2 * attn.n_embd + (KNOWN_HEAD + 1) * hd)
        attn.c_attn.weight[rows] *= 10
    return model, example


# A CNN: convolutions as named attributes, no numbered list of residual blocks (no layers).
class _CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 24, 3, padding=1)
        self.head = nn.Linear(24, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.head(x.mean((2, 3)))


def cnn():
    """A small CNN: the analysis finds no layers (per-layer targets cannot apply)."""
    torch.manual_seed(SEED)
    return _CNN().eval(), (torch.randn(2, 3, 8, 8),)


def scaled_embedding():
    """A Hugging Face model whose forward makes its embedding scale a tensor from the config
    (`torch.tensor(hidden_size ** 0.5)`, T5Gemma's) and casts a module of its own to the
    dtype it has at every call (`self.router = self.router.to(self.dtype)`, Switch's)."""
    from transformers import PreTrainedConfig, PreTrainedModel

    class Config(PreTrainedConfig):
        model_type = "zoo_scaled"

        def __init__(self, vocab_size=VOCAB, hidden_size=16, intermediate_size=32, **kw):
            self.vocab_size, self.hidden_size = vocab_size, hidden_size
            self.intermediate_size, self.num_hidden_layers = intermediate_size, 2
            super().__init__(**kw)

    class Model(PreTrainedModel):
        config_class = Config

        def __init__(self, config):
            super().__init__(config)
            self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
            self.layers = nn.ModuleList(
                nn.Sequential(
                    nn.Linear(config.hidden_size, config.intermediate_size),
                    nn.GELU(),
                    nn.Linear(config.intermediate_size, config.hidden_size),
                )
                for _ in range(config.num_hidden_layers)
            )
            self.head = nn.Linear(config.hidden_size, config.vocab_size)
            self.post_init()

        def forward(self, input_ids):
            self.head = self.head.to(torch.float32)
            x = self.embed(input_ids) * torch.tensor(self.config.hidden_size**0.5)
            for layer in self.layers:
                x = x + layer(x)
            return self.head(x)

    torch.manual_seed(SEED)
    return Model(Config()).eval(), {"input_ids": _tokens()}


class _ComplexRotary(nn.Module):
    """Rotary turns in complex numbers, frequencies unsqueezed to the batch (Llama 4's):
    the ONNX exporter has no complex `unsqueeze`."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 12)
        self.c = nn.Linear(12, 5)

    def forward(self, x):
        z = torch.view_as_complex(self.a(x).unflatten(-1, (6, 2)))
        positions = torch.arange(x.shape[1], dtype=torch.float32)[:, None]
        turn = torch.polar(torch.ones(x.shape[1], 6), positions / torch.arange(1.0, 7.0))
        return self.c(torch.view_as_real(z * turn.unsqueeze(0)).flatten(2))


def complex_rotary():
    torch.manual_seed(SEED)
    return _ComplexRotary().eval(), (
        torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(SEED)),
    )


class _ExportsOtherwise(nn.Module):
    """A forward that computes something else while torch.export traces it (as export's
    graph of PaliGemma's base model does, for reasons of its own)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)

    def forward(self, x):
        return self.a(x) * (2.0 if torch.compiler.is_exporting() else 1.0)


def exports_otherwise():
    torch.manual_seed(SEED)
    return _ExportsOtherwise().eval(), (
        torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(SEED)),
    )


def parallel_blocks():
    """A Hugging Face decoder whose attention and MLP read one norm of the same stream value
    and are added one after the other (`x + attn(norm(x)) + mlp(norm(x))`, Cohere's
    layers): the MLP's residual addition skips `x + attn(...)` but reads `x`. Its norm
    weights are random (not all ones), so a wrong order of them shows."""
    import transformers as tf

    torch.manual_seed(SEED)
    model = tf.CohereForCausalLM(tf.CohereConfig(**_CAUSAL)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:  # norm weights: not all ones
                p.copy_(1 + 0.5 * torch.rand_like(p))
    return model


class _ConvMixerLayer(nn.Module):
    """A token mixer without attention (LFM2's and RecurrentGemma's short convolution):
    an input projection to 16 channels, a causal depthwise convolution along the
    sequence, an output projection; then an MLP of width 24."""

    def __init__(self):
        super().__init__()
        self.in_proj = nn.Linear(12, 16)
        self.conv = nn.Conv1d(16, 16, 3, groups=16, padding=2)
        self.out_proj = nn.Linear(16, 12)
        self.up = nn.Linear(12, 24)
        self.down = nn.Linear(24, 12)

    def forward(self, x):  # x (batch, seq, 12)
        h = self.in_proj(x).transpose(1, 2)
        h = self.conv(h)[..., : x.shape[1]].transpose(1, 2)
        x = x + self.out_proj(h)
        return x + self.down(torch.relu(self.up(x)))


def conv_mixer():
    """Layers whose token mixer is a convolution: its channels are not the FFN."""
    return _toy(lambda: [_ConvMixerLayer() for _ in range(2)], seq=5)


class _GatedConvMixerLayer(_ConvMixerLayer):
    """`_ConvMixerLayer` whose channels a gate scales, computed from the layer's input
    through a low-rank projection (rank 4) into the 16 channels (Kimi's linear
    attention's gates): the rank is neither the FFN nor the channels."""

    def __init__(self):
        super().__init__()
        self.g_a = nn.Linear(12, 4, bias=False)
        self.g_b = nn.Linear(4, 16, bias=False)

    def forward(self, x):  # x (batch, seq, 12)
        h = self.in_proj(x).transpose(1, 2)
        h = self.conv(h)[..., : x.shape[1]].transpose(1, 2)
        x = x + self.out_proj(h * torch.sigmoid(self.g_b(self.g_a(x))))
        return x + self.down(torch.relu(self.up(x)))


def gated_conv_mixer():
    """Layers whose token mixer is a convolution gated through a low-rank projection."""
    return _toy(lambda: [_GatedConvMixerLayer() for _ in range(2)], seq=5)


# ---------------------------------------------------------------------------------------
# Mixture-of-experts layouts surgeon's own check used to stop (tests/test_moe_caught.py)
# ---------------------------------------------------------------------------------------
def _off_init(model):
    """Zero-initialised matrices (a router) random, 1-D parameters off their init."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2 and not p.any():
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def minimax_norm_skips():
    """MiniMax, 3 layers: each layer's skip is its own input norm's output."""
    from transformers import MiniMaxConfig, MiniMaxForCausalLM

    config = MiniMaxConfig(
        vocab_size=64,
        hidden_size=16,
        num_attention_heads=2,
        head_dim=8,
        num_hidden_layers=3,
        num_key_value_heads=1,
        intermediate_size=16,
        num_local_experts=2,
        num_experts_per_tok=1,
        max_position_embeddings=64,
        block_size=16,
        use_cache=False,
    )
    torch.manual_seed(0)
    return _off_init(MiniMaxForCausalLM(config))


def longcat_equal_scales():
    """LongCat-Flash whose two attention scales are one float in the parent."""
    from transformers import LongcatFlashConfig, LongcatFlashForCausalLM

    # qk_head_dim 12 and hidden / q_lora_rank = 1 / 12: both scales are 12 ** -0.5
    config = LongcatFlashConfig(
        vocab_size=64,
        hidden_size=16,
        num_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        q_lora_rank=192,
        kv_lora_rank=8,
        qk_nope_head_dim=8,
        qk_rope_head_dim=4,
        v_head_dim=8,
        head_dim=4,
        ffn_hidden_size=16,
        expert_ffn_hidden_size=8,
        n_routed_experts=2,
        zero_expert_num=2,
        num_experts_per_tok=2,
        max_position_embeddings=64,
        use_cache=False,
    )
    torch.manual_seed(0)
    return _off_init(LongcatFlashForCausalLM(config))


class _SharedFloat(nn.Module):
    """Two attributes holding one float, each read on a line of its own."""

    def __init__(self):
        super().__init__()
        self.a = self.b = 0.5

    def forward(self, x):
        y = x * self.a
        return torch.mul(
            y,
            self.b,
        )


def shared_float():
    return _SharedFloat(), (torch.ones(2),)


def experts_beside_a_vision_tower():
    """A multimodal model whose text model's experts choose their implementation and whose
    vision tower (Idefics3's) refuses to be given one: transformers records each in its
    own config (Aria)."""
    import transformers as tf

    config = tf.AriaConfig(
        vision_config=tf.Idefics3VisionConfig(**_VISION),
        text_config=tf.AriaTextConfig(
            **{**_CAUSAL, "num_hidden_layers": 1, "head_dim": 16},
            moe_num_experts=4,
            moe_topk=2,
            moe_num_shared_experts=1,
        ),
        projector_patch_to_query_dict={(_PIXELS // _PATCH) ** 2: 4},
    )
    torch.manual_seed(SEED)
    model = tf.AriaForConditionalGeneration(config).eval()
    return model, {"input_ids": _tokens()}
