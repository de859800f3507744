from unittest import mock

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext

from mediastore.prepared import PreparedCount

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
