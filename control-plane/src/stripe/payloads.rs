//! Real Stripe payloads: the product's readers checked against Stripe's own published example objects
//! (`control-plane/tests/fixtures/stripe/fixtures3.json`, from github.com/stripe/openapi; see the README there).
//!
//! The emulator's answers are shaped after async-stripe's structs, so they cannot show a struct that refuses what
//! a real account sends. These can: each resource the product reads is decoded here with exactly the type the
//! product decodes it with (the `Output` of the request it sends), through the client's own decoder.

#[cfg(test)]
mod tests {
    use crate::stripe::decode;
    use serde_json::{Value, json};
    use stripe_client_core::StripeRequest;

    const FIXTURES: &str = include_str!("../../tests/fixtures/stripe/fixtures3.json");

    fn resource(name: &str) -> Value {
        let all: Value = serde_json::from_str(FIXTURES).expect("fixtures3.json is JSON");
        let object = all["resources"][name].clone();
        assert!(object.is_object(), "fixtures3.json has no resources.{name}");
        object
    }

    fn list(object: &Value, url: &str) -> Value {
        json!({"object": "list", "data": [object], "has_more": false, "url": url})
    }

    /// Decodes `value` as `T` the way the client decodes an answer.
    fn reads<T: miniserde::Deserialize>(what: &str, value: &Value) -> Result<T, String> {
        decode::<T>(value.to_string().as_bytes()).map_err(|e| format!("{what}: {e}"))
    }

    type Out<R> = <R as StripeRequest>::Output;

    #[test]
    fn every_published_stripe_example_object_the_product_reads_decodes() {
        use stripe_billing::billing_portal_session::CreateBillingPortalSession;
        use stripe_billing::invoice::{CreatePreviewInvoice, ListInvoice, RetrieveInvoice};
        use stripe_billing::subscription::{
            CreateSubscription, ListSubscription, RetrieveSubscription, UpdateSubscription,
        };
        use stripe_billing::subscription_schedule::{
            CreateSubscriptionSchedule, ReleaseSubscriptionSchedule, RetrieveSubscriptionSchedule,
            UpdateSubscriptionSchedule,
        };
        use stripe_core::customer::{
            CreateCustomer, RetrieveCustomer, SearchCustomer, UpdateCustomer,
        };
        use stripe_core::setup_intent::CreateSetupIntent;
        use stripe_payment::payment_method::{AttachPaymentMethod, RetrievePaymentMethod};
        use stripe_product::price::{ListPrice, RetrievePrice};

        let customer = resource("customer");
        let subscription = resource("subscription");
        let schedule = resource("subscription_schedule");
        let invoice = resource("invoice");
        let price = resource("price");
        let payment_method = resource("payment_method");
        let search = json!({"object": "search_result", "data": [customer], "has_more": false,
                            "next_page": null, "url": "/v1/customers/search"});
        let mut failures: Vec<String> = Vec::new();
        let mut check = |result: Result<(), String>| {
            if let Err(e) = result {
                failures.push(e);
            }
        };
        // Customers: 1.2 (create, search), 2.2 (update), the worker (retrieve, also a deleted one).
        check(reads::<Out<CreateCustomer>>("customer", &customer).map(drop));
        check(reads::<Out<UpdateCustomer>>("customer (update)", &customer).map(drop));
        check(reads::<Out<SearchCustomer>>("customer search", &search).map(drop));
        check(reads::<Out<RetrieveCustomer>>("customer (retrieve)", &customer).map(drop));
        check(
            reads::<Out<RetrieveCustomer>>("deleted_customer", &resource("deleted_customer"))
                .map(drop),
        );
        // Subscriptions and their items: 1.3, 5.2, the mirror.
        for (what, value) in [
            ("subscription", subscription.clone()),
            (
                "subscription list",
                list(&subscription, "/v1/subscriptions"),
            ),
        ] {
            if what == "subscription" {
                check(reads::<Out<RetrieveSubscription>>(what, &value).map(drop));
                check(reads::<Out<CreateSubscription>>(what, &value).map(drop));
                check(reads::<Out<UpdateSubscription>>(what, &value).map(drop));
            } else {
                check(reads::<Out<ListSubscription>>(what, &value).map(drop));
            }
        }
        check(
            reads::<stripe_shared::SubscriptionItem>(
                "subscription_item",
                &resource("subscription_item"),
            )
            .map(drop),
        );
        // Schedules: 5.3 and the mirror's next phase.
        check(
            reads::<Out<RetrieveSubscriptionSchedule>>("subscription_schedule", &schedule)
                .map(drop),
        );
        check(
            reads::<Out<CreateSubscriptionSchedule>>("subscription_schedule", &schedule).map(drop),
        );
        check(
            reads::<Out<UpdateSubscriptionSchedule>>("subscription_schedule", &schedule).map(drop),
        );
        check(
            reads::<Out<ReleaseSubscriptionSchedule>>("subscription_schedule", &schedule).map(drop),
        );
        // Invoices and their lines: 5.1 (preview), 6.1 (list), the worker (retrieve).
        check(reads::<Out<RetrieveInvoice>>("invoice", &invoice).map(drop));
        check(reads::<Out<CreatePreviewInvoice>>("invoice (preview)", &invoice).map(drop));
        check(reads::<Out<ListInvoice>>("invoice list", &list(&invoice, "/v1/invoices")).map(drop));
        check(
            reads::<stripe_shared::InvoiceLineItem>("line_item", &resource("line_item")).map(drop),
        );
        // Prices: the plans' prices.
        check(reads::<Out<RetrievePrice>>("price", &price).map(drop));
        check(reads::<Out<ListPrice>>("price list", &list(&price, "/v1/prices")).map(drop));
        // Payment methods and setup intents: 2.1, 2.2.
        check(reads::<Out<RetrievePaymentMethod>>("payment_method", &payment_method).map(drop));
        check(reads::<Out<AttachPaymentMethod>>("payment_method", &payment_method).map(drop));
        check(reads::<Out<CreateSetupIntent>>("setup_intent", &resource("setup_intent")).map(drop));
        // The portal: 6.2.
        check(
            reads::<Out<CreateBillingPortalSession>>(
                "billing_portal.session",
                &resource("billing_portal.session"),
            )
            .map(drop),
        );
        // Events: 2.3 reads the envelope with its own narrow type.
        check(
            serde_json::from_value::<crate::services::billing::events::Envelope>(resource("event"))
                .map(drop)
                .map_err(|e| format!("event: {e}")),
        );
        assert!(
            failures.is_empty(),
            "Stripe's own example objects that the product cannot read:\n{}",
            failures.join("\n")
        );
    }
}
