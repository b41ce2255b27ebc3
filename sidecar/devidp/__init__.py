"""The development IdP: an Auth0-compatible token endpoint with runtime fault injection.

:class:`DevIdP` serves a real :class:`aiohttp.web.Application` that issues
client-credentials tokens the way an Auth0 tenant does (RS256 JWTs with
``iss``/``sub``/``aud``/``azp``/``gty``, Auth0's error shapes and rate-limit
headers) and publishes its keys at ``/.well-known/jwks.json``. It also
exchanges users' tokens (minted for tests by :meth:`DevIdP.issue_user_token`)
by RFC 8693 token exchange, as Auth0's On-Behalf-Of does (nested ``act``
claims), and by Entra's ``jwt-bearer`` on-behalf-of grant. Tests serve it on
an ephemeral loopback port and flip the knobs of :class:`Faults` on the Python
object between requests; ``token-sidecar dev`` embeds it in the same process.

Endpoints::

    POST /oauth/token                       form or JSON body; faults apply here only
    GET  /.well-known/jwks.json             the published signing keys
    GET  /.well-known/openid-configuration  issuer, token_endpoint, jwks_uri

A request to the token endpoint goes through, in order: fault knobs that
replace the answer (delay, hang, reset, status, rate limit, garbage), then
``grant_type``, client authentication (exactly one of ``client_secret_post``,
``client_secret_basic``, ``private_key_jwt``), for the exchange grants the
exchange knobs and the user's token, the client's grants (audience, scopes),
and issuance, where the token-shaping knobs apply. Time for claims
and rate-limit headers comes from the injected :class:`~sidecar.clock.Clock`;
only ``delay`` waits in real time. Secrets, assertions and tokens never appear
in a repr.

The package holds one concept per module, and the IdP is built by
composition: each object gets its collaborators (the shared state, the clock)
when it is made, and no class inherits from another to share attributes::

    DevIdP (_idp)                      what tests drive and read; settings and counters
    |                                  are properties over its state
    +-- IdPState (_state)              issuer and base URL, settings, clients, counters,
    |   |                              recorded requests (_records)
    |   +-- KeyRing (_keys)            signs, publishes, rotates and verifies
    |   +-- Faults (_faults)           the knobs, and the gate hung requests park on
    +-- TokenEndpoint (_grant)         POST /oauth/token, given the state and the clock
    |   +-- ClientAuthenticator        secret or private_key_jwt; the jti replay memory
    |   |   (_clientauth)
    |   +-- TokenIssuer (_issuance)    client grants; signs and answers tokens, with the knobs
    |   +-- ExchangeGrants (_exchange) token exchange and on-behalf-of: the user's token
    +-- WellKnownEndpoints (_server)   the JWKS and discovery, given the state
    +-- LoopbackServer (_server)       an AppRunner on host:port

``_oauth`` holds Auth0's wire format: constants, body parsing, error answers.
"""

from sidecar.devidp._faults import WRONG_AUDIENCE, Faults
from sidecar.devidp._idp import DEV_IDP, DevIdP
from sidecar.devidp._keys import generate_private_key, public_key_pem
from sidecar.devidp._oauth import (
    ACCESS_TOKEN_TYPE,
    ASSERTION_TYPE,
    AUTH_METHODS,
    JWT_BEARER_GRANT,
    MAX_ASSERTION_BYTES,
    MAX_ASSERTION_LIFETIME,
    NO_AUDIENCE,
    RATE_LIMIT,
    TOKEN_EXCHANGE_GRANT,
)
from sidecar.devidp._records import DevClient, MaskedValues, RecordedRequest

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "ASSERTION_TYPE",
    "AUTH_METHODS",
    "DEV_IDP",
    "JWT_BEARER_GRANT",
    "MAX_ASSERTION_BYTES",
    "MAX_ASSERTION_LIFETIME",
    "NO_AUDIENCE",
    "RATE_LIMIT",
    "TOKEN_EXCHANGE_GRANT",
    "WRONG_AUDIENCE",
    "DevClient",
    "DevIdP",
    "Faults",
    "MaskedValues",
    "RecordedRequest",
    "generate_private_key",
    "public_key_pem",
]
