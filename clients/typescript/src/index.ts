/**
 * A typed client for Tollgate's control plane.
 *
 * The paths, bodies and answers are the OpenAPI document the control plane serves (`openapi.json`, turned into
 * `schema.d.ts` by openapi-typescript: never edited by hand, see `generate.sh`); `openapi-fetch` is the runtime.
 * This file adds what every caller needs on top: the caller's credentials on each request, a fresh
 * `Idempotency-Key` for calls that must happen once, and the error bodies as types.
 */
import createClient, { type Client, type ClientOptions } from "openapi-fetch";
import type { components, operations, paths } from "./schema";

export type { components, operations, paths };

/** Every error body (RFC 9457, `application/problem+json`); `field` names the request field at fault. */
export type Problem = components["schemas"]["Problem"];

/**
 * The standard denial envelope (429): the quota's state when a metered call is refused, with `Retry-After`. The
 * proxy and `POST /api/quota/check` send it byte for byte the same.
 */
export type QuotaExceeded = components["schemas"]["QuotaExceeded"];

/**
 * An `Idempotency-Key`: the same key with the same request replays the first answer for 24 hours (with
 * `Idempotent-Replayed: true`); with another request it is 409. Make one per intent with {@link idempotencyKey}
 * and send it again on every retry of that intent.
 */
export type IdempotencyKey = string & { readonly __idempotencyKey: unique symbol };

/** A new key for one intent (a random UUID). */
export function idempotencyKey(): IdempotencyKey {
  return globalThis.crypto.randomUUID() as IdempotencyKey;
}

/** The headers of a call made once: `{ "Idempotency-Key": key }`, for `params.header`. */
export function once(key: IdempotencyKey): { "Idempotency-Key": string } {
  return { "Idempotency-Key": key };
}

/** How the client authenticates: a Clerk session token (a browser or a server acting for a user), an org's API key, or nothing. */
export type Credentials =
  | { kind: "session"; token: () => string | null | undefined | Promise<string | null | undefined> }
  | { kind: "apiKey"; key: string }
  | { kind: "none" };

export interface TollgateClientOptions extends Omit<ClientOptions, "baseUrl"> {
  /** The control plane, e.g. `https://tollgate.example.com` (no trailing path). */
  baseUrl: string;
  auth: Credentials;
}

/** The control plane's client: `client.GET("/api/me/entitlements.read")`, `client.POST(...)`, typed end to end. */
export type TollgateClient = Client<paths>;

/** Makes a client that sends `auth` with every request. */
export function createTollgateClient(options: TollgateClientOptions): TollgateClient {
  const { auth, baseUrl, ...rest } = options;
  const client = createClient<paths>({ baseUrl: baseUrl.replace(/\/+$/, ""), ...rest });
  client.use({
    async onRequest({ request }) {
      switch (auth.kind) {
        case "session": {
          const token = await auth.token();
          if (token) request.headers.set("Authorization", `Bearer ${token}`);
          break;
        }
        case "apiKey":
          request.headers.set("x-api-key", auth.key);
          break;
        case "none":
          break;
      }
      return request;
    },
  });
  return client;
}

/** Whether `body` is a problem+json body. */
export function isProblem(body: unknown): body is Problem {
  if (typeof body !== "object" || body === null) return false;
  const b = body as Record<string, unknown>;
  return typeof b.type === "string" && typeof b.title === "string" && typeof b.status === "number";
}

/** Whether `body` is the standard denial envelope. */
export function isQuotaExceeded(body: unknown): body is QuotaExceeded {
  return isProblem(body) && body.status === 429 && "allow" in body && "periodKey" in body;
}

/** Seconds to wait before retrying, from a response's `Retry-After` (seconds or an HTTP date); `undefined` if absent. */
export function retryAfter(response: Response, now: Date = new Date()): number | undefined {
  const value = response.headers.get("Retry-After");
  if (value === null) return undefined;
  if (/^\d+$/.test(value.trim())) return Number(value.trim());
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, Math.ceil((at - now.getTime()) / 1000));
}
