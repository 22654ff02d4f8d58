/**
 * Tollgate's embeddable widgets, one script: `<script src="https://<control plane>/widgets/v1/tollgate.js">`.
 * Web components (lit), usable from any framework: `<tollgate-usage>`, `<tollgate-plan-picker>`,
 * `<tollgate-invoices>` (see each element's docs). Themed with CSS custom properties (`theme.ts`).
 */
import { TollgateInvoices } from "./invoices";
import { TollgatePlanPicker } from "./plan-picker";
import { TollgateUsage } from "./usage";

const elements: Array<[string, CustomElementConstructor]> = [
  ["tollgate-usage", TollgateUsage],
  ["tollgate-plan-picker", TollgatePlanPicker],
  ["tollgate-invoices", TollgateInvoices],
];
for (const [name, element] of elements) {
  if (!customElements.get(name)) customElements.define(name, element);
}
