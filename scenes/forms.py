"""Forms of the status page: they parse what a person typed and say what is wrong in words."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.models import User

from scenes import selectors
from scenes.models import Project
from scenes.validators import UrlRejected, validate_media_url

# The HTTP status of each URL error, as the API answers it.
URL_ERROR_STATUS = {"invalid_url": 400, "url_not_allowed": 422}


class StoreForm(forms.Form):
    url = forms.CharField(
        label="Media URL", max_length=10_000, strip=True,
        error_messages={"required": "Paste the URL of a post or a video."},
        widget=forms.URLInput(attrs={
            "placeholder": "https://www.reddit.com/r/…/comments/…  or any video URL",
            "autocomplete": "off", "inputmode": "url",
        }),
    )
    project = forms.ModelChoiceField(
        queryset=Project.objects.none(), required=False, empty_label="No project",
        error_messages={"invalid_choice": "That project does not exist any more; pick another."},
    )

    def __init__(self, *args: Any, owner: User, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        project_field = self.fields["project"]
        assert isinstance(project_field, forms.ModelChoiceField)
        project_field.queryset = selectors.project_list(owner=owner)

    def clean_url(self) -> str:
        try:
            return validate_media_url(self.cleaned_data["url"])
        except UrlRejected as rejected:
            raise forms.ValidationError(rejected.message, code=rejected.code) from rejected

    def error_status(self) -> int:
        """400 for a malformed URL, 422 for one we may not fetch: the codes the API gives."""
        for error in self.errors.as_data().get("url", []):
            if error.code in URL_ERROR_STATUS:
                return URL_ERROR_STATUS[error.code]
        return 400
