// A real OpenID provider for Midosoc's tests: `oidc-provider` (OpenID
// certified) with the clients the token issuers and analyst sign-in use.
//
//   node tests/oidc/provider.mjs [PORT]
//
// PORT (argument or environment variable) defaults to 0, a free port. When
// listening, the script prints one JSON line on stdout:
//
//   {"issuer":"http://127.0.0.1:PORT","port":PORT}
//
// Clients:
//
// - `midosoc-gateway` (client_secret_basic) and `midosoc-gateway-post`
//   (client_secret_post): machine-to-machine clients with the
//   client-credentials grant. Resource indicators (RFC 8707) are on; when a
//   request names no `resource` (as Auth0-style clients that send
//   `audience` do not), the default resource `https://api.midosoc.test` is
//   used, so the access token is a JWT whose `aud` is that resource.
//   `https://admin.midosoc.test` exists but these clients may not use it;
//   asking for it, or any unknown resource, answers `invalid_target`.
// - `midosoc-dashboard` (client_secret_basic): authorization code flow with
//   PKCE S256 for analyst sign-in. The development login pages accept any
//   name; the ID token carries `https://midosoc.dev/roles`, derived from the
//   name: `viewer...` is a viewer, `approver...` an approver, `admin...` an
//   admin, anyone else has no role. Its post-logout redirect URIs are the
//   origins of its redirect URIs with a `/` path, unless given.
// - `midosoc-other-app` (secret `other-secret`): another code-flow client
//   with the same redirect URIs, whose codes the dashboard must refuse.
//
// Environment:
//
//   OIDC_GATEWAY_SECRET          secret of both gateway clients (gateway-secret)
//   OIDC_DASHBOARD_SECRET        secret of the dashboard client (dashboard-secret)
//   OIDC_DASHBOARD_REDIRECT_URI  its redirect URIs, comma separated
//                                (http://127.0.0.1:8080/auth/callback)
//   OIDC_DASHBOARD_POST_LOGOUT_REDIRECT_URI
//                                its post-logout redirect URIs, comma
//                                separated (http://127.0.0.1:8080/)
//   OIDC_ACCESS_TOKEN_TTL        access token lifetime in seconds (300)
//
// For tests, `GET /test/stats` answers {"token_requests": N}: how many
// requests reached the token endpoint since start.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';

import Provider, { errors } from 'oidc-provider';

const env = process.env;
const port = Number(process.argv[2] ?? env.PORT ?? 0);
const gatewaySecret = env.OIDC_GATEWAY_SECRET ?? 'gateway-secret';
const dashboardSecret = env.OIDC_DASHBOARD_SECRET ?? 'dashboard-secret';
const redirectUris = (env.OIDC_DASHBOARD_REDIRECT_URI ?? 'http://127.0.0.1:8080/auth/callback')
  .split(',')
  .map((uri) => uri.trim())
  .filter(Boolean);
const postLogoutUris = (env.OIDC_DASHBOARD_POST_LOGOUT_REDIRECT_URI ?? '')
  .split(',')
  .map((uri) => uri.trim())
  .filter(Boolean);
if (postLogoutUris.length === 0) {
  postLogoutUris.push(...new Set(redirectUris.map((uri) => `${new URL(uri).origin}/`)));
}
const accessTokenTtl = Number(env.OIDC_ACCESS_TOKEN_TTL ?? 300);

const ROLES_CLAIM = 'https://midosoc.dev/roles';
const DEFAULT_RESOURCE = 'https://api.midosoc.test';
const GATEWAY_CLIENTS = ['midosoc-gateway', 'midosoc-gateway-post'];

// The APIs this provider issues tokens for, and which clients may ask.
const RESOURCES = {
  [DEFAULT_RESOURCE]: {
    scope: 'read:things write:things delete:things',
    clients: GATEWAY_CLIENTS,
  },
  'https://admin.midosoc.test': { scope: 'admin', clients: [] },
};

// Roles by the prefix of the account name typed on the login page.
const ROLE_PREFIXES = [
  ['viewer', 'viewer'],
  ['approver', 'approver'],
  ['admin', 'admin'],
];

function rolesFor(name) {
  return ROLE_PREFIXES.filter(([prefix]) => name.startsWith(prefix)).map(([, role]) => role);
}

function gatewayClient(clientId, method) {
  return {
    client_id: clientId,
    client_secret: gatewaySecret,
    token_endpoint_auth_method: method,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
  };
}

const signingKey = generateKeyPairSync('rsa', { modulusLength: 2048 })
  .privateKey.export({ format: 'jwk' });

const configuration = {
  clients: [
    gatewayClient('midosoc-gateway', 'client_secret_basic'),
    gatewayClient('midosoc-gateway-post', 'client_secret_post'),
    {
      client_id: 'midosoc-dashboard',
      client_secret: dashboardSecret,
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['authorization_code'],
      response_types: ['code'],
      redirect_uris: redirectUris,
      post_logout_redirect_uris: postLogoutUris,
    },
    {
      client_id: 'midosoc-other-app',
      client_secret: 'other-secret',
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['authorization_code'],
      response_types: ['code'],
      redirect_uris: redirectUris,
    },
  ],
  jwks: { keys: [{ ...signingKey, kid: 'midosoc-test-rs256', alg: 'RS256', use: 'sig' }] },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  pkce: { required: () => true },
  claims: {
    openid: ['sub', ROLES_CLAIM],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
  },
  // Claims of the granted scopes go into the ID token too, so the
  // dashboard reads the roles without calling userinfo.
  conformIdTokenClaims: false,
  async findAccount(_ctx, id) {
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          name: id,
          preferred_username: id,
          email: `${id}@midosoc.test`,
          email_verified: true,
          [ROLES_CLAIM]: rolesFor(id),
        };
      },
    };
  },
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      async defaultResource(_ctx, client, oneOf) {
        if (oneOf) return oneOf;
        return GATEWAY_CLIENTS.includes(client?.clientId) ? DEFAULT_RESOURCE : undefined;
      },
      async getResourceServerInfo(_ctx, resource, client) {
        const info = RESOURCES[resource];
        if (!info || !info.clients.includes(client.clientId)) {
          throw new errors.InvalidTarget(`client may not use resource ${resource}`);
        }
        return {
          scope: info.scope,
          audience: resource,
          accessTokenTTL: accessTokenTtl,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  ttl: {
    AccessToken: accessTokenTtl,
    ClientCredentials: accessTokenTtl,
    AuthorizationCode: 60,
    IdToken: 3600,
    Interaction: 3600,
    Grant: 86400,
    Session: 86400,
  },
};

let tokenRequests = 0;
const server = createServer();

server.listen(port, '127.0.0.1', () => {
  const { port: actual } = server.address();
  const issuer = `http://127.0.0.1:${actual}`;
  const provider = new Provider(issuer, configuration);
  provider.on('server_error', (_ctx, error) => console.error('server_error', error));

  const handle = provider.callback();
  server.on('request', (req, res) => {
    if (req.method === 'GET' && req.url === '/test/stats') {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ token_requests: tokenRequests }));
      return;
    }
    if (req.method === 'POST' && req.url.split('?')[0] === '/token') {
      tokenRequests += 1;
    }
    handle(req, res);
  });

  console.log(JSON.stringify({ issuer, port: actual }));
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
