import pytest
from django.db import connection

from scenes.models import Scene


@pytest.mark.django_db
def test_no_scene_index_is_a_prefix_of_another():
    # An index whose columns begin another index serves no lookup the longer one does not, and every insert
    # and status change of a scene writes both (a B-tree page each in SQLite's log).
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, Scene._meta.db_table)
    indexes = {name: tuple(c["columns"]) for name, c in constraints.items()
               if c["index"] and not c["primary_key"] and not c["unique"]}

    redundant = sorted(f"{name} {cols} begins {other_name} {other}" for name, cols in indexes.items()
                       for other_name, other in indexes.items()
                       if other_name != name and len(cols) < len(other) and other[: len(cols)] == cols)

    assert redundant == []
