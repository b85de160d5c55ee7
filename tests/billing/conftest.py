import pytest
from asgiref.sync import sync_to_async
from django.db import connections


@pytest.fixture(autouse=True)
async def _close_connections_opened_in_worker_threads():
    """Async tests reach the database from asgiref's worker thread; close what it opened
    there, or PostgreSQL refuses to drop the test database at the end of the run."""
    yield
    await sync_to_async(connections.close_all)()


@pytest.fixture
def eager_celery():
    """Run tasks inline, whatever the broker settings (the worker path has its own e2e test)."""
    from katiedj.celery import app

    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = previous
