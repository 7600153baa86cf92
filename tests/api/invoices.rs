//! One-off invoices and the invoice read routes.

use serde_json::json;

use crate::both;
use crate::helpers::*;

both!(
    one_off_invoices_are_finalised_at_once_with_exact_totals,
    |backend| async move {
        let w = World::start(backend).await;
        let d = &w.daemon;
        let customer = d.customer("KWD").await;
        let (status, inv) = d
        .post(
            "/v1/invoices",
            json!({"customer_id": customer, "items": [
                {"description": "Consulting", "quantity": "2.5", "unit_amount": "12.345", "tax_rate": "0.05"}
            ], "due_at": "2027-01-31T00:00:00Z"}),
        )
        .await;
        assert_eq!(status, 201, "{inv}");
        assert_eq!(inv["status"], "open");
        assert_eq!(inv["kind"], "standard");
        assert_eq!(inv["currency"], "KWD");
        assert_eq!(inv["number"], "INV-2027-000001");
        // 2.5 × 12.345 = 30.8625 → 30.863 (half away from zero); 5% tax = 1.54315 → 1.543.
        assert_eq!(inv["subtotal"], "30.863");
        assert_eq!(inv["tax"], "1.543");
        assert_eq!(inv["total"], "32.406");
        assert_eq!(inv["amount_due"], "32.406");
        assert_eq!(inv["due_at"], "2027-01-31T00:00:00Z");
        assert_eq!(inv["lines"].as_array().unwrap().len(), 1);
        let (status, retainer) = d
        .post(
            "/v1/invoices",
            json!({"customer_id": customer, "kind": "retainer", "items": [{"description": "Retainer", "unit_amount": "100.000"}]}),
        )
        .await;
        assert_eq!(status, 201, "{retainer}");
        assert_eq!(retainer["kind"], "retainer");
        assert_eq!(retainer["number"], "INV-2027-000002");

        let (_, got) = d
            .get(&format!("/v1/invoices/{}", inv["id"].as_str().unwrap()))
            .await;
        assert_eq!(got["total"], "32.406");
        let (_, customer_view) = d.get(&format!("/v1/customers/{customer}")).await;
        assert_eq!(customer_view["outstanding"], "132.406");
        let (status, open) = d
            .get(&format!("/v1/invoices?customer_id={customer}&status=open"))
            .await;
        assert_eq!(status, 200);
        assert_eq!(open["data"].as_array().unwrap().len(), 2);

        for (body, field) in [
            (
                json!({"customer_id": customer, "items": [{"description": "x", "unit_amount": 5}]}),
                "items[0].unit_amount",
            ),
            (
                json!({"customer_id": customer, "items": [{"description": "x", "unit_amount": "5.0001"}]}),
                "items[0].unit_amount",
            ),
            (
                json!({"customer_id": "cus_missing", "items": [{"description": "x", "unit_amount": "5.000"}]}),
                "customer_id",
            ),
            (
                json!({"customer_id": customer, "kind": "gift", "items": [{"description": "x", "unit_amount": "5.000"}]}),
                "kind",
            ),
            (
                json!({"customer_id": customer, "currency": "USD", "items": [{"description": "x", "unit_amount": "5.000"}]}),
                "currency",
            ),
            (json!({"customer_id": customer, "items": []}), "items"),
        ] {
            let (status, answer) = d.post("/v1/invoices", body).await;
            assert_eq!(status, 422, "{field}: {answer}");
            assert!(
                answer["error"]["message"].as_str().unwrap().contains(field),
                "{field}: {answer}"
            );
        }
        let (_, all) = d.get("/v1/invoices").await;
        assert_eq!(
            all["data"].as_array().unwrap().len(),
            2,
            "refused requests stored nothing"
        );
        let (status, _) = d.get("/v1/invoices?status=weird").await;
        assert_eq!(status, 422);
    }
);
