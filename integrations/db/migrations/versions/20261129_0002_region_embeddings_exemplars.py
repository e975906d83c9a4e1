"""Region embeddings on segments and the exemplars table (learning from reviews, issue 12).

Vectors are float32 bytes (LargeBinary: BLOB on SQLite, BYTEA on PostgreSQL), no
pgvector. A CHECK constraint ties the byte length to the stored dimension
(length() counts bytes of a blob/bytea on both backends), so a vector of the
wrong length is refused by the database itself.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 07:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    with op.batch_alter_table('segments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('embedding', sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column('embedding_dim', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('embedding_model', sa.String(length=300), nullable=True))
        batch_op.create_check_constraint(
            'embedding_dim', 'embedding IS NULL OR length(embedding) = 4 * embedding_dim')

    op.create_table('exemplars',
    sa.Column('id', Id, nullable=False),
    sa.Column('segment_id', Id, nullable=True),
    sa.Column('label', sa.String(length=100), nullable=False),
    sa.Column('embedding', sa.LargeBinary(), nullable=False),
    sa.Column('embedding_dim', sa.Integer(), nullable=False),
    sa.Column('embedding_model', sa.String(length=300), nullable=False),
    sa.Column('review_id', Id, nullable=True),
    sa.Column('active', sa.Boolean(), server_default='1', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('CURRENT_TIMESTAMP'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('CURRENT_TIMESTAMP'), nullable=False),
    sa.CheckConstraint('length(embedding) = 4 * embedding_dim', name=op.f('ck_exemplars_embedding_dim')),
    sa.ForeignKeyConstraint(['review_id'], ['reviews.id'], name=op.f('fk_exemplars_review_id_reviews'),
                            ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['segment_id'], ['segments.id'], name=op.f('fk_exemplars_segment_id_segments'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_exemplars')),
    sa.UniqueConstraint('segment_id', name=op.f('uq_exemplars_segment_id'))
    )
    with op.batch_alter_table('exemplars', schema=None) as batch_op:
        batch_op.create_index('ix_exemplars_model_updated', ['embedding_model', 'updated_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_exemplars_review_id'), ['review_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('exemplars', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_exemplars_review_id'))
        batch_op.drop_index('ix_exemplars_model_updated')
    op.drop_table('exemplars')
    with op.batch_alter_table('segments', schema=None) as batch_op:
        batch_op.drop_constraint('embedding_dim', type_='check')
        batch_op.drop_column('embedding_model')
        batch_op.drop_column('embedding_dim')
        batch_op.drop_column('embedding')
