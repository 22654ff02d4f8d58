/**
 * Tollgate's embeddable widgets, one script: `<script src="https://<control plane>/widgets/v1/tollgate.js">`.
 * Web components (lit), usable from any framework; see each element's docs.
 */
import { TollgateUsage } from "./usage";

const elements: Array<[string, CustomElementConstructor]> = [["tollgate-usage", TollgateUsage]];
for (const [name, element] of elements) {
  if (!customElements.get(name)) customElements.define(name, element);
}
