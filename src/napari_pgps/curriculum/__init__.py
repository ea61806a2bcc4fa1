"""Curriculum schedules (pure functions from the final patch and epochs to stages) and the PDL data curriculum."""

from .schedules import (
    RANDOM_PATCH_SCHEDULES,
    SCHEDULES,
    Schedule,
    ScheduleOptions,
    Stage,
    build_schedule,
    crops_per_case,
    growth_sizes,
    pgps_stages,
    schedule_for,
    stage_at,
    stages_laid_out_again,
)

__all__ = [
    "RANDOM_PATCH_SCHEDULES",
    "SCHEDULES",
    "Schedule",
    "ScheduleOptions",
    "Stage",
    "build_schedule",
    "crops_per_case",
    "growth_sizes",
    "pgps_stages",
    "schedule_for",
    "stage_at",
    "stages_laid_out_again",
]
