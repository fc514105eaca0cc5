"""The jobs table and job_audio, as of the first release with migrations.

A database made before migrations (its tables made by create_all, columns added
on start as they came) is brought to this revision in place: missing columns,
indexes and job_audio are added, rows kept. Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STATUS = sa.Enum("queued", "processing", "done", "error", name="jobstatus")


def _columns() -> list[sa.Column]:
    return [
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("owner", sa.String(), nullable=False, server_default=""),
        sa.Column("idempotency_key", sa.String()),
        sa.Column("audio_sha256", sa.String()),
        sa.Column("status", STATUS, nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("deadline_at", sa.Float()),
        sa.Column("started_at", sa.Float()),
        sa.Column("finished_at", sa.Float()),
        sa.Column("size_bytes", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("duration", sa.Float()),
        sa.Column("audio_path", sa.String()),
        sa.Column("options_json", sa.String(), nullable=False, server_default="{}"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("lease_until", sa.Float()),
        sa.Column("result_json", sa.String()),
        sa.Column("error", sa.String()),
        sa.Column("error_code", sa.String()),
        sa.Column("progress", sa.Float()),
        sa.Column("language", sa.String()),
        sa.Column("callback_url", sa.String()),
        sa.Column("webhook_status", sa.String()),
        sa.Column("webhook_attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("webhook_next_at", sa.Float()),
        sa.Column("webhook_error", sa.String()),
        sa.Column("webhook_delivered_at", sa.Float()),
    ]


INDEXED = ("owner", "status", "created_at", "deadline_at", "lease_until", "webhook_status")


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("jobs"):
        op.create_table("jobs", *_columns(), sa.UniqueConstraint("owner", "idempotency_key"))
    else:  # made before migrations: add what it lacks
        present = {c["name"] for c in inspector.get_columns("jobs")}
        missing = [c for c in _columns() if c.name not in present]
        if missing:
            with op.batch_alter_table("jobs") as batch:
                for column in missing:
                    column.nullable = True  # rows are there already
                    batch.add_column(column)
        unique: list[list[str | None]] = [
            list(u["column_names"]) for u in inspector.get_unique_constraints("jobs")
        ]
        unique += [
            list(i["column_names"]) for i in inspector.get_indexes("jobs") if i.get("unique")
        ]
        if ["owner", "idempotency_key"] not in unique:
            op.create_index(
                "uq_jobs_owner_idempotency_key", "jobs", ["owner", "idempotency_key"], unique=True
            )
    indexes = {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("jobs")}
    for name in INDEXED:
        if f"ix_jobs_{name}" not in indexes:
            op.create_index(f"ix_jobs_{name}", "jobs", [name])
    if not inspector.has_table("job_audio"):
        op.create_table(
            "job_audio",
            sa.Column("job_id", sa.String(), primary_key=True),
            sa.Column("data", sa.LargeBinary(), nullable=False),
        )


def downgrade() -> None:
    op.drop_table("job_audio")
    op.drop_table("jobs")
