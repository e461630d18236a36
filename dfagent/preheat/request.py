"""What a preheat asks for, checked field by field (from the API's JSON or the CLI)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dfagent.errors import BadRequest
from dfagent.registry.credentials import Credentials
from dfagent.registry.manifests import Platform
from dfagent.registry.reference import BadReference, ImageReference, parse_image

__all__ = ["PreheatRequest"]


@dataclass(frozen=True, slots=True)
class PreheatRequest:
    image: ImageReference
    platforms: list[Platform] | None  # None: every platform of an index
    credentials: Credentials | None
    plain_http: bool = False

    @classmethod
    def from_json(cls, body: Any) -> PreheatRequest:
        """Raises BadRequest naming the field that is wrong."""
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        unknown = set(body) - {
            "image",
            "platform",
            "all_platforms",
            "username",
            "password",
            "plain_http",
        }
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
        image = body.get("image")
        if not isinstance(image, str):
            raise BadRequest("image: required, a reference such as registry.example/app:1.0")
        try:
            reference = parse_image(image)
        except BadReference as exc:
            raise BadRequest(f"image: {exc}") from None
        every = body.get("all_platforms", False)
        platform = body.get("platform")
        if not isinstance(every, bool):
            raise BadRequest("all_platforms: must be true or false")
        if every and platform is not None:
            raise BadRequest("platform: give a platform or all_platforms, not both")
        platforms = None
        if not every:
            if platform is not None and not isinstance(platform, str):
                raise BadRequest("platform: must be a string such as linux/amd64")
            try:
                platforms = (
                    [Platform.parse(p.strip()) for p in platform.split(",")]
                    if platform
                    else [Platform.host()]
                )
            except ValueError as exc:
                raise BadRequest(f"platform: {exc}") from None
        username, password = body.get("username"), body.get("password")
        if (username is None) != (password is None):
            raise BadRequest("username and password: give both or neither")
        if username is not None and not (isinstance(username, str) and isinstance(password, str)):
            raise BadRequest("username and password: must be strings")
        credentials = Credentials(username, password) if username is not None else None
        plain_http = body.get("plain_http", False)
        if not isinstance(plain_http, bool):
            raise BadRequest("plain_http: must be true or false")
        return cls(reference, platforms, credentials, plain_http)

    def to_json(self) -> dict[str, Any]:
        """The request as the API takes it (with the password: for the control socket only)."""
        body: dict[str, Any] = {"image": str(self.image), "plain_http": self.plain_http}
        if self.platforms is None:
            body["all_platforms"] = True
        else:
            body["platform"] = ",".join(map(str, self.platforms))
        if self.credentials is not None:
            body |= {"username": self.credentials.username, "password": self.credentials.password}
        return body
