"""Which features a feature-distillation loss compares: pairs of (student tap, teacher tap)."""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_TAPS = ("body.2", "body.6", "body")  # early / middle / last before the global skip (RCAN 10 groups)


def tap_pairs(student_taps: Sequence[str], teacher_taps: Sequence[str] | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The student and teacher tap names, position by position; ``teacher_taps`` None = the same names.

    Different names are needed when the two networks have different depths (e.g. an EDSR 32-block
    teacher's ``body.20`` faces a 16-block student's ``body.9``).
    """
    student = tuple(student_taps)
    teacher = tuple(teacher_taps) if teacher_taps is not None else student
    if not student:
        raise ValueError("give at least one tap in student_taps")
    if len(teacher) != len(student):
        raise ValueError(
            f"student_taps has {len(student)} names but teacher_taps has {len(teacher)}; they are compared pairwise"
        )
    return student, teacher
