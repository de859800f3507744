"""The web process answers: liveness and the admin."""

from __future__ import annotations

import pytest


def test_healthz_answers_ok(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_healthz_refuses_writes(client):
    assert client.post("/healthz").status_code == 405


@pytest.mark.django_db
def test_admin_asks_anonymous_users_to_sign_in(client):
    response = client.get("/admin/")

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


@pytest.mark.django_db
def test_admin_lists_scenes_for_staff(admin_client):
    assert admin_client.get("/admin/scenes/scene/").status_code == 200
