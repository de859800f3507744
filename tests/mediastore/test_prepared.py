import json
import os
import uuid
from unittest import mock

import celery
import pytest
import redis
from celery import signals
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models.signals import pre_save
from django.db.models.sql import InsertQuery
from django.test.utils import CaptureQueriesContext

from downloads.tasks import download_media_task
from mediastore.celery import app as celery_app
from mediastore.prepared import PreparedCount, PreparedInsert
from scenes.models import Scene

pytestmark = pytest.mark.django_db

User = get_user_model()


def _staff_count() -> PreparedCount:
    return PreparedCount(User.objects.filter(is_staff=True), field="pk__gte", placeholder=-7)


@pytest.fixture
def users():
    return [User.objects.create_user(f"u{i}", is_staff=i % 2 == 0) for i in range(5)]


def test_it_counts_what_the_orm_counts_for_each_key(users):
    count = _staff_count()

    for user in users:
        assert count(user.pk) == User.objects.filter(is_staff=True, pk__gte=user.pk).count()


def test_it_runs_the_statement_the_orm_runs_with_the_key_in_place_of_the_placeholder(users):
    count = _staff_count()
    count(users[0].pk)
    with CaptureQueriesContext(connection) as orm:
        User.objects.filter(is_staff=True, pk__gte=users[1].pk).count()

    with CaptureQueriesContext(connection) as prepared:
        count(users[1].pk)

    assert [q["sql"] for q in prepared.captured_queries] == [q["sql"] for q in orm.captured_queries]


def test_the_queryset_is_built_and_compiled_once_not_per_call(users):
    count = _staff_count()
    count(users[0].pk)

    with mock.patch("django.db.models.sql.compiler.SQLCompiler.as_sql") as compile_sql:
        counts = [count(user.pk) for user in users]

    compile_sql.assert_not_called()
    assert counts == [3, 2, 2, 1, 1]


def test_a_placeholder_that_is_also_another_parameter_is_refused(users):
    # Which of the two parameters is the key could not be told.
    count = PreparedCount(User.objects.filter(pk__lte=-7), field="pk__gte", placeholder=-7)

    with pytest.raises(TypeError, match="placeholder -7 is 2"):
        count(users[0].pk)


def test_on_mongodb_it_is_the_orms_count():
    queryset = mock.MagicMock(db="default")
    queryset.filter.return_value.count.return_value = 4
    count = PreparedCount(queryset, field="owner_id", placeholder=-1)

    with mock.patch.object(connection, "vendor", "mongodb"):
        assert count("65a0c0ffee") == 4

    queryset.filter.assert_called_once_with(owner_id="65a0c0ffee")


# --- PreparedInsert ----------------------------------------------------------------------------------------

COMPARED = [f.attname for f in Scene._meta.local_concrete_fields if f.attname not in ("id", "created_at", "updated_at")]


def _scene_values(owner, n: int) -> dict:
    return {"owner": owner, "source_url": f"https://example.com/{n}.mp4", "title": f"clip {n}", "task_id": f"t{n}"}


def test_a_row_it_inserts_is_the_row_the_orm_inserts(users):
    insert = PreparedInsert(Scene)
    insert(**_scene_values(users[0], 0))  # the ORM's own save, kept

    kept = insert(**_scene_values(users[1], 1))
    orm = Scene.objects.create(**_scene_values(users[1], 1))

    stored, expected = Scene.objects.get(pk=kept.pk), Scene.objects.get(pk=orm.pk)
    assert [getattr(stored, name) for name in COMPARED] == [getattr(expected, name) for name in COMPARED]
    assert None not in (stored.created_at, stored.updated_at)
    assert (kept.created_at, kept.updated_at) == (stored.created_at, stored.updated_at)


def _executed(run) -> list[tuple[str, tuple]]:
    executed = []

    def capture(execute, sql, params, many, context):
        executed.append((sql, tuple(params)))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(capture):
        run()
    return executed


def test_later_rows_run_the_orms_statement_with_the_parameters_its_compiler_makes(users):
    insert = PreparedInsert(Scene)
    ((orm_sql, _),) = _executed(lambda: insert(**_scene_values(users[0], 0)))
    made = []

    with mock.patch("django.db.models.sql.compiler.SQLInsertCompiler.as_sql") as compile_sql:
        ((sql, params),) = _executed(lambda: made.append(insert(**_scene_values(users[1], 1))))

    compile_sql.assert_not_called()
    query = InsertQuery(Scene)
    query.insert_values(Scene._meta.local_concrete_fields, made, raw=True)  # the values the row was given
    ((_, compiled),) = query.get_compiler(connection=connection).as_sql()
    assert (sql, params) == (orm_sql, tuple(compiled))


def test_the_instance_it_returns_is_saved():
    owner = User.objects.create_user("owner")
    insert = PreparedInsert(Scene)
    insert(**_scene_values(owner, 0))

    scene = insert(**_scene_values(owner, 1))

    assert (scene._state.adding, scene._state.db) == (False, "default")
    scene.title = "renamed"
    scene.save()  # an UPDATE of the row, not a second INSERT
    assert Scene.objects.get(pk=scene.pk).title == "renamed"


def test_a_model_with_save_receivers_is_saved_the_orms_way():
    owner = User.objects.create_user("owner")
    insert = PreparedInsert(Scene)
    insert(**_scene_values(owner, 0))
    seen = []

    def receiver(sender, instance, **_):
        seen.append(instance.title)

    pre_save.connect(receiver, sender=Scene)
    try:
        insert(**_scene_values(owner, 1))
    finally:
        pre_save.disconnect(receiver, sender=Scene)

    assert seen == ["clip 1"]


def test_on_mongodb_each_row_is_the_orms_save():
    owner = User.objects.create_user("owner")
    insert = PreparedInsert(Scene)
    with mock.patch.object(Scene, "save") as save, mock.patch.object(connection, "vendor", "mongodb"):
        insert(**_scene_values(owner, 0))
        insert(**_scene_values(owner, 1))

    assert save.call_args_list == [mock.call(force_insert=True, using="default")] * 2


# --- KeptMessage -------------------------------------------------------------------------------------------


@pytest.fixture
def queue(broker_url):
    """The broker's default queue, read raw: each message as kombu's Redis transport stored it."""
    client = redis.Redis.from_url(broker_url)
    name = celery_app.conf.task_default_queue
    download_media_task._kept = None
    download_media_task._unkeepable = False

    def messages() -> list[dict]:
        found = []
        while (raw := client.rpop(name)) is not None:
            message = json.loads(raw)
            del message["properties"]["delivery_tag"]  # kombu's own random tag for each message
            found.append(message)
        return found

    yield messages
    client.close()
    download_media_task.__dict__.pop("_kept", None)
    download_media_task.__dict__.pop("_unkeepable", None)


def _celerys_way():
    """Celery's own ``apply_async``, counted (a class attribute patched with a mock gets no ``self``)."""
    celerys = celery.Task.apply_async
    return mock.patch.object(celery.Task, "apply_async",
                             side_effect=lambda *args, **kwargs: celerys(download_media_task, *args, **kwargs))


def _send(scene_id: str, task_id: str) -> None:
    download_media_task.apply_async(args=[scene_id], task_id=task_id, retry=False)


def test_a_kept_message_is_the_message_celery_sends(queue):
    _send("65a000000000000000000001", "first")  # Celery's whole way, recorded
    with mock.patch.object(download_media_task, "_message_can_be_kept", return_value=False):
        _send("65a000000000000000000002", "second")
    celerys = queue()[1]

    with mock.patch.object(celery.Task, "apply_async", side_effect=AssertionError("Celery's way")):
        _send("65a000000000000000000002", "second")

    assert queue() == [celerys]


def test_the_first_message_of_a_process_is_celerys_and_is_kept(queue):
    with _celerys_way() as celerys:
        _send("65a000000000000000000001", str(uuid.uuid4()))

    assert celerys.call_count == 1
    assert download_media_task._kept is not None
    assert len(queue()) == 1


def test_a_forked_process_keeps_a_message_of_its_own(queue):
    _send("65a000000000000000000001", "first")
    download_media_task._kept = download_media_task._kept._replace(pid=-1)  # as if kept by the parent

    with _celerys_way() as celerys:
        _send("65a000000000000000000002", "second")

    assert celerys.call_count == 1
    assert download_media_task._kept.pid == os.getpid()


@pytest.mark.parametrize("options", [{"countdown": 5, "retry": False}, {"retry": True}, {},
                                     {"priority": 3, "retry": False}])
def test_any_other_call_goes_celerys_way(queue, options):
    _send("65a000000000000000000001", "first")

    with mock.patch.object(celery.Task, "apply_async") as celerys:
        download_media_task.apply_async(args=["65a000000000000000000002"], task_id="second", **options)

    celerys.assert_called_once()


@pytest.mark.parametrize("setting", ["task_always_eager", "task_send_sent_event"])
def test_a_setting_that_changes_celerys_message_sends_it_celerys_way(queue, setting):
    _send("65a000000000000000000001", "first")

    with mock.patch.object(celery.Task, "apply_async") as celerys, mock.patch.dict(celery_app.conf, {setting: True}):
        _send("65a000000000000000000002", "second")

    celerys.assert_called_once()


def test_with_a_publish_signal_receiver_celery_sends_it(queue):
    _send("65a000000000000000000001", "first")
    seen = []

    def receiver(**kwargs):
        seen.append(kwargs["headers"]["id"])

    signals.before_task_publish.connect(receiver)
    try:
        _send("65a000000000000000000002", "second")
    finally:
        signals.before_task_publish.disconnect(receiver)

    assert seen == ["second"]


def test_sent_from_inside_a_task_celery_sends_it_with_its_parent(queue):
    _send("65a000000000000000000001", "first")
    parent = mock.Mock()
    parent.request.root_id, parent.request.id = "root", "parent"

    with mock.patch.object(type(celery_app), "current_worker_task", new=mock.PropertyMock(return_value=parent)):
        _send("65a000000000000000000002", "second")

    second = queue()[-1]
    assert (second["headers"]["root_id"], second["headers"]["parent_id"]) == ("root", "parent")


def test_a_wrong_argument_is_refused_as_celery_refuses_it(queue):
    _send("65a000000000000000000001", "first")

    with pytest.raises(TypeError):
        download_media_task.apply_async(args=["a", "b"], task_id="second", retry=False)

    assert len(queue()) == 1
