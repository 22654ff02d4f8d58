import { LitElement, css, html, nothing } from "lit";
import type { components } from "../../typescript/src/index";
import { client, describe } from "./config";
import { formatDate, formatMoney, theme } from "./theme";

type Invoice = components["schemas"]["InvoiceItem"];

/**
 * `<tollgate-invoices limit="10">`: the org's invoices, newest first, each linking to Stripe's hosted page, with
 * "Load more" while there are more, and a button to Stripe's customer portal (`portal-target`: `_self`, default,
 * or `_blank`).
 */
export class TollgateInvoices extends LitElement {
  static override properties = {
    limit: { type: Number },
    baseUrl: { type: String, attribute: "base-url" },
    portalTarget: { type: String, attribute: "portal-target" },
    invoices: { state: true },
    more: { state: true },
    error: { state: true },
    loading: { state: true },
    opening: { state: true },
  };

  declare limit: number;
  declare baseUrl: string | undefined;
  declare portalTarget: string;
  declare invoices: Invoice[] | undefined;
  declare more: boolean;
  declare error: string | undefined;
  declare loading: boolean;
  declare opening: boolean;

  constructor() {
    super();
    this.limit = 10;
    this.baseUrl = undefined;
    this.portalTarget = "_self";
    this.invoices = undefined;
    this.more = false;
    this.error = undefined;
    this.loading = false;
    this.opening = false;
  }

  override connectedCallback(): void {
    super.connectedCallback();
    void this.load(false);
  }

  /** Reads the first page again, or (`next`) the page after what is shown. */
  async load(next: boolean): Promise<void> {
    this.loading = true;
    this.error = undefined;
    try {
      const cursor = next ? this.invoices?.at(-1)?.id : undefined;
      const { data, error } = await client(this.baseUrl).GET("/api/invoices.list", {
        params: { query: { limit: this.limit, ...(cursor ? { cursor } : {}) } },
      });
      if (!data) {
        this.error = describe(error);
        return;
      }
      this.invoices = next ? [...(this.invoices ?? []), ...data] : data;
      this.more = data.length === this.limit;
    } catch (e) {
      this.error = describe(e);
    } finally {
      this.loading = false;
    }
  }

  private async portal(): Promise<void> {
    this.opening = true;
    try {
      const { data, error } = await client(this.baseUrl).POST("/api/payments/portal.create", { body: {} });
      if (!data) {
        this.error = describe(error);
        return;
      }
      if (this.portalTarget === "_blank") window.open(data.url, "_blank", "noopener");
      else window.location.assign(data.url);
    } catch (e) {
      this.error = describe(e);
    } finally {
      this.opening = false;
    }
  }

  override render() {
    const rows = this.invoices;
    return html`<div class="card">
      <div class="head">
        <h2>Invoices</h2>
        <button class="primary" ?disabled=${this.opening} @click=${() => this.portal()}>
          ${this.opening ? "Opening…" : "Manage billing"}
        </button>
      </div>
      ${this.error ? html`<p class="error" role="alert">Invoices are unavailable right now (${this.error}).</p>` : nothing}
      ${rows === undefined
        ? this.error
          ? nothing
          : html`<p class="muted" role="status">Loading invoices…</p>`
        : rows.length === 0
          ? html`<p class="muted">No invoices yet.</p>`
          : html`<table>
              <thead>
                <tr><th scope="col">Date</th><th scope="col">Amount</th><th scope="col">Status</th><th scope="col"><span class="sr">Link</span></th></tr>
              </thead>
              <tbody>
                ${rows.map(
                  (i) => html`<tr data-invoice-id=${i.id}>
                    <td>${formatDate(i.created)}</td>
                    <td class="amount">${formatMoney(i.total, i.currency)}</td>
                    <td><span class="status ${i.status}">${i.status}</span></td>
                    <td class="link">${i.url
                      ? html`<a href=${i.url} target="_blank" rel="noopener noreferrer">View</a>`
                      : nothing}</td>
                  </tr>`,
                )}
              </tbody>
            </table>`}
      ${this.more
        ? html`<button ?disabled=${this.loading} @click=${() => this.load(true)}>
            ${this.loading ? "Loading…" : "Load more"}
          </button>`
        : nothing}
    </div>`;
  }

  static override styles = [
    theme,
    css`
      .head {
        display: flex;
        justify-content: space-between;
        align-items: center;
        margin-bottom: 0.75rem;
      }
      h2 {
        margin: 0;
      }
      table {
        width: 100%;
        border-collapse: collapse;
        margin-bottom: 0.5rem;
      }
      th {
        text-align: left;
        font-weight: 500;
        color: var(--tollgate-muted, #71717a);
        border-bottom: 1px solid var(--tollgate-border, #e4e4e7);
        padding: 0.4rem 0.25rem;
      }
      td {
        padding: 0.5rem 0.25rem;
        border-bottom: 1px solid var(--tollgate-border, #e4e4e7);
      }
      .amount {
        font-variant-numeric: tabular-nums;
      }
      .link {
        text-align: right;
      }
      a {
        color: inherit;
        font-weight: 500;
      }
      .status {
        display: inline-block;
        font-size: 12px;
        padding: 0 0.5rem;
        border-radius: 999px;
        border: 1px solid var(--tollgate-border, #e4e4e7);
        text-transform: capitalize;
      }
      .status.paid {
        background: #f0fdf4;
        border-color: #bbf7d0;
        color: #166534;
      }
      .status.open {
        background: #fffbeb;
        border-color: #fde68a;
        color: #92400e;
      }
      .sr {
        position: absolute;
        width: 1px;
        height: 1px;
        overflow: hidden;
        clip: rect(0 0 0 0);
      }
    `,
  ];
}
