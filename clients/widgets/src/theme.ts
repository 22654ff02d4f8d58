import { css } from "lit";

/**
 * The look every widget shares, shadcn/ui's defaults (zinc, 0.5rem radius, system font). Each value is a CSS custom
 * property a page may set on the element or any ancestor: `--tollgate-font`, `--tollgate-foreground`,
 * `--tollgate-muted`, `--tollgate-background`, `--tollgate-border`, `--tollgate-accent`,
 * `--tollgate-accent-foreground`, `--tollgate-danger`, `--tollgate-radius`.
 */
export const theme = css`
  :host {
    display: block;
    font-family: var(--tollgate-font, ui-sans-serif, system-ui, -apple-system, "Segoe UI", Roboto, sans-serif);
    color: var(--tollgate-foreground, #09090b);
    font-size: 14px;
    line-height: 1.5;
  }
  .card {
    background: var(--tollgate-background, #ffffff);
    border: 1px solid var(--tollgate-border, #e4e4e7);
    border-radius: var(--tollgate-radius, 0.5rem);
    padding: 1rem 1.25rem;
    box-shadow: 0 1px 2px rgb(0 0 0 / 0.05);
  }
  h2 {
    font-size: 1rem;
    font-weight: 600;
    margin: 0 0 0.25rem;
  }
  .muted {
    color: var(--tollgate-muted, #71717a);
  }
  .error {
    color: var(--tollgate-danger, #dc2626);
  }
  button {
    font: inherit;
    font-weight: 500;
    border-radius: calc(var(--tollgate-radius, 0.5rem) - 2px);
    border: 1px solid var(--tollgate-border, #e4e4e7);
    background: var(--tollgate-background, #ffffff);
    color: inherit;
    padding: 0.4rem 0.9rem;
    cursor: pointer;
  }
  button.primary {
    background: var(--tollgate-accent, #18181b);
    color: var(--tollgate-accent-foreground, #fafafa);
    border-color: transparent;
  }
  button:disabled {
    opacity: 0.5;
    cursor: default;
  }
  button:focus-visible {
    outline: 2px solid var(--tollgate-accent, #18181b);
    outline-offset: 2px;
  }
`;

export function formatMoney(amount: number, currency: string): string {
  const digits = new Intl.NumberFormat("en", { style: "currency", currency }).resolvedOptions()
    .maximumFractionDigits ?? 2;
  return new Intl.NumberFormat(undefined, { style: "currency", currency: currency.toUpperCase() }).format(
    amount / 10 ** digits,
  );
}

export function formatDate(iso: string): string {
  return new Intl.DateTimeFormat(undefined, { dateStyle: "medium" }).format(new Date(iso));
}

export function formatCount(n: number): string {
  return new Intl.NumberFormat().format(n);
}
