/** The running stack the tests talk to, as the Rust end-to-end test that starts it describes it in the environment. */
function required(name: string): string {
  const value = process.env[name];
  if (!value) {
    throw new Error(
      `${name} is not set: these tests run against a stack (cargo nextest run -p tollgate-e2e typescript::)`,
    );
  }
  return value;
}

export const stack = {
  /** The control plane. */
  controlPlane: required("TOLLGATE_CP_URL"),
  /** A proxy in front of the upstream API. */
  proxy: required("TOLLGATE_PROXY_URL"),
  /** The org the credentials belong to. */
  orgId: required("TOLLGATE_ORG_ID"),
  /** A Clerk session token of the org's owner. */
  sessionToken: required("TOLLGATE_SESSION_TOKEN"),
  /** An API key of the org. */
  apiKey: required("TOLLGATE_API_KEY"),
};
