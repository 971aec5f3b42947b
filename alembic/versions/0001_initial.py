"""ledger, task queue, dead letters, sensor data, predictions

Revision ID: 0001
Revises: 
Times are naive UTC (latigo.schema.UTCDateTime).
"""

from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('dead_letters',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('task_id', sa.String(length=36), nullable=True),
    sa.Column('project', sa.String(length=200), nullable=True),
    sa.Column('model', sa.String(length=200), nullable=True),
    sa.Column('body', sa.LargeBinary(), nullable=False),
    sa.Column('reason', sa.String(length=32), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('ledger',
    sa.Column('project', sa.String(length=200), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=False),
    sa.Column('window_start', sa.DateTime(), nullable=False),
    sa.Column('window_end', sa.DateTime(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('revision', sa.String(length=40), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('task_id', sa.String(length=36), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('project', 'model', 'window_start')
    )
    with op.batch_alter_table('ledger', schema=None) as batch_op:
        batch_op.create_index('ix_ledger_state', ['state'], unique=False)

    op.create_table('predictions',
    sa.Column('project', sa.String(length=200), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=False),
    sa.Column('time', sa.DateTime(), nullable=False),
    sa.Column('output', sa.String(length=64), nullable=False),
    sa.Column('tag', sa.String(length=200), nullable=False),
    sa.Column('value', sa.Float(), nullable=True),
    sa.Column('revision', sa.String(length=40), nullable=False),
    sa.PrimaryKeyConstraint('project', 'model', 'time', 'output', 'tag')
    )
    op.create_table('sensor_data',
    sa.Column('tag', sa.String(length=200), nullable=False),
    sa.Column('time', sa.DateTime(), nullable=False),
    sa.Column('value', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('tag', 'time')
    )
    op.create_table('task_queue',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('body', sa.LargeBinary(), nullable=False),
    sa.Column('available_at', sa.DateTime(), nullable=False),
    sa.Column('lease_token', sa.String(length=36), nullable=True),
    sa.Column('deliveries', sa.Integer(), nullable=False),
    sa.Column('enqueued_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('task_queue', schema=None) as batch_op:
        batch_op.create_index('ix_task_queue_available_at', ['available_at', 'id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('task_queue', schema=None) as batch_op:
        batch_op.drop_index('ix_task_queue_available_at')

    op.drop_table('task_queue')
    op.drop_table('sensor_data')
    op.drop_table('predictions')
    with op.batch_alter_table('ledger', schema=None) as batch_op:
        batch_op.drop_index('ix_ledger_state')

    op.drop_table('ledger')
    op.drop_table('dead_letters')
