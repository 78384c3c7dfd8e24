"""The router's bearer tokens: one settings block that the router, the flows and the simulator all read the same way.

Tokens come from the environment (`DRIFTLOOP_ROUTER_ADMIN_TOKEN`, ...), from a secrets file named by
`DRIFTLOOP_SECRETS_FILE` (dotenv lines, keep it mode 0600), or from `.env`; real variables win, then the secrets
file, then `.env`. They are never written in code.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, DotEnvSettingsSource, PydanticBaseSettingsSource

SECRETS_FILE_ENV = "DRIFTLOOP_SECRETS_FILE"
"""Environment variable naming a dotenv file with the tokens (the local stack writes one under its home)."""
TOKEN_ENV = {
    "admin": "DRIFTLOOP_ROUTER_ADMIN_TOKEN",
    "label": "DRIFTLOOP_ROUTER_LABEL_TOKEN",
    "read": "DRIFTLOOP_ROUTER_READ_TOKEN",
    "client": "DRIFTLOOP_ROUTER_CLIENT_TOKEN",
}
"""Which variable holds which token."""


class RouterTokens(BaseSettings):
    """The router's tokens; mixed into each side's settings so that every piece reads the same variables."""

    router_admin_token: SecretStr | None = Field(
        None, description="Bearer token for writes: config, plan, end, reload (it also works for labels and reads)."
    )
    router_label_token: SecretStr | None = Field(
        None, description="Bearer token for labels: /feedback and inline labels on /predict."
    )
    router_read_token: SecretStr | None = Field(
        None, description="Bearer token for the inference log and the outcomes (they expose features and ids)."
    )
    router_client_token: SecretStr | None = Field(
        None, description="Bearer token for /predict; predictions are open when it is not set."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then the environment, then the secrets file, then `.env`."""
        secrets: tuple[PydanticBaseSettingsSource, ...] = ()
        if path := os.environ.get(SECRETS_FILE_ENV):
            secrets = (DotEnvSettingsSource(settings_cls, env_file=Path(path)),)
        return (init_settings, env_settings, *secrets, dotenv_settings, file_secret_settings)


def bearer(token: SecretStr | str | None) -> dict[str, str]:
    """The `Authorization` header that carries a token (none when the token is not set)."""
    if token is None:
        return {}
    value = token.get_secret_value() if isinstance(token, SecretStr) else token
    return {"Authorization": f"Bearer {value}"} if value else {}
