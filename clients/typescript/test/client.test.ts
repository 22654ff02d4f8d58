import { describe, expect, it } from "vitest";
import {
  createTollgateClient,
  idempotencyKey,
  isProblem,
  isQuotaExceeded,
  once,
  retryAfter,
  type Problem,
  type QuotaExceeded,
} from "../src/index";
import { stack } from "./stack";

const asOwner = createTollgateClient({
  baseUrl: stack.controlPlane,
  auth: { kind: "session", token: () => stack.sessionToken },
});
const asKey = createTollgateClient({
  baseUrl: stack.controlPlane,
  auth: { kind: "apiKey", key: stack.apiKey },
});

describe("the typed client against a running control plane", () => {
  it("reads the org's entitlements with a session token", async () => {
    const { data, error, response } = await asOwner.GET("/api/me/entitlements.read", {
      params: { query: { metric: "api_call" } },
    });
    expect(response.status).toBe(200);
    expect(error).toBeUndefined();
    expect(data?.metric).toBe("api_call");
    expect(data?.periodKey).toMatch(/^\d{4}-\d{2}$/);
    expect(data?.remaining).toBe((data?.included ?? 0) - (data?.used ?? 0));
  });

  it("answers bad input with a problem naming the field", async () => {
    const { data, error, response } = await asOwner.POST("/api/keys.create", {
      body: { orgId: stack.orgId, name: "" },
    });
    expect(data).toBeUndefined();
    expect(response.status).toBe(422);
    expect(response.headers.get("content-type")).toContain("application/problem+json");
    const problem: Problem | undefined = error;
    expect(isProblem(problem)).toBe(true);
    expect(problem?.field).toBe("name");
  });

  it("answers a call without credentials with a 401 problem", async () => {
    const anonymous = createTollgateClient({ baseUrl: stack.controlPlane, auth: { kind: "none" } });
    const { error, response } = await anonymous.GET("/api/me/entitlements.read");
    expect(response.status).toBe(401);
    expect(isProblem(error)).toBe(true);
  });

  it("replays a call made again with its Idempotency-Key", async () => {
    const key = idempotencyKey();
    const body = {
      orgId: stack.orgId,
      metric: "api_call" as const,
      value: 1,
      occurredAt: new Date().toISOString(),
      request_id: globalThis.crypto.randomUUID(),
    };
    const first = await asKey.POST("/api/usage/record", { params: { header: once(key) }, body });
    const again = await asKey.POST("/api/usage/record", { params: { header: once(key) }, body });
    expect(first.response.status).toBe(200);
    expect(again.response.status).toBe(200);
    expect(again.response.headers.get("idempotent-replayed")).toBe("true");
    expect(again.data).toEqual(first.data);
    // The same key with another request is refused.
    const other = await asKey.POST("/api/usage/record", {
      params: { header: once(key) },
      body: { ...body, value: 2 },
    });
    expect(other.response.status).toBe(409);
    expect(isProblem(other.error)).toBe(true);
  });

  it("types the 429 envelope the proxy and quota/check send, with Retry-After", async () => {
    const before = await asKey.GET("/api/me/entitlements.read");
    const remaining = before.data?.remaining ?? 0;
    if (remaining > 0) {
      const spent = await asKey.POST("/api/usage/record", {
        body: {
          orgId: stack.orgId,
          metric: "api_call",
          value: remaining,
          occurredAt: new Date().toISOString(),
          request_id: globalThis.crypto.randomUUID(),
        },
      });
      expect(spent.data?.remaining).toBe(0);
    }
    const { data, error, response } = await asKey.POST("/api/quota/check", {
      body: { orgId: stack.orgId, metric: "api_call" },
    });
    expect(data).toBeUndefined();
    expect(response.status).toBe(429);
    expect(isQuotaExceeded(error)).toBe(true);
    const envelope = error as QuotaExceeded;
    expect(envelope.allow).toBe(false);
    expect(envelope.remaining).toBe(0);
    expect(envelope.used).toBeGreaterThanOrEqual(envelope.limit);
    expect(retryAfter(response)).toBeGreaterThan(0);

    // The proxy refuses the next metered call with the same envelope.
    const proxied = await fetch(`${stack.proxy}/v1/items`, { headers: { "x-api-key": stack.apiKey } });
    expect(proxied.status).toBe(429);
    const body: unknown = await proxied.json();
    expect(isQuotaExceeded(body)).toBe(true);
    expect((body as QuotaExceeded).periodKey).toBe(envelope.periodKey);
    expect(retryAfter(proxied)).toBeGreaterThan(0);
  });
});

describe("retryAfter", () => {
  it("reads seconds and HTTP dates", () => {
    const now = new Date("2026-12-07T12:00:00Z");
    const res = (value: string) => new Response(null, { headers: { "Retry-After": value } });
    expect(retryAfter(res("120"), now)).toBe(120);
    expect(retryAfter(res("Mon, 07 Dec 2026 12:01:00 GMT"), now)).toBe(60);
    expect(retryAfter(new Response(null), now)).toBeUndefined();
  });
});
