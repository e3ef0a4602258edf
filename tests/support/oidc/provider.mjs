// A real OpenID Connect provider for the single sign-on tests: panva's oidc-provider (OpenID Certified),
// with its own development login and consent pages.  Any login name is accepted (the password is ignored);
// the accounts' claims come from the JSON file named by OIDC_ACCOUNTS: {"alice": {"name": ..., "groups": [...]}}.
//   node provider.mjs <port> <client_id> <client_secret> <redirect_uri> <accounts.json>
import { readFileSync } from "node:fs";
import Provider from "oidc-provider";

const [port, clientId, clientSecret, redirectUri, accountsFile] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;

const configuration = {
  clients: [
    {
      client_id: clientId,
      client_secret: clientSecret,
      redirect_uris: [redirectUri],
      post_logout_redirect_uris: [new URL("/login", redirectUri).href], // pacs-vlm's sign-in page
      response_types: ["code"],
      grant_types: ["authorization_code"],
      token_endpoint_auth_method: "client_secret_basic",
    },
  ],
  pkce: { required: () => true },
  claims: { openid: ["sub"], profile: ["name", "preferred_username"], groups: ["groups"] },
  scopes: ["openid", "profile", "groups"],
  // false: the profile and groups claims in the ID token, as many hospital providers do; OIDC_CONFORM_ID_TOKEN=1:
  // only in UserInfo (the ID token carries sub), as others do
  conformIdTokenClaims: process.env.OIDC_CONFORM_ID_TOKEN === "1",
  features: { devInteractions: { enabled: true } },
  cookies: { keys: ["test-only-cookie-key"] },
  async findAccount(ctx, id) {
    const accounts = JSON.parse(readFileSync(accountsFile, "utf8"));
    const account = accounts[id];
    if (!account) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: `sub-${id}`, preferred_username: id, ...account };
      },
    };
  },
};

const provider = new Provider(issuer, configuration);
provider.listen(Number(port), "127.0.0.1", () => {
  console.log(`oidc-provider listening on ${issuer}`);
});
