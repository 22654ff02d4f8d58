import { LitElement, css, html, nothing } from "lit";
import type { components } from "../../typescript/src/index";
import { client, describe } from "./config";
import { formatCount, formatDate, formatMoney, theme } from "./theme";

type Entitlements = components["schemas"]["Entitlements"];

type State =
  | { kind: "loading" }
  | { kind: "error"; message: string }
  | { kind: "ready"; entitlements: Entitlements };

/**
 * `<tollgate-usage metric="api_call">`: the org's plan, a meter of what it used against what its plan includes
 * (with the overage and the bound when the plan bills overage), and when the period ends. It shows only numbers the
 * entitlements endpoint returned, and reads them again every `refresh` seconds (default 5; 0: never), when the page
 * becomes visible again, and on a `tollgate:refresh` event on `window`.
 */
export class TollgateUsage extends LitElement {
  static override properties = {
    metric: { type: String },
    refresh: { type: Number },
    baseUrl: { type: String, attribute: "base-url" },
    state: { state: true },
  };

  declare metric: string;
  declare refresh: number;
  declare baseUrl: string | undefined;
  declare state: State;

  private timer: ReturnType<typeof setTimeout> | undefined;
  private loading = false;
  private readonly onVisible = () => {
    if (document.visibilityState === "visible") void this.load();
  };
  private readonly onRefresh = () => void this.load();

  constructor() {
    super();
    this.metric = "api_call";
    this.refresh = 5;
    this.baseUrl = undefined;
    this.state = { kind: "loading" };
  }

  override connectedCallback(): void {
    super.connectedCallback();
    document.addEventListener("visibilitychange", this.onVisible);
    window.addEventListener("tollgate:refresh", this.onRefresh);
    void this.load();
  }

  override disconnectedCallback(): void {
    super.disconnectedCallback();
    document.removeEventListener("visibilitychange", this.onVisible);
    window.removeEventListener("tollgate:refresh", this.onRefresh);
    clearTimeout(this.timer);
  }

  override updated(changed: Map<string, unknown>): void {
    if (changed.has("metric") && changed.get("metric") !== undefined) void this.load();
  }

  /** Reads the entitlements now (and schedules the next read). */
  async load(): Promise<void> {
    clearTimeout(this.timer);
    if (this.loading) return;
    this.loading = true;
    try {
      const { data, error } = await client(this.baseUrl).GET("/api/me/entitlements.read", {
        params: { query: { metric: this.metric as Entitlements["metric"] } },
      });
      this.state = data ? { kind: "ready", entitlements: data } : { kind: "error", message: describe(error) };
    } catch (e) {
      this.state = { kind: "error", message: describe(e) };
    } finally {
      this.loading = false;
      if (this.refresh > 0 && this.isConnected) {
        this.timer = setTimeout(() => void this.load(), this.refresh * 1000);
      }
    }
  }

  override render() {
    const s = this.state;
    if (s.kind === "loading") {
      return html`<div class="card"><p class="muted" role="status">Loading usage…</p></div>`;
    }
    if (s.kind === "error") {
      return html`<div class="card" role="alert">
        <h2>Usage</h2>
        <p class="error">Usage is unavailable right now (${s.message}).</p>
        <button @click=${() => this.load()}>Try again</button>
      </div>`;
    }
    const e = s.entitlements;
    const bound = e.bound ?? null;
    const max = Math.max(bound ?? e.included, e.included, e.used);
    const percent = max > 0 ? Math.min(100, (e.used / max) * 100) : 0;
    const includedPercent = max > 0 ? Math.min(100, (e.included / max) * 100) : 100;
    const over = e.overageUsed > 0;
    const label = e.metric.replace(/_/g, " ");
    return html`<div class="card" part="card">
      <div class="head">
        <h2>${e.planCode} plan</h2>
        <span class="muted">Resets ${formatDate(e.periodEnd)}</span>
      </div>
      <div
        class="meter"
        part="meter"
        role="meter"
        aria-label="${label} used this period"
        aria-valuemin="0"
        aria-valuemax=${max}
        aria-valuenow=${e.used}
        aria-valuetext="${formatCount(e.used)} of ${formatCount(e.included)} included ${label}s used"
      >
        <div class="fill ${over ? "over" : ""}" style="width: ${percent}%"></div>
        ${bound !== null && bound > e.included
          ? html`<div class="mark" style="left: ${includedPercent}%" title="included"></div>`
          : nothing}
      </div>
      ${e.included === 0 && e.used === 0
        ? html`<p class="muted">This plan includes no ${label}s.</p>`
        : html`<p>
            <strong data-used>${formatCount(e.used)}</strong> of
            <span data-included>${formatCount(e.included)}</span> included ${label}s used
            ${e.used === 0 ? html`<span class="muted">— none yet this period</span>` : nothing}
          </p>`}
      ${over
        ? html`<p class="overage">
            ${formatCount(e.overageUsed)} past the plan${e.overageCost
              ? html`, ${formatMoney(e.overageCost.amount, e.overageCost.currency)} so far`
              : nothing}${bound !== null
              ? html`; stops at ${formatCount(bound)} (${e.boundBy === "budget" ? "your spend cap" : "the plan's limit"})`
              : nothing}
          </p>`
        : nothing}
    </div>`;
  }

  static override styles = [
    theme,
    css`
      .head {
        display: flex;
        justify-content: space-between;
        align-items: baseline;
        gap: 1rem;
        margin-bottom: 0.75rem;
      }
      h2 {
        text-transform: capitalize;
        margin: 0;
      }
      .meter {
        position: relative;
        height: 0.5rem;
        border-radius: 999px;
        background: var(--tollgate-track, #f4f4f5);
        overflow: hidden;
        margin-bottom: 0.5rem;
      }
      .fill {
        height: 100%;
        background: var(--tollgate-accent, #18181b);
        border-radius: 999px;
        transition: width 0.3s ease;
      }
      .fill.over {
        background: var(--tollgate-warning, #d97706);
      }
      .mark {
        position: absolute;
        top: 0;
        bottom: 0;
        width: 2px;
        background: var(--tollgate-background, #ffffff);
      }
      p {
        margin: 0.25rem 0 0;
      }
      .overage {
        color: var(--tollgate-warning, #b45309);
      }
    `,
  ];
}
