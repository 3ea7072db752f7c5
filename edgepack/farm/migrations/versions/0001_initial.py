"""Initial farm schema: runs, devices, jobs, results.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _time(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("farm", sa.String(200), nullable=False),
        sa.Column("config_sha256", sa.String(64), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("executor", sa.String(200), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("edgepack_version", sa.String(50), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        _time("started_at"),
        _time("finished_at", nullable=True),
        sa.Column("resumes", sa.Integer(), nullable=False),
    )
    op.create_index("ix_runs_farm", "runs", ["farm"])
    op.create_table(
        "devices",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("profile", sa.String(200), nullable=False),
        sa.Column("runner", sa.String(500), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        _time("updated_at"),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("device_id", sa.String(200), sa.ForeignKey("devices.id"), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("source", sa.String(1000), nullable=False),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("recipe", sa.String(200), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        _time("started_at", nullable=True),
        _time("finished_at", nullable=True),
        sa.UniqueConstraint("run_id", "device_id", "model", "target", "recipe", name="uq_jobs_key"),
    )
    op.create_index("ix_jobs_run_id", "jobs", ["run_id"])
    floats = ["p50", "p95", "mean", "std", "min", "max"]
    # p90/p99 and the CIs need per-iteration samples, which summary-only tools (benchmark_model) do not give.
    sample_stats = ["p90", "p99", "p50_ci_low", "p50_ci_high", "p99_ci_low", "p99_ci_high"]
    optional_floats = ["cold_start_ms", "peak_mem_mb", "energy_mj", "accuracy", "accuracy_reference", "accuracy_max_drop"]
    op.create_table(
        "results",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id"), nullable=False, unique=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("device_id", sa.String(200), sa.ForeignKey("devices.id"), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("recipe", sa.String(200), nullable=False),
        sa.Column("runner", sa.String(500), nullable=False),
        sa.Column("runtime", sa.String(100), nullable=False),
        sa.Column("precision", sa.String(50), nullable=False),
        sa.Column("iterations", sa.Integer(), nullable=False),
        *(sa.Column(name, sa.Float(), nullable=False) for name in floats),
        *(sa.Column(name, sa.Float(), nullable=True) for name in sample_stats),
        *(sa.Column(name, sa.Float(), nullable=True) for name in optional_floats[:3]),
        sa.Column("accuracy_metric", sa.String(100), nullable=True),
        *(sa.Column(name, sa.Float(), nullable=True) for name in optional_floats[3:]),
        sa.Column("source_sha256", sa.String(64), nullable=True),
        sa.Column("bundle_sha256", sa.String(64), nullable=True),
        sa.Column("artifact_sha256", sa.String(64), nullable=True),
        sa.Column("toolchain", sa.JSON(), nullable=False),
        sa.Column("latencies_ms", sa.JSON(), nullable=False),
        sa.Column("bench", sa.JSON(), nullable=False),
        _time("created_at"),
    )
    op.create_index("ix_results_run_id", "results", ["run_id"])
    op.create_index("ix_results_created_at", "results", ["created_at"])


def downgrade() -> None:
    for index, table in (("ix_results_created_at", "results"), ("ix_results_run_id", "results"),
                         ("ix_jobs_run_id", "jobs"), ("ix_runs_farm", "runs")):
        op.drop_index(index, table_name=table)
    for table in ("results", "jobs", "devices", "runs"):
        op.drop_table(table)
