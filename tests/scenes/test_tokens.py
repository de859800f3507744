"""API tokens for people: made on a page or the API, shown once, stored hashed, revocable, last use noted."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from scenes import tokens
from scenes.models import ApiToken

pytestmark = pytest.mark.django_db


@pytest.fixture
def page(alice) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def _api(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


def test_a_token_is_stored_only_as_its_digest(alice):
    row, token = tokens.api_token_create(owner=alice, name="script")

    assert token.startswith("mst_")
    assert len(token) >= 40
    stored = " ".join(str(value) for value in ApiToken.objects.filter(pk=row.pk).values().get().values())
    assert token not in stored
    assert row.digest == hashlib.sha256(token.encode()).hexdigest()
    assert token.startswith(row.prefix)


def test_a_token_authenticates_and_notes_its_last_use(alice):
    row, token = tokens.api_token_create(owner=alice, name="script")

    response = _api(token).get("/api/v1/me")

    assert response.status_code == 200
    assert response.json()["username"] == "alice"
    row.refresh_from_db()
    assert row.last_used_at is not None


def test_last_use_is_written_at_most_once_a_minute(alice, django_assert_num_queries):
    row, token = tokens.api_token_create(owner=alice, name="script")
    recent = timezone.now() - dt.timedelta(seconds=5)
    ApiToken.objects.filter(pk=row.pk).update(last_used_at=recent)

    _api(token).get("/api/v1/me")

    row.refresh_from_db()
    assert row.last_used_at == recent


def test_a_revoked_or_unknown_token_is_refused(alice):
    row, token = tokens.api_token_create(owner=alice, name="script")
    tokens.api_token_revoke(token=row)

    assert _api(token).get("/api/v1/me").status_code == 401
    assert _api("mst_" + "x" * 43).get("/api/v1/me").status_code == 401


def test_the_page_shows_a_new_token_once_and_then_only_its_prefix(page, alice):
    made = page.post("/tokens/", {"name": "upload script"}).content.decode()
    token = re.search(r'value="(mst_[^"]+)"', made).group(1)
    later = page.get("/tokens/").content.decode()

    assert "Copy it now: it will not be shown again." in made
    assert token not in later
    assert f"{token[:12]}…" in later
    assert "upload script" in later
    assert _api(token).get("/api/v1/me").status_code == 200


def test_the_page_revokes_a_token(page, alice):
    row, token = tokens.api_token_create(owner=alice, name="old laptop")

    response = page.post(f"/tokens/{row.pk}/revoke", follow=True)

    assert "is revoked" in response.content.decode()
    assert _api(token).get("/api/v1/me").status_code == 401


def test_nobody_revokes_someone_elses_token_on_the_page(page, bob):
    row, token = tokens.api_token_create(owner=bob, name="bob's")

    assert page.post(f"/tokens/{row.pk}/revoke").status_code == 404
    assert _api(token).get("/api/v1/me").status_code == 200


def test_the_api_makes_lists_and_revokes_tokens(alice):
    _, first = tokens.api_token_create(owner=alice, name="first")
    api = _api(first)

    made = api.post("/api/v1/tokens/", {"name": "second"}, format="json")
    listed = api.get("/api/v1/tokens/").json()["results"]
    revoked = api.delete(f"/api/v1/tokens/{made.json()['id']}")

    assert made.status_code == 201
    assert made.json()["token"].startswith("mst_")
    assert {entry["name"] for entry in listed} == {"first", "second"}
    assert all("token" not in entry for entry in listed)
    assert revoked.status_code == 204
    assert _api(made.json()["token"]).get("/api/v1/me").status_code == 401


def test_staff_see_everyones_tokens_only_with_the_permission(alice, bob):
    from django.contrib.auth.models import Permission

    tokens.api_token_create(owner=bob, name="bob's")
    staff = get_user_model().objects.create_user("staffer", is_staff=True)
    _, staff_token = tokens.api_token_create(owner=staff, name="staff")

    before = {t["name"] for t in _api(staff_token).get("/api/v1/tokens/").json()["results"]}
    staff.user_permissions.add(Permission.objects.get(codename="view_apitoken"))
    after = {t["name"] for t in _api(staff_token).get("/api/v1/tokens/").json()["results"]}

    assert before == {"staff"}
    assert after == {"staff", "bob's"}


def test_create_token_prints_a_working_token(alice):
    out = StringIO()

    call_command("create_token", "alice", "--name", "ci", stdout=out)

    assert _api(out.getvalue().strip()).get("/api/v1/me").status_code == 200


def test_create_token_names_an_unknown_user():
    with pytest.raises(CommandError, match="no user 'nobody'"):
        call_command("create_token", "nobody")


def test_plain_text_tokens_of_earlier_installs_become_hashed_ones_that_still_work(alice):
    import importlib

    from django.db import connection

    migration = importlib.import_module("scenes.migrations.0008_hash_drf_tokens")
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE authtoken_token (key varchar(40) PRIMARY KEY, created datetime, user_id int)")
        cursor.execute("INSERT INTO authtoken_token VALUES ('0123456789abcdef0123456789abcdef01234567', "
                       "'2025-01-01', %s)", [alice.pk])

    from django.apps import apps

    class Editor:
        pass

    editor = Editor()
    editor.connection = connection  # type: ignore[attr-defined]
    migration.hash_old_tokens(apps, editor)

    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM authtoken_token")
        assert cursor.fetchone()[0] == 0
    assert _api("0123456789abcdef0123456789abcdef01234567").get("/api/v1/me").json()["username"] == "alice"
