"""Train a child on text with the Hugging Face `Trainer`, distilling from a teacher's logits.

`distill(child, tokenizer, text, out, teacher=...)` packs the tokenised text into blocks
of a fixed length and trains with `DistillTrainer`, whose loss is `(1 - alpha) *
cross-entropy + alpha * T² * KL(teacher || student)` on logits divided by the
temperature T (the T² keeps the gradient's scale independent of T). The teacher is
frozen, in eval mode, and its logits are computed under `no_grad` and moved to the
student's device. Without a teacher it is plain next-token training. The Trainer brings
DDP and FSDP: the same call runs under `torchrun` or `accelerate launch`
(docs/training.md).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import PlanError
from .io.output import check_output, record_json, staged_folder

if TYPE_CHECKING:
    from transformers import Trainer

__all__ = ["distill", "distillation_loss", "DistillTrainer", "pack", "check_vocab", "check_mix"]  # noqa: F822 - DistillTrainer: made on first use (__getattr__)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    cross_entropy: torch.Tensor,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """`(1 - alpha) * cross_entropy + alpha * T² * KL(teacher || student)`, the KL at
    temperature T averaged over tokens; logits are (..., vocab)."""
    vocab = student_logits.shape[-1]
    student = F.log_softmax(student_logits.float().reshape(-1, vocab) / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float().reshape(-1, vocab) / temperature, dim=-1)
    kl = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
    return (1 - alpha) * cross_entropy + alpha * temperature**2 * kl


def __getattr__(name: str) -> Any:
    """`DistillTrainer`, made when first asked for: transformers' `Trainer` takes seconds
    to import, and `pack` or `distillation_loss` do not need it."""
    if name == "DistillTrainer":
        return _trainer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _trainer_class() -> type:
    from transformers import Trainer

    class DistillTrainer(Trainer):
        """A `Trainer` whose loss is `distillation_loss` against `teacher`'s logits; with
        `teacher=None`, the model's own next-token loss."""

        loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean

        def __init__(self, *args, teacher=None, alpha=0.5, temperature=1.0, **kwargs):
            super().__init__(*args, **kwargs)
            self.alpha, self.temperature = alpha, temperature
            self.teacher = teacher
            if teacher is not None:
                self.teacher = teacher.requires_grad_(False).eval().to(self.args.device)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            outputs = model(**inputs)  # labels are in inputs: outputs.loss is the cross-entropy
            loss = outputs.loss
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_logits = self.teacher(input_ids=inputs["input_ids"]).logits
                teacher_logits = teacher_logits.to(outputs.logits.device)
                loss = distillation_loss(
                    outputs.logits, teacher_logits, loss, self.alpha, self.temperature
                )
            return (loss, outputs) if return_outputs else loss

    DistillTrainer.__qualname__ = "DistillTrainer"
    return DistillTrainer


def pack(tokenizer: Any, text: str, block_size: int) -> torch.Tensor:
    """The text's token ids cut into consecutive blocks: (blocks, block_size); the rest
    is dropped. Less text than one block is a `PlanError`."""
    ids = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
    blocks = ids.numel() // block_size
    if blocks == 0:
        raise PlanError(
            f"the text is too short: {ids.numel()} tokens, less than one block of "
            f"{block_size} (give more text, or a smaller block size)"
        )
    return ids[: blocks * block_size].view(blocks, block_size)


class _Blocks(torch.utils.data.Dataset):
    def __init__(self, blocks: torch.Tensor):
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[i], "labels": self.blocks[i]}


def check_vocab(child: nn.Module, teacher: nn.Module) -> None:
    """`PlanError` unless the child and the teacher score the same number of tokens."""
    a = child.get_output_embeddings().weight.shape[0]
    b = teacher.get_output_embeddings().weight.shape[0]
    if a != b:
        raise PlanError(
            f"the child's vocabulary has {a} tokens and the teacher's {b}: distillation "
            "compares their logits token by token, so both must share one tokenizer "
            "(distil from the parent the child was cut from)"
        )


def check_mix(alpha: float, temperature: float) -> None:
    """`PlanError` unless 0 <= alpha <= 1 and temperature > 0."""
    if not 0 <= alpha <= 1 or temperature <= 0:
        raise PlanError(
            f"alpha must be in [0, 1] and temperature > 0, not {alpha} and {temperature}"
        )


HELD_OUT = 64  # blocks at most: the loss before and after is measured on the CPU too


def distill(
    child: nn.Module,
    tokenizer: Any,
    data: str | torch.Tensor,
    out: str | Path,
    *,
    teacher: nn.Module | None = None,
    alpha: float = 0.5,
    temperature: float = 1.0,
    block_size: int = 256,
    batch_size: int = 8,
    steps: int = 100,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    force: bool = False,
    record: dict | None = None,
    **training_args: Any,
) -> dict[str, float]:
    """Train `child` for `steps` optimizer steps on `data` (a text, packed into blocks of
    `block_size` tokens; or a (blocks, length) tensor of token ids) with AdamW, betas
    (0.9, 0.95), 10% warm-up and cosine decay, and write it, with `tokenizer` if given, to
    the new folder `out` (replaced only with `force`). With `teacher`, the loss is
    `distillation_loss` against its logits. Returns the Trainer's training metrics
    (`train_loss`, ...) and how many `processes` trained. With 10 blocks or more, the last
    tenth (at most `HELD_OUT` blocks) is held out: never trained on, its next-token loss
    measured before and after (`held_out_loss_before`, `held_out_loss_after`,
    `held_out_blocks`). `record` (the child's `surgeon.json`, say) is written beside the
    model as `surgeon.json`, with the training added under `distilled`. Other keyword
    arguments go to `transformers.TrainingArguments` (e.g. `bf16=True`,
    `gradient_accumulation_steps=4`)."""
    out = Path(out)
    check_output(out, force)
    if teacher is not None:
        check_vocab(child, teacher)
    check_mix(alpha, temperature)
    blocks = pack(tokenizer, data, block_size) if isinstance(data, str) else data
    held = (
        blocks[len(blocks) - min(len(blocks) // 10, HELD_OUT) :]
        if len(blocks) >= 10
        else blocks[:0]
    )
    blocks = blocks[: len(blocks) - len(held)]
    before = held_out_loss(child, held, batch_size)
    settings = {
        "max_steps": steps,
        "per_device_train_batch_size": batch_size,
        "learning_rate": lr,
        "weight_decay": weight_decay,
        "adam_beta2": 0.95,
        "lr_scheduler_type": "cosine",
        "warmup_steps": max(1, steps // 10),
        "logging_steps": max(1, steps // 10),
        "save_strategy": "no",
        "report_to": "none",
        "dataloader_drop_last": True,
        # accelerate runs DDP over gloo only when told it is on the CPU; else every
        # process of torchrun would train alone
        "use_cpu": not torch.cuda.is_available(),
        "ddp_find_unused_parameters": False,
        **training_args,
    }
    from transformers import TrainingArguments

    with tempfile.TemporaryDirectory() as scratch:  # the Trainer's own output_dir
        trainer = _trainer_class()(
            model=child,
            args=TrainingArguments(output_dir=scratch, **settings),
            train_dataset=_Blocks(blocks),
            teacher=teacher,
            alpha=alpha,
            temperature=temperature,
        )
        metrics = {**trainer.train().metrics, "processes": trainer.args.world_size}
    if len(held):
        metrics["held_out_blocks"] = len(held)
        metrics["held_out_loss_before"] = before
        metrics["held_out_loss_after"] = held_out_loss(trainer.model, held, batch_size)
    if record is not None:
        training = {"teacher": teacher is not None, "steps": steps, "lr": lr}
        training |= {"weight_decay": weight_decay, "alpha": alpha, "temperature": temperature}
        record = {**record, "distilled": {**training, **metrics}}
    _save(trainer, tokenizer, out, force, record)
    return metrics


@torch.no_grad()
def held_out_loss(model: nn.Module, blocks: torch.Tensor, batch_size: int) -> float | None:
    """The mean next-token loss of `model` over `blocks` (None for none)."""
    if not len(blocks):
        return None
    training, device = model.training, next(model.parameters()).device
    model.eval()
    losses = [
        model(input_ids=b.to(device), labels=b.to(device)).loss.item() * len(b)
        for b in blocks.split(batch_size)
    ]
    model.train(training)
    return sum(losses) / len(blocks)


def _save(trainer: Trainer, tokenizer: Any, out: Path, force: bool, record=None) -> None:
    """Write the trained model once, from the main process, all at once (under FSDP every
    process takes part in gathering the full state dict)."""
    state = trainer.accelerator.get_state_dict(trainer.model)
    if trainer.is_world_process_zero():
        model = trainer.accelerator.unwrap_model(trainer.model)
        with staged_folder(out, force) as tmp:
            model.save_pretrained(tmp, state_dict=state)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            if record is not None:
                (tmp / "surgeon.json").write_text(record_json(record))
    trainer.accelerator.wait_for_everyone()
