"""Curriculum schedules: pure functions from the final patch and epochs to stages."""

from .schedules import SCHEDULES, Stage, build_stages, stage_at

__all__ = ["SCHEDULES", "Stage", "build_stages", "stage_at"]
