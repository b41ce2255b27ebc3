"""Every key a config file may contain: one :class:`~sidecar.config._spec.KeyTable` per table.

This is the one list of what a config file may say. The readers accept
exactly these keys (``_document`` the top level, ``[server]`` and ``[cache]``;
``_profile`` ``[profiles.NAME]`` with its ``backoff`` and ``breaker``;
``_upstream`` ``[upstreams.NAME]``), and ``python -m sidecar.config.schema``
writes them, with their descriptions and defaults, as the JSON Schema in
``docs/config.schema.json``. The profile tables live in
:mod:`sidecar.config._profile_keys`. To add a key: declare it in its table,
read it in its reader, document it in docs/configuration.md, and regenerate
the schema (``python -m sidecar.config.schema docs/config.schema.json``);
tests/test_config_schema.py fails until all four agree.

Defaults are written as a config file would write them; the tests prove that
writing a default out changes nothing. The rules here are the ones a JSON
Schema can say; the readers enforce them too, and more.
"""

from __future__ import annotations

from typing import get_args

from sidecar.config._model import PROFILE_NAME_PATTERN, UPSTREAM_NAME_PATTERN, CacheBackend
from sidecar.config._profile_keys import PROFILE_KEYS
from sidecar.config._spec import (
    Address,
    Choice,
    Duration,
    ExactlyOne,
    FilePath,
    Flag,
    Integer,
    Key,
    KeyTable,
    Matches,
    NamedTables,
    OctalMode,
    Required,
    Size,
    StringTable,
    Subtable,
    Text,
    Together,
    Uids,
    When,
    WhenSet,
)

#: A host the token API may listen on without ``allow_non_loopback``, as a ``listen`` value.
LOOPBACK_ADDRESS_PATTERN = r"|(?:localhost|127\.[0-9]+\.[0-9]+\.[0-9]+|\[::1\]):[0-9]+"
NAMESPACE_PATTERN = r"[A-Za-z0-9_.:-]+"
#: At most 0o777; a fourth digit can only be a leading zero.
OCTAL_MODE_PATTERN = r"0?[0-7]{3}"
#: RFC 9110 5.6.2 ``token``: what a header field name may be made of.
HEADER_NAME_PATTERN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
#: The ``[cache]`` keys of a TLS connection to Redis: a ``rediss://`` URL only.
REDIS_TLS_KEYS = ("ssl_ca_file", "ssl_certfile", "ssl_keyfile")

# --------------------------------------------------------------------------- server

SERVER_KEYS = KeyTable(
    "[server]",
    "The listeners. Changes take effect on restart only.",
    (
        Key(
            "listen",
            Address(),
            'Token API over TCP, "HOST:PORT". Loopback only unless allow_non_loopback = true; '
            '"" switches TCP off (then socket is required).',
            default="127.0.0.1:8700",
        ),
        Key(
            "socket",
            FilePath(),
            "Token API over a Unix domain socket as well (optional); "
            "missing parent directories are created.",
            default=None,
        ),
        Key(
            "socket_mode",
            OctalMode(),
            'File mode of the socket as a string of octal digits, at most "0777" '
            "(a TOML integer would be decimal, so it is refused).",
            default="0660",
        ),
        Key(
            "allow_uids",
            Uids(),
            "Unix-socket peers (SO_PEERCRED) allowed to read tokens; others get 403. "
            "Empty: no uid check. Does not apply to TCP.",
            default=[],
        ),
        Key(
            "ops_listen",
            Address(),
            'Ops API (/livez, /readyz, /metrics, /status; never a token), "HOST:PORT"; '
            '"" switches it off.',
            default="0.0.0.0:9700",
        ),
        Key(
            "allow_non_loopback",
            Flag(),
            "Let listen bind a non-loopback address (logged as a warning at start).",
            default=False,
        ),
        Key(
            "access_log",
            Flag(),
            "Log one http.access event per token API request "
            "(method, path without query, status, duration).",
            default=False,
        ),
        Key(
            "max_connections",
            Integer(minimum=1),
            "Open connections per listener; at the limit the oldest idle one is closed "
            "to admit a new one.",
            default=1024,
        ),
        Key(
            "header_timeout",
            Duration(),
            "A connection must deliver a complete request line and headers within this, "
            "else it is closed.",
            default="10s",
        ),
        Key(
            "keepalive_timeout",
            Duration(),
            "An idle keep-alive connection is closed after this.",
            default="75s",
        ),
    ),
    rules=(
        When(
            "allow_non_loopback",
            value=False,
            then=(Matches("listen", LOOPBACK_ADDRESS_PATTERN),),
        ),
        When("listen", value="", then=(Required(("socket",)),)),
    ),
)

# --------------------------------------------------------------------------- cache

CACHE_KEYS = KeyTable(
    "[cache]",
    'Where tokens are kept; "redis" is fleet mode. Changes take effect on restart only.',
    (
        Key(
            "backend",
            Choice(get_args(CacheBackend)),
            'Token store: "memory" (this sidecar alone) or "redis" '
            "(fleet mode: sidecars share tokens).",
            default="memory",
        ),
        Key(
            "url",
            Text(r"(?:redis|rediss|unix)://.*"),
            "Redis URL (redis://, rediss:// or unix://); a password in it is never shown.",
            default="redis://127.0.0.1:6379/0",
        ),
        Key(
            "namespace",
            Text(NAMESPACE_PATTERN),
            "Prefix of every Redis key: letters, digits and _ . : - only. "
            "One namespace per environment.",
            default="token-sidecar",
        ),
        Key(
            "key_file",
            FilePath(),
            "AES-256 key (32 bytes, raw or base64) that seals tokens stored in Redis and in "
            'persist_file. Without it, fleet mode requires verify = "jwks" on every profile.',
            default=None,
        ),
        Key(
            "persist_file",
            FilePath(),
            "Cold-start cache: the held tokens, sealed with key_file, read at start and "
            "rewritten after each refresh. Requires key_file; its directory must exist.",
            default=None,
        ),
        Key(
            "username",
            Text(),
            "Redis ACL user (not set: the user in url, else Redis' default user). "
            "Needs a password; refused when url names a user too.",
            default=None,
        ),
        Key(
            "password_file",
            FilePath(),
            "File holding the Redis password, read at start and for every new connection "
            "(a rotated Secret is used from the next reconnect). Refused when url carries "
            "a password too.",
            default=None,
        ),
        Key(
            "ssl_ca_file",
            FilePath(),
            "PEM CA certificates trusted for the Redis server's certificate, besides the "
            "system store (a private CA). rediss:// only.",
            default=None,
        ),
        Key(
            "ssl_certfile",
            FilePath(),
            "TLS client certificate towards Redis; set with ssl_keyfile. rediss:// only.",
            default=None,
        ),
        Key(
            "ssl_keyfile",
            FilePath(),
            "Unencrypted private key of the TLS client certificate; set with ssl_certfile. "
            "rediss:// only.",
            default=None,
        ),
    ),
    rules=(
        WhenSet("persist_file", then=(Required(("key_file",)),)),
        *(
            WhenSet(name, then=(Required(("url",)), Matches("url", r"rediss://.*")))
            for name in REDIS_TLS_KEYS
        ),
        Together(("ssl_certfile", "ssl_keyfile")),
    ),
)

# --------------------------------------------------------------------------- upstreams

UPSTREAM_KEYS = KeyTable(
    "[upstreams.NAME]",
    "Proxy mode: requests to /v1/proxy/NAME/PATH go to base_url/PATH with a profile's "
    "token attached.",
    (
        Key(
            "base_url",
            Text(r"https?://\S+"),
            "Where requests go: https unless allow_http = true; no user info, query or "
            "fragment; a literal private address needs allow_private = true.",
            default=None,
        ),
        Key(
            "profile",
            Text(),
            "The client-credentials profile whose token is attached (or set exchange).",
            default=None,
        ),
        Key(
            "exchange",
            Text(),
            "A token exchange profile: each request's Token-Sidecar-Subject is exchanged "
            "for a per-user token, which is attached (instead of profile).",
            default=None,
        ),
        Key(
            "header",
            Text(HEADER_NAME_PATTERN),
            'The request header that carries "<token_type> <token>"; the caller\'s own '
            "value is replaced, never kept.",
            default="Authorization",
        ),
        Key(
            "set_headers",
            StringTable(name_pattern=HEADER_NAME_PATTERN, value_pattern=r"[^\r\n\x00]*"),
            "Static request headers, replacing the caller's of the same name "
            '({ "X-Tenant" = "acme" }).',
            default={},
        ),
        Key(
            "connect_timeout",
            Duration(),
            "DNS, a pooled connection, TCP and TLS; past it: 502 upstream_unreachable.",
            default="5s",
        ),
        Key(
            "response_timeout",
            Duration(),
            "From the end of the request body to the upstream's status line and headers; "
            "past it: 504 upstream_timeout.",
            default="30s",
        ),
        Key(
            "idle_timeout",
            Duration(),
            "Longest pause between body chunks, either way; there is no total cap (SSE).",
            default="300s",
        ),
        Key(
            "retry_on_401",
            Flag(),
            "Retry once with a new token after an upstream 401.",
            default=True,
        ),
        Key(
            "retry_body_limit",
            Size(),
            "Request bodies up to this size (at most 16MiB) are buffered so a 401 can be "
            "retried; 0 buffers none.",
            default="64KiB",
        ),
        Key(
            "ca_file",
            FilePath(),
            "Extra CA bundle (PEM) for the upstream, besides the system store.",
            default=None,
        ),
        Key(
            "client_cert_file",
            FilePath(),
            "TLS client certificate towards the upstream; set with client_key_file.",
            default=None,
        ),
        Key(
            "client_key_file",
            FilePath(),
            "Key of the TLS client certificate; set with client_cert_file.",
            default=None,
        ),
        Key(
            "allow_private",
            Flag(),
            "Allow an upstream at a loopback, private, link-local or metadata address "
            "(a host name is checked at every connection).",
            default=False,
        ),
        Key(
            "allow_http",
            Flag(),
            "Allow a plain http:// base_url (the token then travels in clear).",
            default=False,
        ),
    ),
    rules=(
        Required(("base_url",)),
        ExactlyOne(("profile", "exchange")),
        Together(("client_cert_file", "client_key_file")),
        When("allow_http", value=False, then=(Matches("base_url", r"https://.*"),)),
    ),
)

# --------------------------------------------------------------------------- the document

DOCUMENT_KEYS = KeyTable(
    "token-sidecar configuration",
    "The config file of token-sidecar (`token-sidecar serve --config FILE`). "
    "Reference: docs/configuration.md.",
    (
        Key("server", Subtable(SERVER_KEYS), SERVER_KEYS.description, default=None),
        Key("cache", Subtable(CACHE_KEYS), CACHE_KEYS.description, default=None),
        Key(
            "profiles",
            NamedTables(PROFILE_KEYS, PROFILE_NAME_PATTERN, minimum=1),
            "The profiles, at least one; a name matches " + PROFILE_NAME_PATTERN + ".",
            default=None,
        ),
        Key(
            "upstreams",
            NamedTables(UPSTREAM_KEYS, UPSTREAM_NAME_PATTERN),
            "Proxy mode's upstreams (optional); a name follows the profile-name rule.",
            default=None,
        ),
    ),
    rules=(Required(("profiles",)),),
)
