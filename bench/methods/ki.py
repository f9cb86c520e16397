"""ki: Knowledge Inheritance (Qin et al., NAACL 2022). LARGE starts from a random init and learns
from the frozen parent as a teacher, then alone.

Loss at each step: `(1-α)·CE + α·τ²·KL(p_teacher/τ ‖ p_student/τ)` on the positions the LM loss
scores (masked positions for MLM, every position for causal LM), with the inheritance rate
`α = max(0, 1 - progress / distil_fraction)` falling linearly from 1 at the start of the run to 0
once `distil_fraction` of the budget is spent. So there are two phases: "distil", whose every
step runs the teacher forward (listed in `extra_forward`, and charged), and "train", the same
student and optimizer without the teacher.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.errors import BenchError
from bench.methods import GrowthContext, Method, StageOptimizer, register_method
from bench.objective import scored_logits
from bench.phases import Phase


def inheritance_rate(progress: float, distil_fraction: float) -> float:
    """α: 1 at the start of the run, 0 from `distil_fraction` of the budget on."""
    return max(0.0, 1.0 - progress / distil_fraction)


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """τ²·KL(p_teacher/τ ‖ p_student/τ), averaged over the scored positions (rows)."""
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
    return temperature**2 * kl


@register_method("ki")
class KnowledgeInheritance(Method):
    needs_parent = True

    @dataclass
    class Settings(StageOptimizer):
        temperature: float = 2.0  # τ of the KI paper's released script
        distil_fraction: float = 0.35  # the teacher's share of the budget (the paper: 40K of 125K steps)

        def validate(self, pair=None) -> None:
            if not self.temperature > 0:
                raise BenchError(f"ki.temperature must be > 0, got {self.temperature}")
            if not 0 < self.distil_fraction < 1:  # 1 would leave the distil phase last with a share: train.py refuses
                raise BenchError(f"ki.distil_fraction must be in (0, 1), got {self.distil_fraction}")

    def phases(self, ctx: GrowthContext):
        settings = self.settings
        if settings.temperature <= 0 or not 0 < settings.distil_fraction <= 1:
            raise BenchError(f"ki needs temperature > 0 and 0 < distil_fraction <= 1, got {settings}")
        if ctx.parent is None:
            raise BenchError("ki needs a parent model to act as the teacher")
        teacher = ctx.parent.eval().requires_grad_(False)
        student = ctx.build_large()

        def loss(batch: dict[str, torch.Tensor], step: int, progress: float) -> torch.Tensor:
            student_logits, targets = scored_logits(student, batch)
            cross_entropy = F.cross_entropy(student_logits.float(), targets)
            alpha = inheritance_rate(progress, settings.distil_fraction)
            with torch.no_grad():
                teacher_logits, _ = scored_logits(teacher, batch)
            kl = distillation_kl(student_logits, teacher_logits, settings.temperature)
            return (1.0 - alpha) * cross_entropy + alpha * kl

        yield Phase("distil", student, share=settings.distil_fraction, loss=loss, extra_forward=[teacher],
                    settings=dataclasses.asdict(settings))
        if settings.distil_fraction < 1:
            yield Phase("train", student, optimizer=settings.optimizer)
