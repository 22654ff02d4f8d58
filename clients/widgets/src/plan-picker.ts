import { LitElement, css, html, nothing } from "lit";
// `pure`: Stripe.js is loaded only when a payment needs it, not on every page that shows a widget.
import { loadStripe } from "@stripe/stripe-js/pure";
import { idempotencyKey, once, type IdempotencyKey, type components } from "../../typescript/src/index";
import { client, describe, settings } from "./config";
import { formatDate, formatMoney, theme } from "./theme";

type Preview = components["schemas"]["PreviewResponse"];
type PlanCode = components["schemas"]["PlanChangeRequest"]["newPlanCode"];

type Step =
  | { kind: "choosing" }
  | { kind: "previewing"; plan: PlanCode }
  | { kind: "previewed"; plan: PlanCode; preview: Preview; key: IdempotencyKey }
  | { kind: "confirming"; plan: PlanCode; preview: Preview; key: IdempotencyKey }
  | { kind: "authenticating"; plan: PlanCode }
  | { kind: "done"; message: string }
  | { kind: "failed"; message: string };

/**
 * `<tollgate-plan-picker plans="starter,growth,pro">`: the org's plan and the others it may move to. Choosing one
 * shows Stripe's exact preview (5.1) before anything changes: an upgrade's prorated charge now and the next
 * renewal, or a downgrade's first renewal and its date. Confirming upgrades now (5.2) or schedules the downgrade for
 * the period's end (5.3). An upgrade whose payment needs the customer (3-D Secure) is completed with Stripe.js
 * (`stripe-key`, or `window.TollgateWidgets.stripePublishableKey`); the plan changes once Stripe has the payment.
 * Emits `tollgate:plan-changed` and `tollgate:refresh` (so a `<tollgate-usage>` on the page reads the new limits).
 */
export class TollgatePlanPicker extends LitElement {
  static override properties = {
    plans: { type: String },
    baseUrl: { type: String, attribute: "base-url" },
    stripeKey: { type: String, attribute: "stripe-key" },
    current: { state: true },
    pending: { state: true },
    step: { state: true },
  };

  declare plans: string;
  declare baseUrl: string | undefined;
  declare stripeKey: string | undefined;
  declare current: string | undefined;
  declare pending: string | null | undefined;
  declare step: Step;

  constructor() {
    super();
    this.plans = "";
    this.baseUrl = undefined;
    this.stripeKey = undefined;
    this.current = undefined;
    this.pending = undefined;
    this.step = { kind: "choosing" };
  }

  override connectedCallback(): void {
    super.connectedCallback();
    void this.refresh();
  }

  private get codes(): PlanCode[] {
    return this.plans
      .split(",")
      .map((p) => p.trim())
      .filter(Boolean) as PlanCode[];
  }

  private async refresh(): Promise<void> {
    try {
      const { data, error } = await client(this.baseUrl).GET("/api/me/entitlements.read");
      if (!data) {
        this.step = { kind: "failed", message: describe(error) };
        return;
      }
      this.current = data.planCode;
      this.pending = data.pendingPlanCode ?? null;
    } catch (e) {
      this.step = { kind: "failed", message: describe(e) };
    }
  }

  private async choose(plan: PlanCode): Promise<void> {
    this.step = { kind: "previewing", plan };
    try {
      const { data, error } = await client(this.baseUrl).POST("/api/plans/preview", { body: { newPlanCode: plan } });
      this.step = data
        ? { kind: "previewed", plan, preview: data, key: idempotencyKey() }
        : { kind: "failed", message: describe(error) };
    } catch (e) {
      this.step = { kind: "failed", message: describe(e) };
    }
  }

  private async confirm(): Promise<void> {
    const s = this.step;
    if (s.kind !== "previewed") return;
    this.step = { ...s, kind: "confirming" };
    const api = client(this.baseUrl);
    try {
      if (s.preview.proration) {
        // One key per confirmation: a retry of it (a double click, a lost answer) upgrades once.
        const r = await api.POST("/api/plans/upgrade.now", {
          params: { header: once(s.key) },
          body: { newPlanCode: s.plan },
        });
        if (r.response.status === 202 && r.data && "clientSecret" in r.data) {
          await this.authenticate(s.plan, r.data.clientSecret);
          return;
        }
        if (!r.data) {
          this.step = { kind: "failed", message: describe(r.error) };
          return;
        }
        this.finish(`You are on the ${s.plan} plan now.`);
      } else {
        const r = await api.POST("/api/plans/downgrade.schedule", {
          params: { header: once(s.key) },
          body: { newPlanCode: s.plan },
        });
        if (!r.data) {
          this.step = { kind: "failed", message: describe(r.error) };
          return;
        }
        this.finish(`The ${r.data.pendingPlanCode} plan starts on ${formatDate(r.data.effectiveAt)}.`);
      }
    } catch (e) {
      this.step = { kind: "failed", message: describe(e) };
    }
  }

  /** 3-D Secure: Stripe.js confirms the invoice's payment with the customer; Stripe then applies the upgrade. */
  private async authenticate(plan: PlanCode, clientSecret: string): Promise<void> {
    this.step = { kind: "authenticating", plan };
    const key = this.stripeKey || settings().stripePublishableKey;
    if (!key) {
      this.step = { kind: "failed", message: "the payment needs confirming, and no Stripe publishable key is set" };
      return;
    }
    const stripe = await loadStripe(key);
    if (!stripe) {
      this.step = { kind: "failed", message: "Stripe.js could not be loaded" };
      return;
    }
    const result = await stripe.confirmCardPayment(clientSecret);
    if (result.error) {
      this.step = { kind: "failed", message: result.error.message ?? "the payment was not confirmed" };
      return;
    }
    // Stripe applies the upgrade once the invoice is paid; its webhooks bring Tollgate in step within seconds.
    for (let i = 0; i < 60; i++) {
      await this.refresh();
      if (this.current === plan) {
        this.finish(`Payment confirmed: you are on the ${plan} plan now.`);
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
    this.finish(`Payment confirmed: the ${plan} plan applies in a moment.`);
  }

  private finish(message: string): void {
    this.step = { kind: "done", message };
    void this.refresh();
    this.dispatchEvent(new CustomEvent("tollgate:plan-changed", { bubbles: true, composed: true }));
    window.dispatchEvent(new Event("tollgate:refresh"));
  }

  private renderPreview(s: Extract<Step, { kind: "previewed" | "confirming" }>) {
    const p = s.preview;
    const busy = s.kind === "confirming";
    return html`<div class="preview" data-plan=${s.plan} data-amount=${p.amount} data-currency=${p.currency}>
      ${p.proration
        ? html`<p><strong>Due now: <span data-due>${formatMoney(p.amount, p.currency)}</span></strong></p>
            <ul>
              ${p.items.map((i) => html`<li><span>${i.description}</span><span>${formatMoney(i.amount, p.currency)}</span></li>`)}
            </ul>
            <p class="muted">Then ${formatMoney(p.nextInvoice.amount, p.nextInvoice.currency)} on
              ${formatDate(p.nextInvoice.at)}.</p>`
        : html`<p><strong>${formatMoney(p.amount, p.currency)}</strong> from ${formatDate(p.nextInvoice.at)}, when
              your current period ends. Nothing is charged now.</p>`}
      <div class="actions">
        <button class="primary" ?disabled=${busy} @click=${() => this.confirm()}>
          ${busy ? "Working…" : p.proration ? `Upgrade to ${s.plan} now` : `Switch to ${s.plan} at renewal`}
        </button>
        <button ?disabled=${busy} @click=${() => (this.step = { kind: "choosing" })}>Cancel</button>
      </div>
    </div>`;
  }

  override render() {
    const s = this.step;
    return html`<div class="card">
      <h2>Plan</h2>
      ${this.current
        ? html`<p class="muted">You are on <strong data-current>${this.current}</strong>${this.pending
            ? html`; <span data-pending>${this.pending}</span> from your next renewal`
            : nothing}.</p>`
        : html`<p class="muted" role="status">Loading…</p>`}
      <div class="plans" role="group" aria-label="Plans">
        ${this.codes.map(
          (code) => html`<button
            data-plan=${code}
            aria-pressed=${s.kind !== "choosing" && "plan" in s && s.plan === code}
            ?disabled=${code === this.current || s.kind === "confirming" || s.kind === "previewing"}
            @click=${() => this.choose(code)}
          >
            ${code}${code === this.current ? " (current)" : ""}
          </button>`,
        )}
      </div>
      ${s.kind === "previewing" ? html`<p class="muted" role="status">Asking Stripe for the exact price…</p>` : nothing}
      ${s.kind === "previewed" || s.kind === "confirming" ? this.renderPreview(s) : nothing}
      ${s.kind === "authenticating" ? html`<p role="status">Confirm the payment with your bank…</p>` : nothing}
      ${s.kind === "done" ? html`<p class="done" role="status">${s.message}</p>` : nothing}
      ${s.kind === "failed" ? html`<p class="error" role="alert">${s.message}</p>` : nothing}
    </div>`;
  }

  static override styles = [
    theme,
    css`
      .plans {
        display: flex;
        gap: 0.5rem;
        flex-wrap: wrap;
        margin: 0.75rem 0;
      }
      .plans button {
        text-transform: capitalize;
      }
      .plans button[aria-pressed="true"] {
        border-color: var(--tollgate-accent, #18181b);
        box-shadow: 0 0 0 1px var(--tollgate-accent, #18181b);
      }
      .preview {
        border-top: 1px solid var(--tollgate-border, #e4e4e7);
        padding-top: 0.75rem;
      }
      ul {
        list-style: none;
        padding: 0;
        margin: 0.25rem 0;
      }
      li {
        display: flex;
        justify-content: space-between;
        gap: 1rem;
        font-size: 13px;
        padding: 0.15rem 0;
      }
      .actions {
        display: flex;
        gap: 0.5rem;
        margin-top: 0.75rem;
      }
      .done {
        color: #166534;
      }
      p {
        margin: 0.25rem 0;
      }
    `,
  ];
}
