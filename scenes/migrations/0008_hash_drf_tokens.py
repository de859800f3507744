"""Tokens made before hashed tokens existed (DRF's authtoken, stored in plain text) become hashed ApiTokens
that keep working; the plain-text rows are deleted. DRF's authtoken app is no longer installed, so its table
(left from earlier installs) is read directly, when it is there."""

import hashlib

from django.db import migrations

OLD_TABLE = "authtoken_token"


def old_tokens(connection):
    """(key, user_id) of every plain-text token, then forget them."""
    if connection.vendor == "mongodb":
        if OLD_TABLE not in connection.database.list_collection_names():
            return []
        collection = connection.database[OLD_TABLE]
        rows = [(document["key"], document["user_id"]) for document in collection.find()]
        collection.delete_many({})
        return rows
    if OLD_TABLE not in connection.introspection.table_names():
        return []
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT key, user_id FROM {OLD_TABLE}")
        rows = list(cursor.fetchall())
        cursor.execute(f"DELETE FROM {OLD_TABLE}")
    return rows


def hash_old_tokens(apps, schema_editor):
    ApiToken = apps.get_model("scenes", "ApiToken")
    for key, user_id in old_tokens(schema_editor.connection):
        ApiToken.objects.create(owner_id=user_id, name="made before hashed tokens", prefix=key[:8],
                                digest=hashlib.sha256(key.encode()).hexdigest())


class Migration(migrations.Migration):
    dependencies = [("scenes", "0007_api_tokens")]

    operations = [migrations.RunPython(hash_old_tokens, migrations.RunPython.noop)]
