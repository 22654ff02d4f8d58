/**
 * Where the widgets find the control plane and the signed-in user's token.
 *
 * In order: the element's `base-url` attribute, `window.TollgateWidgets.baseUrl`, else the origin the widget script
 * was loaded from (the control plane serves it at `/widgets/v1/tollgate.js`). The token: `window.TollgateWidgets.
 * getToken()`, else Clerk's (`window.Clerk.session.getToken()`), so that a page using Clerk needs no setup.
 */
import { createTollgateClient, type TollgateClient } from "../../typescript/src/index";

export interface WidgetSettings {
  /** The control plane's base URL. */
  baseUrl?: string;
  /** The signed-in user's Clerk session token. */
  getToken?: () => string | null | undefined | Promise<string | null | undefined>;
  /** Stripe's publishable key, for payments that need the customer (3-D Secure). */
  stripePublishableKey?: string;
}

declare global {
  interface Window {
    TollgateWidgets?: WidgetSettings;
    Clerk?: { session?: { getToken(): Promise<string | null> } | null };
  }
}

// Read while the script runs: `document.currentScript` is only set then.
const scriptOrigin = (() => {
  const src = (document.currentScript as HTMLScriptElement | null)?.src;
  try {
    return src ? new URL(src).origin : undefined;
  } catch {
    return undefined;
  }
})();

export function settings(): WidgetSettings {
  return window.TollgateWidgets ?? {};
}

export function baseUrl(attribute: string | undefined): string {
  const url = attribute || settings().baseUrl || scriptOrigin;
  if (!url) throw new Error("no control plane URL: set base-url or window.TollgateWidgets.baseUrl");
  return url;
}

async function token(): Promise<string | null | undefined> {
  const own = settings().getToken;
  if (own) return own();
  return window.Clerk?.session?.getToken();
}

const clients = new Map<string, TollgateClient>();

/** One client per control plane, sending the signed-in user's token with every call. */
export function client(attribute: string | undefined): TollgateClient {
  const url = baseUrl(attribute);
  let c = clients.get(url);
  if (!c) {
    c = createTollgateClient({ baseUrl: url, auth: { kind: "session", token } });
    clients.set(url, c);
  }
  return c;
}

/** A short message for an error body or a failed fetch, for the widgets' error state. */
export function describe(error: unknown): string {
  if (typeof error === "object" && error !== null && "title" in error) {
    const e = error as { title: string; detail?: string };
    return e.detail ? `${e.title}: ${e.detail}` : e.title;
  }
  if (error instanceof Error) return error.message;
  return "the control plane could not be reached";
}
