// oidc-provider (a certified OpenID Connect implementation) as the IdP for the
// interop tests in tests/test_interop.py. Loopback only, test use only.
//
// Usage: node server.js CONFIG.json
//
// CONFIG.json (written by the test):
//   {
//     "port": 40123,                                  // 127.0.0.1:<port>
//     "resources": {"https://api.example.com/": {"scope": "read:tools write:tools", "ttl": 600}},
//     "clients": [{"client_id": "...", "client_secret": "...",
//                  "token_endpoint_auth_method": "client_secret_basic",
//                  "scope": "read:tools write:tools"},
//                 {"client_id": "...", "token_endpoint_auth_method": "private_key_jwt",
//                  "jwks": {"keys": [<public JWK>]}}]
//   }
//
// Client credentials grant with resource indicators (RFC 8707): a request with
// `resource` set to a configured resource gets an RS256 JWT access token whose
// `aud` is that resource; a request without `resource` gets an opaque token.
//
// Signing keys are generated here. The JWKS always publishes the active key and
// the next one (pre-published, as a careful IdP rotates). `POST /__admin/rotate`
// makes the next key active, retires the old one (gone from the JWKS) and
// publishes a new next key; it answers {"active_kid", "published_kids"}.
//
// Token exchange (RFC 8693), when CONFIG.json has an "exchange" object:
//   "exchange": {"subject_audiences": ["https://mcp.example.com/"]}   // optional
// registers grant_type=urn:ietf:params:oauth:grant-type:token-exchange for the
// clients whose "grant_types" list it. The subject_token must be a JWT signed by
// one of this provider's published keys (active or next), with this issuer, not
// expired, whose `sub` is a user (not the `client_id` of a client credentials
// token) and, when "subject_audiences" is set, whose `aud` names one of them.
// `audience` and/or `resource` must name one configured resource (the same
// table as above; both may be given if they agree); `scope` must be within that
// resource's scope and the client's. The answer is an RS256 JWT access token
// for that resource, living the resource's ttl (never capped by the subject's
// exp, as Auth0 does), with `sub` the subject's user, `client_id` the calling
// client and `act: {"sub": <client_id>}` (the subject's own `act`, if any,
// nested inside). Errors: invalid_request (missing or unsupported parameters),
// invalid_grant (the subject token: bad, expired, foreign, not a user),
// invalid_target, invalid_scope; each with an error_description naming the
// reason and never the token.
//
// Test-only endpoints (loopback, no authentication):
//   POST /__admin/rotate       see above.
//   POST /__admin/user-token   {"sub": "alice", "audience": "https://mcp.example.com/",
//                               "scope": "...", "ttl": 300, "client_id": "mcp-client",
//                               "act": {...}}  (all but "sub" and "audience" optional;
//                               a negative ttl mints an already expired token)
//       mints the access token a user would hold after signing in to client_id:
//       an RS256 at+jwt signed with the active key; answers
//       {"access_token", "expires_at", "kid"}.
//   GET  /__admin/grants       {"<grant_type>": {"success": n, "errors": {"<error>": n}}}
//       every token request since start, by grant type and outcome.
//
// Prints one JSON line {"event": "ready", "issuer": ..., "active_kid": ...} on
// stdout once it listens.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';

import Provider, { errors } from 'oidc-provider';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const host = '127.0.0.1';
const issuer = `http://${host}:${config.port}`;
const resources = config.resources ?? {};
const defaultTTL = 600;

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const JWT_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:jwt';
const EXCHANGED_TYPES = new Set([ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE]);
const exchange = config.exchange ?? null;
const subjectAudiences = exchange?.subject_audiences ? new Set(exchange.subject_audiences) : null;

const resourceScopes = Object.values(resources).flatMap((r) => (r.scope ?? '').split(' ').filter(Boolean));
const scopes = [...new Set(['openid', 'offline_access', 'read:tools', 'write:tools', ...resourceScopes])];

let generation = 0;
function newSigningKey() {
  generation += 1;
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: `interop-${generation}-${crypto.randomBytes(4).toString('hex')}`, alg: 'RS256', use: 'sig' };
}

const clients = config.clients.map((client) => ({
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  scope: 'read:tools write:tools',
  ...client,
}));

// Token requests by grant type and outcome, for GET /__admin/grants.
const grantCounts = {};
function countGrant(ctx, outcome) {
  const grantType = ctx.oidc?.params?.grant_type ?? '(none)';
  grantCounts[grantType] ??= { success: 0, errors: {} };
  const entry = grantCounts[grantType];
  if (outcome === 'success') {
    entry.success += 1;
  } else {
    entry.errors[outcome] = (entry.errors[outcome] ?? 0) + 1;
  }
}

function resourceServerInfo(indicator, activeKey) {
  const server = resources[indicator];
  if (!server) {
    return undefined;
  }
  return {
    scope: server.scope ?? 'read:tools write:tools',
    audience: indicator,
    accessTokenTTL: server.ttl ?? defaultTTL,
    accessTokenFormat: 'jwt',
    jwt: { sign: { alg: 'RS256', kid: activeKey.kid } },
  };
}

function base64urlJSON(value) {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

function signJWT(header, payload, key) {
  const input = `${base64urlJSON(header)}.${base64urlJSON(payload)}`;
  const privateKey = crypto.createPrivateKey({ key, format: 'jwk' });
  return `${input}.${crypto.sign('sha256', Buffer.from(input), privateKey).toString('base64url')}`;
}

function asList(value) {
  if (value === undefined) {
    return [];
  }
  return Array.isArray(value) ? value : [value];
}

function subjectRejected(reason) {
  return new errors.CustomOIDCProviderError('invalid_grant', reason);
}

// The claims of a subject token this provider can vouch for, or invalid_grant.
function verifySubject(token, publishedKeys) {
  const parts = token.split('.');
  if (parts.length !== 3) {
    throw subjectRejected('subject_token is not a JWT');
  }
  let header;
  let claims;
  try {
    header = JSON.parse(Buffer.from(parts[0], 'base64url').toString('utf8'));
    claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'));
  } catch {
    throw subjectRejected('subject_token is not a JWT');
  }
  if (header === null || typeof header !== 'object' || claims === null || typeof claims !== 'object') {
    throw subjectRejected('subject_token is not a JWT');
  }
  if (header.alg !== 'RS256') {
    throw subjectRejected('subject_token is not signed with RS256');
  }
  const key = publishedKeys.find((k) => k.kid === header.kid);
  if (!key) {
    throw subjectRejected('subject_token is signed with a key this provider does not publish');
  }
  const publicKey = crypto.createPublicKey({ key, format: 'jwk' });
  const signed = Buffer.from(`${parts[0]}.${parts[1]}`);
  if (!crypto.verify('sha256', signed, publicKey, Buffer.from(parts[2], 'base64url'))) {
    throw subjectRejected('subject_token signature is invalid');
  }
  if (claims.iss !== issuer) {
    throw subjectRejected('subject_token was issued by another issuer');
  }
  const now = Math.floor(Date.now() / 1000);
  if (typeof claims.exp !== 'number' || claims.exp <= now) {
    throw subjectRejected('subject_token has expired');
  }
  if (typeof claims.nbf === 'number' && claims.nbf > now) {
    throw subjectRejected('subject_token is not valid yet');
  }
  if (typeof claims.sub !== 'string' || claims.sub === '') {
    throw subjectRejected('subject_token has no sub');
  }
  if (claims.sub === claims.client_id) {
    throw subjectRejected('subject_token represents a client, not a user');
  }
  if (subjectAudiences && !asList(claims.aud).some((aud) => subjectAudiences.has(aud))) {
    throw subjectRejected('subject_token audience is not accepted here');
  }
  return claims;
}

// The `act` claim of each exchanged token, added by extraTokenClaims below.
const actors = new WeakMap();

// RFC 8693 token exchange: the subject's user, acted for by the calling client.
function tokenExchangeHandler(provider, activeKey, publishedKeys) {
  return async function tokenExchange(ctx) {
    const { client, params } = ctx.oidc;
    for (const name of ['subject_token', 'subject_token_type']) {
      if (!params[name]) {
        throw new errors.InvalidRequest(`missing required parameter '${name}'`);
      }
    }
    if (!EXCHANGED_TYPES.has(params.subject_token_type)) {
      throw new errors.InvalidRequest('unsupported subject_token_type');
    }
    const issuedType = params.requested_token_type ?? ACCESS_TOKEN_TYPE;
    if (!EXCHANGED_TYPES.has(issuedType)) {
      throw new errors.InvalidRequest('unsupported requested_token_type');
    }
    if (params.actor_token !== undefined) {
      throw new errors.InvalidRequest('actor_token is not supported');
    }

    const targets = new Set([...asList(params.audience), ...asList(params.resource)]);
    if (targets.size === 0) {
      throw new errors.InvalidRequest('audience or resource is required');
    }
    if (targets.size > 1) {
      throw new errors.InvalidTarget('only one audience or resource may be requested');
    }
    const [target] = targets;
    const server = resourceServerInfo(target, activeKey);
    if (!server) {
      throw new errors.InvalidTarget('unknown audience or resource');
    }

    const subject = verifySubject(params.subject_token, publishedKeys);

    const serverScopes = new Set(server.scope.split(' '));
    const clientScopes = new Set((client.scope ?? '').split(' '));
    let granted;
    if (params.scope === undefined) {
      granted = [...serverScopes].filter((s) => clientScopes.has(s));
    } else {
      granted = params.scope.split(' ').filter(Boolean);
      const refused = granted.filter((s) => !serverScopes.has(s) || !clientScopes.has(s));
      if (refused.length) {
        throw new errors.InvalidScope('requested scope is not allowed for this client and audience', refused.join(' '));
      }
    }
    const scope = granted.join(' ') || undefined;

    const act = { sub: client.clientId };
    if (subject.act && typeof subject.act === 'object') {
      act.act = subject.act;
    }
    const token = new provider.AccessToken({
      accountId: subject.sub,
      client,
      gty: 'token_exchange',
      scope,
    });
    actors.set(token, act);
    token.resourceServer = { ...server, identifier: () => target };
    ctx.oidc.entity('AccessToken', token);
    const value = await token.save();

    ctx.body = {
      access_token: value,
      issued_token_type: issuedType,
      token_type: token.tokenType,
      expires_in: token.expiration,
      scope,
    };
  };
}

function buildProvider(activeKey, nextKey) {
  const provider = new Provider(issuer, {
    clients,
    jwks: { keys: [activeKey, nextKey] },
    scopes,
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => undefined,
        useGrantedResource: () => false,
        getResourceServerInfo: (ctx, resourceIndicator) => {
          const server = resourceServerInfo(resourceIndicator, activeKey);
          if (!server) {
            throw new errors.InvalidTarget();
          }
          return server;
        },
      },
    },
    ttl: {
      AccessToken: (ctx, token) => token.resourceServer?.accessTokenTTL ?? defaultTTL,
      ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL ?? defaultTTL,
    },
    extraTokenClaims: (ctx, token) => (actors.has(token) ? { act: actors.get(token) } : undefined),
    clientAuthMethods: ['client_secret_basic', 'client_secret_post', 'private_key_jwt'],
    enabledJWA: {
      clientAuthSigningAlgValues: ['RS256', 'PS256', 'ES256'],
    },
  });
  if (exchange) {
    provider.registerGrantType(
      TOKEN_EXCHANGE,
      tokenExchangeHandler(provider, activeKey, [activeKey, nextKey]),
      ['audience', 'resource', 'scope', 'requested_token_type', 'subject_token',
        'subject_token_type', 'actor_token', 'actor_token_type'],
      ['audience', 'resource'],
    );
  }
  provider.on('grant.success', (ctx) => countGrant(ctx, 'success'));
  provider.on('grant.error', (ctx, err) => countGrant(ctx, err.error ?? 'server_error'));
  provider.on('server_error', (ctx, err) => {
    process.stderr.write(`server_error: ${err.stack}\n`);
  });
  return provider;
}

let keys = { active: newSigningKey(), next: newSigningKey() };
let handler = buildProvider(keys.active, keys.next).callback();

function rotate() {
  keys = { active: keys.next, next: newSigningKey() };
  handler = buildProvider(keys.active, keys.next).callback();
  return { active_kid: keys.active.kid, published_kids: [keys.active.kid, keys.next.kid] };
}

// A user's access token as this provider would issue it after a sign-in.
function mintUserToken(request) {
  if (typeof request.sub !== 'string' || typeof request.audience !== 'string') {
    throw new TypeError('"sub" and "audience" are required strings');
  }
  const now = Math.floor(Date.now() / 1000);
  const exp = now + (request.ttl ?? 300);
  const claims = {
    iss: issuer,
    sub: request.sub,
    aud: request.audience,
    iat: now,
    exp,
    jti: crypto.randomUUID(),
    client_id: request.client_id ?? 'mcp-client',
    ...(request.scope ? { scope: request.scope } : {}),
    ...(request.act ? { act: request.act } : {}),
  };
  const header = { alg: 'RS256', typ: 'at+jwt', kid: keys.active.kid };
  return { access_token: signJWT(header, claims, keys.active), expires_at: exp, kid: keys.active.kid };
}

function sendJSON(res, status, value) {
  res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(value));
}

function admin(req, res) {
  if (req.url === '/__admin/rotate' && req.method === 'POST') {
    sendJSON(res, 200, rotate());
  } else if (req.url === '/__admin/grants' && req.method === 'GET') {
    sendJSON(res, 200, grantCounts);
  } else if (req.url === '/__admin/user-token' && req.method === 'POST') {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => {
      try {
        sendJSON(res, 200, mintUserToken(JSON.parse(Buffer.concat(chunks).toString('utf8'))));
      } catch (err) {
        sendJSON(res, 400, { error: 'invalid_request', error_description: err.message });
      }
    });
  } else {
    res.writeHead(405).end();
  }
}

const server = http.createServer((req, res) => {
  if (req.url.startsWith('/__admin/')) {
    admin(req, res);
    return;
  }
  handler(req, res);
});

server.listen(config.port, host, () => {
  process.stdout.write(`${JSON.stringify({ event: 'ready', issuer, active_kid: keys.active.kid })}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  });
}
