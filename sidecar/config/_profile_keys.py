"""The keys of ``[profiles.NAME]``, with its ``backoff``, ``breaker`` and ``subject`` tables.

Part of the one list of config keys that :mod:`sidecar.config._keys` opens
with (read its docstring for how a key is added); :mod:`sidecar.config._profile`
accepts exactly these keys, and :mod:`sidecar.config._exchange` reads the
``subject`` table and decides which keys a profile's ``grant`` allows.
"""

from __future__ import annotations

from typing import get_args

from sidecar.config._model import (
    ACCESS_TOKEN_TYPE,
    ASYMMETRIC_ALGORITHMS,
    ClientAuth,
    Grant,
    SubjectVerify,
    Verify,
)
from sidecar.config._reader import ENV_NAME_PATTERN
from sidecar.config._spec import (
    AtLeastOne,
    Choice,
    Duration,
    ExactlyOne,
    FilePath,
    Flag,
    Forbidden,
    HttpUrl,
    Integer,
    Key,
    KeyTable,
    RefreshWindow,
    Required,
    StringTable,
    Subtable,
    Text,
    Uids,
    When,
)

AUTH0_DOMAIN_PATTERN = r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?"
CLIENT_ID_KEYS = ("client_id", "client_id_file", "client_id_env")
CLIENT_SECRET_KEYS = ("client_secret", "client_secret_file", "client_secret_env")
ASSERTION_KEYS = ("private_key_file", "private_key_kid", "assertion_alg", "assertion_audience")
#: Keys only a ``token_exchange`` or ``jwt_bearer`` profile reads.
EXCHANGE_KEYS = ("cache_max_entries", "negative_ttl", "subject")
#: Keys only a ``token_exchange`` profile reads (RFC 8693 form fields).
TOKEN_EXCHANGE_KEYS = ("subject_token_type", "requested_token_type")
#: Keys only a ``client_credentials`` profile reads: per-user tokens are never refreshed.
CLIENT_CREDENTIALS_KEYS = ("refresh_before", "required", "backoff")
#: Form fields of the exchange grants; ``extra_params`` may not override them.
EXCHANGE_PARAMS = (
    *("subject_token", "subject_token_type", "requested_token_type"),
    *("actor_token", "actor_token_type", "assertion", "requested_token_use"),
)
#: Form fields the sidecar sends itself; letting extra_params override them
#: would silently change the grant or leak a second credential.
RESERVED_PARAMS = (
    *("grant_type", "client_id", "client_secret", "client_assertion", "client_assertion_type"),
    *("audience", "resource", "scope"),
    *EXCHANGE_PARAMS,
)
#: The largest cache an exchange profile may ask for (entries are a few hundred bytes each).
MAX_CACHE_ENTRIES = 1_000_000

# --------------------------------------------------------------------------- profiles

BACKOFF_KEYS = KeyTable(
    "[profiles.NAME.backoff]",
    "Backoff after transient failures: the n-th waits a random time up to "
    "min(cap, base x 2^(n-1)).",
    (
        Key(
            "base", Duration(), "Upper bound of the first wait; must not exceed cap.", default="1s"
        ),
        Key("cap", Duration(), "Largest upper bound of any wait.", default="60s"),
    ),
)

BREAKER_KEYS = KeyTable(
    "[profiles.NAME.breaker]",
    "The circuit breaker of the profile's token endpoint (shared by the profiles "
    "using that endpoint; the first one's settings apply).",
    (
        Key(
            "failures",
            Integer(minimum=1),
            "Consecutive transient failures that open the circuit.",
            default=5,
        ),
        Key(
            "reset",
            Duration(),
            "How long the circuit stays open before one probe request is let through.",
            default="30s",
        ),
    ),
)


SUBJECT_KEYS = KeyTable(
    "[profiles.NAME.subject]",
    "Exchange profiles: how a caller's user token is checked before any IdP request, "
    "so an expired or foreign token never costs IdP quota.",
    (
        Key(
            "verify",
            Choice(get_args(SubjectVerify)),
            '"jwks": a JWT signed by a key of jwks_url, unexpired, with iss = issuer and '
            'audience in aud. "none": the IdP judges the token (opaque user tokens).',
            default="jwks",
        ),
        Key(
            "issuer",
            Text(),
            "Expected iss of users' tokens; default: the profile's issuer. Only with \"jwks\".",
            default=None,
        ),
        Key(
            "jwks_url",
            HttpUrl(),
            "The user tokens' signing keys (https; http only to a loopback host); default: "
            'the profile\'s jwks_url. Only with "jwks".',
            default=None,
        ),
        Key(
            "audience",
            Text(),
            "The MCP server's own identifier, which users' tokens must name in aud. "
            'Required with "jwks"; refused with "none".',
            default=None,
        ),
        Key(
            "leeway",
            Duration(allow_zero=True),
            "Clock skew granted on the user token's exp, at most 5m.",
            default="0s",
        ),
    ),
    rules=(
        When(
            "verify",
            value="jwks",
            then=(Required(("audience",)),),
            otherwise=(Forbidden(("issuer", "jwks_url", "audience")),),
        ),
    ),
)


def _secret_source(base: str, what: str, *, inline_note: str) -> tuple[Key, Key, Key]:
    """``base`` inline, ``base_file`` and ``base_env``: three ways to give one credential."""
    return (
        Key(base, Text(), f"The {what}, inline. {inline_note}", default=None),
        Key(
            f"{base}_file",
            FilePath(),
            f"File holding the {what}, read at every token request (re-read when it changes).",
            default=None,
        ),
        Key(
            f"{base}_env",
            Text(ENV_NAME_PATTERN),
            f"Environment variable holding the {what}, read at every token request.",
            default=None,
        ),
    )


_ENDPOINT = (
    Key(
        "auth0_domain",
        Text(AUTH0_DOMAIN_PATTERN),
        'Auth0 tenant or custom domain, a bare host name like "example.us.auth0.com". '
        "Sets token_url, issuer and jwks_url. Exclusive with token_url.",
        default=None,
    ),
    Key(
        "token_url",
        HttpUrl(),
        "Token endpoint of any RFC 6749 server (https; http only to a loopback host). "
        "Exactly one of auth0_domain and token_url is required.",
        default=None,
    ),
    Key(
        "issuer",
        Text(),
        "Expected iss of issued tokens; also the default assertion_audience. "
        "Derived from auth0_domain; not checked when unknown.",
        default=None,
    ),
    Key(
        "jwks_url",
        HttpUrl(),
        'Where the issuer publishes its signing keys; needed for verify = "jwks". '
        "Derived from auth0_domain.",
        default=None,
    ),
)

_CLIENT = (
    *_secret_source(
        "client_id", "client id", inline_note="A client id is not a secret: inline is fine."
    ),
    *_secret_source(
        "client_secret",
        "client secret",
        inline_note="Development only: it ends up in the config file.",
    ),
    Key(
        "client_auth",
        Choice(get_args(ClientAuth)),
        "How the client authenticates: the secret in the form, in a Basic header, "
        "or a signed client assertion (private_key_jwt, RFC 7523).",
        default="client_secret_post",
    ),
    Key(
        "private_key_file",
        FilePath(),
        "PEM private key that signs client assertions. Required by and only allowed "
        "with private_key_jwt.",
        default=None,
    ),
    Key(
        "private_key_kid",
        Text(),
        "kid header of client assertions. Only with private_key_jwt.",
        default=None,
    ),
    Key(
        "assertion_alg",
        Choice(ASYMMETRIC_ALGORITHMS),
        "Signing algorithm of client assertions. Only with private_key_jwt.",
        default="RS256",
    ),
    Key(
        "assertion_audience",
        Text(),
        "aud of client assertions; default: issuer if known, else token_url. "
        "Only with private_key_jwt.",
        default=None,
    ),
)

_REQUEST = (
    Key(
        "audience",
        Text(),
        "Sent as the form field audience (Auth0 needs it) and expected in the token's aud.",
        default=None,
    ),
    Key(
        "resource",
        Text(),
        "Sent as the form field resource (RFC 8707); the expected aud when audience is not set.",
        default=None,
    ),
    Key("scope", Text(), "Space-separated scopes, sent as scope.", default=None),
    Key(
        "extra_params",
        StringTable(reserved=RESERVED_PARAMS),
        "More form fields for the token request, string values only; "
        "fields the sidecar sets itself are refused.",
        default={},
    ),
)

_POLICY = (
    Key(
        "required",
        Flag(),
        "Whether /readyz waits for this profile. client_credentials only.",
        default=True,
    ),
    Key(
        "refresh_before",
        RefreshWindow(),
        'When to start refreshing: a share of the lifetime ("20%", above 0% and below 100%) '
        "or a duration above min_ttl. client_credentials only.",
        default="20%",
    ),
    Key(
        "min_ttl", Duration(), "A token with this much or less left is never served.", default="30s"
    ),
    Key(
        "wait_timeout",
        Duration(),
        "How long a caller waits for a refresh when no servable token exists.",
        default="10s",
    ),
    Key(
        "verify",
        Choice(get_args(Verify)),
        'How issued tokens are checked. Not set: "jwks" when a JWKS URL is known, '
        'else "claims" for a JWT and "none" for an opaque token.',
        default=None,
    ),
    Key(
        "allow_uids",
        Uids(),
        "Replaces [server].allow_uids for this profile when it names at least one uid.",
        default=None,
    ),
    Key(
        "connect_timeout",
        Duration(),
        "TCP connect timeout of token requests; never above timeout "
        "(the default shrinks with a shorter timeout).",
        default="3s",
    ),
    Key("timeout", Duration(), "Total timeout of one token request.", default="10s"),
    Key(
        "backoff",
        Subtable(BACKOFF_KEYS),
        BACKOFF_KEYS.description + " client_credentials only.",
        default=None,
    ),
    Key("breaker", Subtable(BREAKER_KEYS), BREAKER_KEYS.description, default=None),
)

_GRANT = (
    Key(
        "grant",
        Choice(get_args(Grant)),
        "How the profile gets tokens: its own (client_credentials, refreshed ahead), or "
        "users' tokens exchanged per request (token_exchange, RFC 8693; jwt_bearer, "
        "Entra on-behalf-of).",
        default="client_credentials",
    ),
)

_EXCHANGE = (
    Key(
        "subject_token_type",
        Text(),
        "token_exchange only: the type of the caller's token, sent as subject_token_type.",
        default=ACCESS_TOKEN_TYPE,
    ),
    Key(
        "requested_token_type",
        Text(),
        "token_exchange only: sent as requested_token_type.",
        default=ACCESS_TOKEN_TYPE,
    ),
    Key(
        "cache_max_entries",
        Integer(minimum=1, maximum=MAX_CACHE_ENTRIES),
        "Exchange profiles: per-user tokens held at most; storing one more drops the "
        "least recently used.",
        default=10000,
    ),
    Key(
        "negative_ttl",
        Duration(allow_zero=True),
        "Exchange profiles: how long the IdP's rejection of one user's token is remembered "
        '(at most 1h; "0s" remembers nothing).',
        default="5s",
    ),
    Key("subject", Subtable(SUBJECT_KEYS), SUBJECT_KEYS.description, default=None),
)

PROFILE_KEYS = KeyTable(
    "[profiles.NAME]",
    "One (token endpoint, client, audience/resource, scope) tuple with its own token, "
    "refresh loop, backoff and circuit breaker, or (with an exchange grant) per-user tokens. "
    "Callers name it in /v1/token/NAME or /v1/exchange/NAME.",
    (*_ENDPOINT, *_CLIENT, *_REQUEST, *_POLICY, *_GRANT, *_EXCHANGE),
    rules=(
        When(
            "grant",
            value="client_credentials",
            then=(Forbidden((*EXCHANGE_KEYS, *TOKEN_EXCHANGE_KEYS)),),
            otherwise=(Forbidden(CLIENT_CREDENTIALS_KEYS), Required(("subject",))),
        ),
        When(
            "grant",
            value="jwt_bearer",
            then=(Forbidden((*TOKEN_EXCHANGE_KEYS, "resource")), Required(("scope",))),
        ),
        ExactlyOne(("auth0_domain", "token_url")),
        ExactlyOne(CLIENT_ID_KEYS),
        When(
            "client_auth",
            value="private_key_jwt",
            then=(Required(("private_key_file",)), Forbidden(CLIENT_SECRET_KEYS)),
            otherwise=(ExactlyOne(CLIENT_SECRET_KEYS), Forbidden(ASSERTION_KEYS)),
        ),
        When("verify", value="jwks", then=(AtLeastOne(("jwks_url", "auth0_domain")),)),
    ),
)
