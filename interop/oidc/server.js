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

function buildProvider(activeKey, nextKey) {
  const provider = new Provider(issuer, {
    clients,
    jwks: { keys: [activeKey, nextKey] },
    scopes: ['openid', 'offline_access', 'read:tools', 'write:tools'],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => undefined,
        useGrantedResource: () => false,
        getResourceServerInfo: (ctx, resourceIndicator) => {
          const server = resources[resourceIndicator];
          if (!server) {
            throw new errors.InvalidTarget();
          }
          return {
            scope: server.scope ?? 'read:tools write:tools',
            audience: resourceIndicator,
            accessTokenTTL: server.ttl ?? defaultTTL,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256', kid: activeKey.kid } },
          };
        },
      },
    },
    ttl: {
      ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL ?? defaultTTL,
    },
    clientAuthMethods: ['client_secret_basic', 'client_secret_post', 'private_key_jwt'],
    enabledJWA: {
      clientAuthSigningAlgValues: ['RS256', 'PS256', 'ES256'],
    },
  });
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

const server = http.createServer((req, res) => {
  if (req.url === '/__admin/rotate') {
    if (req.method !== 'POST') {
      res.writeHead(405).end();
      return;
    }
    const body = JSON.stringify(rotate());
    res.writeHead(200, { 'content-type': 'application/json' }).end(body);
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
