"""What several test files share: the standard shrink plan, a parent's fingerprint, the
output of a model, a few training steps. Tests import this (and `tests.zoo`), never
each other."""

from __future__ import annotations

import hashlib

import torch

from surgeon.frontends import output_tensors
from tests.zoo import VOCAB

__all__ = ["GQA", "analysis_groups", "fingerprint", "graph_nodes", "out", "shrink_plan", "train"]

GQA = {"llama", "qwen2", "qwen3", "mistral", "phi3", "phi", "gemma", "gemma2"}


def fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of every tensor of the state dict, by name: equal iff nothing changed."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def shrink_plan(name: str) -> dict:
    """About half the hidden size, FFN and heads, with legal KV groups."""
    ffn = 128 if name == "nanogpt" else 48
    kv = 1 if name in GQA else 2
    target = {"hidden_size": 32, "intermediate_size": ffn, "num_heads": 2, "num_kv_heads": kv}
    return {"target": target}


def out(model, inputs) -> torch.Tensor:
    """The first output tensor (logits, or the last hidden state) of `model` on `inputs`."""
    return output_tensors(inputs.call(model))[0]


def train(model, inputs, steps: int) -> list[float]:
    """`steps` AdamW steps towards fixed random targets; the losses."""
    model.train()
    torch.manual_seed(0)
    logits = out(model, inputs)
    target = torch.randint(0, logits.shape[-1], logits.shape[:-1])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        logits = out(model, inputs)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, -2), target.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def permuted_through_the_cli(model, folder):
    """`model` saved to `folder/parent` as users hold it, `surgeon inspect` and a
    permute-only `surgeon apply` run on it through the CLI (inputs derived by surgeon);
    the child folder reloaded in the parent's class."""
    from surgeon.cli import main

    model.save_pretrained(folder / "parent")
    plan = folder / "plan.yaml"
    plan.write_text("importance: weight\n")
    args = ["--model", str(folder / "parent")]
    assert main(["inspect", *args]) == 0
    assert main(["apply", *args, "--plan", str(plan), "--out", str(folder / "child")]) == 0
    return type(model).from_pretrained(folder / "child").eval()


def assert_embedding_is_a_hand_slice(parent, child, kept_hidden: list[int]) -> None:
    """The child's input embedding (its first matrix) is the parent's with the residual
    axis taken by hand at the positions `kept_hidden` (as surgeon.json records them):
    embeddings are cut, never rescaled."""

    def matrix(model):
        return next(p for p in model.get_input_embeddings().parameters() if p.dim() >= 2)

    old, new = matrix(parent).detach(), matrix(child).detach()
    hidden = parent.config.get_text_config().hidden_size
    (axis,) = [i for i, size in enumerate(old.shape) if size == hidden]
    reference = old.index_select(axis, torch.tensor(kept_hidden))
    assert torch.equal(new, reference.to(new.dtype)), "the embedding is not the hand slice"


def batches(example: dict, count: int = 3) -> list[dict]:
    """Calibration batches of the example's form, with fresh values."""
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(count):
        batch = dict(example)
        if "input_ids" in batch:
            batch["input_ids"] = torch.randint(3, VOCAB, example["input_ids"].shape, generator=g)
        else:
            batch["pixel_values"] = torch.randn(example["pixel_values"].shape, generator=g)
        out.append(batch)
    return out


def assert_child_is_a_hand_slice(model, inputs: dict, child, want: dict) -> None:
    """`child` holds exactly the tensors `want` (the parent's, sliced by hand), and a
    fresh model of `model`'s class built from the child's config and holding them
    computes the child's output on `inputs`."""
    got = child.state_dict()
    assert set(got) == set(want)
    for key, tensor in want.items():
        torch.testing.assert_close(got[key], tensor, atol=0, rtol=0, msg=key)
    fresh = type(model)(child.config).eval()
    fresh.load_state_dict(want)
    with torch.no_grad():  # logits, or the last hidden state of a model without a head
        got, expect = output_tensors(child(**inputs))[0], output_tensors(fresh(**inputs))[0]
    torch.testing.assert_close(got, expect, atol=1e-5, rtol=1e-5)


def graph_nodes(graph) -> list:
    """A traced graph's nodes as what the passes read of them: name, op, target,
    arguments, the value's shape, stride, offset, dtype and device, module stack, source."""
    out = []
    for n in graph.graph.nodes:
        val = n.meta.get("val")
        if isinstance(val, torch.Tensor):
            val = (tuple(val.shape), val.stride(), val.storage_offset(), val.dtype, val.device)
        meta = (repr(val), repr(n.meta.get("nn_module_stack")), n.meta.get("stack_trace"))
        out.append((n.name, n.op, str(n.target), repr(n.args), repr(n.kwargs), *meta))
    return out


def analysis_groups(analysis) -> tuple:
    """An analysis's layers (groups, stream values), groups and tensors' axes."""
    layers = [
        (x.name, x.heads, x.kv, x.ffn, x.experts, x.input.name, x.output.name, x.applied)
        for x in analysis.layers
    ]
    groups = sorted(
        (g.id, g.size, g.role, g.movable, sorted(g.members)) for g in analysis.groups.values()
    )
    return layers, groups, analysis.residual, sorted(analysis.dims.tensors.items())
