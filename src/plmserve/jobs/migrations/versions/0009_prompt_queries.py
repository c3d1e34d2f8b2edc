"""prompt-service queries (openprotein-python 0.17 ``v1/prompt/query``)

Revision ID: 0009
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "prompt_queries",
        sa.Column("query_id", sa.String(36), primary_key=True),
        sa.Column("owner", sa.String(200), nullable=False, index=True),
        sa.Column("created_date", sa.DateTime(timezone=True), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("content_type", sa.String(100), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("prompt_queries")
