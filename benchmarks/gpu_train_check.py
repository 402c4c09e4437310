"""Section 3 of gpu_check: CAPO training steps of a random Qwen2 model with the real vocabulary, on vs off.

The model has the Qwen2.5-0.5B shape (H 896, 24 layers, V 151,936, tied embeddings), randomly
initialised (no download). Completions come from a deterministic stand-in for generation (random ids
over the whole vocabulary, lengths varying per completion, the same for CAPO on and off), so the two
runs train on identical batches and the measured overhead is relative to the training forward and
backward only: generation, which dominates a real step, is left out (a stricter ratio than the paper's
"< 3 % of the step"). One warm-up step, then two timed steps, per run.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import statistics
import tempfile
import time
from typing import Any

import torch

QWEN_05B: dict[str, Any] = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
            "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151_936}  # fmt: skip
DRY: dict[str, Any] = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
       "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000}  # fmt: skip


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


class _StubGeneration:
    """Completion = random ids over the vocabulary, length and ids a function of (prompt, slot, step)."""

    def _generate_single_turn(
        self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False
    ):
        vocab = self.model.config.vocab_size  # type: ignore[attr-defined]
        max_len = self.max_completion_length  # type: ignore[attr-defined]
        step, rank = self.state.global_step, self.accelerator.process_index  # type: ignore[attr-defined]
        out = []
        for i, ids in enumerate(prompt_ids):
            g = torch.Generator().manual_seed(_seed(tuple(ids), rank, i, step))
            length = int(torch.randint(max_len // 2, max_len + 1, (1,), generator=g))
            out.append(torch.randint(300, vocab, (length,), generator=g).tolist())
        return out, None


def _reward(completion_ids: list[list[int]], **kwargs: Any) -> list[float]:
    """Varies within a group (so advantages are not all zero)."""
    return [float(len(c) % 7) / 6.0 for c in completion_ids]


def _run(capo_enabled: bool, device: torch.device, dry_run: bool) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import Qwen2Config, Qwen2ForCausalLM, TrainerCallback

    from capo.config import CAPOConfig
    from capo.trainer import CAPOTrainer
    from capo_app.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer(model_max_length=2048)
    shape = DRY if dry_run else QWEN_05B
    cfg = Qwen2Config(**shape, tie_word_embeddings=True, max_position_embeddings=2048,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
    torch.manual_seed(0)
    model: Any = Qwen2ForCausalLM(cfg)
    model.to(torch.float32 if dry_run else torch.bfloat16)
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            self.t0 = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - self.t0)

    with tempfile.TemporaryDirectory() as out:
        args = CAPOConfig(
            output_dir=out, use_cpu=dry_run, bf16=not dry_run, report_to=[], save_strategy="no",
            per_device_train_batch_size=8, gradient_accumulation_steps=1 if dry_run else 3,
            num_generations=4 if dry_run else 8, max_completion_length=16 if dry_run else 1024,
            max_steps=3, learning_rate=1.5e-5, logging_steps=1, seed=0, disable_tqdm=True,
            gradient_checkpointing=not dry_run, capo_enabled=capo_enabled, temperature=0.9,
            capo_support_size=8 if dry_run else 50, dataloader_num_workers=0,
        )  # fmt: skip
        trainer_cls = type("StubCAPOTrainer", (_StubGeneration, CAPOTrainer), {})
        prompts = Dataset.from_dict({"prompt": [f"{a}+{a}=" for a in range(64)]})
        trainer = trainer_cls(model=model, reward_funcs=_reward, args=args,
                              train_dataset=prompts, processing_class=tok)  # fmt: skip
        trainer.add_callback(Timer())
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with contextlib.redirect_stdout(io.StringIO()):  # the trainer prints every log line
            trainer.train()
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        logged = trainer.state.log_history
    timed = times[1:]  # the first step warms up
    return {
        "step_s": timed,
        "step_s_median": statistics.median(timed),
        "peak_bytes": peak,
        "rejection_rate": [h.get("capo/rejection_rate") for h in logged if "loss" in h],
    }


def training_overhead(device: torch.device, dry_run: bool) -> dict[str, Any]:
    """CAPO off, then on: step times, overhead %, peak memory (module docstring)."""
    off = _run(False, device, dry_run)
    on = _run(True, device, dry_run)
    overhead = 100.0 * (on["step_s_median"] / off["step_s_median"] - 1.0)
    extra = None if on["peak_bytes"] is None else on["peak_bytes"] - off["peak_bytes"]
    return {"model": DRY if dry_run else QWEN_05B, "capo_off": off, "capo_on": on,
            "overhead_percent": overhead, "peak_extra_bytes": extra}  # fmt: skip
