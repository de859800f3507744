"""The OpenAPI schema as a client generator should see it: one readable operation id and one tag per
operation (``store_media``, ``get_scene`` … under ``media``, ``scenes`` …), in one table here.

drf-spectacular derives ids from paths (``api_v1_media_store_create``); a generated client turns those into
its method names. ``operations`` is the postprocessing hook that renames them; an operation missing from
the table keeps its derived id, and tests/mediastore/test_schema.py fails until it is named here.
"""

from __future__ import annotations

from typing import Any

# derived id → (operation id, tag)
OPERATIONS: dict[str, tuple[str, str]] = {
    "api_v1_media_store_create": ("store_media", "media"),
    "api_v1_scenes_list": ("list_scenes", "scenes"),
    "api_v1_scenes_retrieve": ("get_scene", "scenes"),
    "api_v1_scenes_destroy": ("delete_scene", "scenes"),
    "api_v1_scenes_retry_create": ("retry_scene", "scenes"),
    "api_v1_scenes_cancel_create": ("cancel_scene", "scenes"),
    "api_v1_projects_list": ("list_projects", "projects"),
    "api_v1_projects_create": ("create_project", "projects"),
    "api_v1_projects_retrieve": ("get_project", "projects"),
    "api_v1_projects_partial_update": ("rename_project", "projects"),
    "api_v1_projects_destroy": ("delete_project", "projects"),
    "api_v1_webhooks_list": ("list_webhooks", "webhooks"),
    "api_v1_webhooks_create": ("create_webhook", "webhooks"),
    "api_v1_webhooks_retrieve": ("get_webhook", "webhooks"),
    "api_v1_webhooks_partial_update": ("update_webhook", "webhooks"),
    "api_v1_webhooks_destroy": ("delete_webhook", "webhooks"),
    "api_v1_webhooks_rotate_secret_create": ("rotate_webhook_secret", "webhooks"),
    "api_v1_webhook_deliveries_list": ("list_webhook_deliveries", "webhooks"),
    "api_v1_webhook_deliveries_retrieve": ("get_webhook_delivery", "webhooks"),
    "api_v1_webhook_deliveries_resend_create": ("resend_webhook_delivery", "webhooks"),
    "api_v1_me_retrieve": ("get_me", "account"),
    "api_v1_tokens_list": ("list_tokens", "account"),
    "api_v1_tokens_create": ("create_token", "account"),
    "api_v1_tokens_retrieve": ("get_token", "account"),
    "api_v1_tokens_destroy": ("revoke_token", "account"),
}

TAGS = [
    {"name": "media",
     "description": "Store a media URL: the answer is immediate (202), the ingest runs in the background."},
    {"name": "scenes", "description": "Follow, retry, cancel and delete stored scenes."},
    {"name": "projects", "description": "Group scenes."},
    {"name": "webhooks",
     "description": "Signed callbacks (Standard Webhooks) on scene events, and their delivery log."},
    {"name": "account", "description": "Who the credentials belong to, and their API tokens."},
]


UNSUPPORTED_MEDIA_TYPE = "The body's Content-Type is not one this operation reads (`unsupported_media_type`)."


def operations(result: dict[str, Any], **_: Any) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: readable operation ids and one tag each."""
    for path_item in result.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict) or "operationId" not in operation:
                continue
            named = OPERATIONS.get(operation["operationId"])
            if named is not None:
                operation["operationId"], tag = named
                operation["tags"] = [tag]
            responses = operation.get("responses", {})
            if "requestBody" in operation and "400" in responses and "415" not in responses:
                # Every operation that reads a body can answer 415, in the same error envelope (the schema
                # fuzzer met it undocumented with a malformed multipart body).
                responses["415"] = {**responses["400"], "description": UNSUPPORTED_MEDIA_TYPE}
    result["tags"] = TAGS
    for component in result.get("components", {}).get("schemas", {}).values():
        # With ENUM_ADD_EXPLICIT_BLANK_NULL_CHOICE off, drf-spectacular drops a blank choice from the enum
        # (it would otherwise be a separate BlankEnum); put it back in place, or a strict client would refuse
        # the "" that an empty stage or error code really is. The description still lists it.
        enum = component.get("enum")
        if enum is not None and "" not in enum and "* `` - " in component.get("description", ""):
            enum.insert(0, "")
    return result
