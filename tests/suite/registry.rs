//! Handler registration: exactly the handler crates this binary names are
//! registered, and a crate that is only a dependency is not.

use serde_json::json;
use switchboard::HandlerRegistry;
use switchboard_tests::{TestNode, frame};

// Naming the crate links it, and with it its registration. Its sibling
// `switchboard-fixture-unlinked` is a dependency too, but is named nowhere.
use switchboard_fixture_linked as _;

/// The registry of this test binary holds the four shipped business types
/// and the linked fixture, each from its own crate, and nothing else.
#[test]
fn registry_holds_exactly_the_linked_handlers() {
    let registry = HandlerRegistry::from_linked().expect("handlers register");
    assert_eq!(
        registry.business_types(),
        [
            "fixture_linked",
            "notice",
            "page_update",
            "payment_callback",
            "qr_refresh"
        ]
    );
    let crates: Vec<(&str, &str)> = registry
        .descriptors()
        .map(|d| (d.business_type, d.crate_name))
        .collect();
    assert_eq!(
        crates,
        [
            ("fixture_linked", "switchboard-fixture-linked"),
            ("notice", "switchboard-notice"),
            ("page_update", "switchboard-page-update"),
            ("payment_callback", "switchboard-payment-callback"),
            ("qr_refresh", "switchboard-qr-refresh"),
        ]
    );
    assert!(registry.descriptors().all(|d| !d.description.is_empty()));
}

/// A handler crate listed as a dependency but never named in code is not
/// linked: its business type is absent.
#[test]
fn handler_crate_that_is_never_named_is_not_registered() {
    let registry = HandlerRegistry::from_linked().expect("handlers register");
    assert!(registry.get("fixture_unlinked").is_err());
    assert!(!registry.business_types().contains(&"fixture_unlinked"));
}

/// Over the wire, the linked fixture's business type is known (its default
/// refuses client requests with `FORBIDDEN`) and the unlinked one is not.
#[tokio::test]
async fn only_linked_business_types_are_served() {
    let node = TestNode::start().await;
    let mut client = node.connect("alice", "H5").await;
    let linked = frame(
        "CLIENT_TO_SERVER",
        json!({"businessType": "fixture_linked"}),
    );
    client.request_refused(linked, "FORBIDDEN").await;
    let unlinked = frame(
        "CLIENT_TO_SERVER",
        json!({"businessType": "fixture_unlinked"}),
    );
    client
        .request_refused(unlinked, "UNKNOWN_BUSINESS_TYPE")
        .await;
    node.stop().await;
}
