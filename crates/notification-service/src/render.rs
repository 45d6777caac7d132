//! The line printed for a payment, and the latency it shows. Pure: the clock is passed in.
//!
//! Text lines are [`shop_domain::format_line`]'s, so a seed-era payment prints exactly as
//! the seed printed it. JSON lines are the payment's own wire fields, in wire order, plus
//! `latency_ms` (when known) and `line` (the text line), one object per line for `jq` and
//! log collectors.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use shop_domain::Payment;
use shop_domain::time::elapsed_since;
use shop_runtime::LogFormat;

/// The end-to-end latency of `payment` at `now`: since the order was created when the
/// payment carries that, else since the payment was processed; `None` for seed-era
/// payments, unreadable stamps, and stamps in the future (clock skew).
pub fn latency(payment: &Payment, now: SystemTime) -> Option<Duration> {
    let since = |stamp: &Option<String>| stamp.as_deref().and_then(|s| elapsed_since(s, now));
    since(&payment.order_created_at).or_else(|| since(&payment.processed_at))
}

/// The line for `payment` in `format`, without the trailing newline.
pub fn render(payment: &Payment, latency: Option<Duration>, format: LogFormat) -> String {
    let line = shop_domain::format_line(payment, latency);
    match format {
        LogFormat::Text => line,
        LogFormat::Json => json_line(payment, latency, &line),
    }
}

/// The fields added to the payment's own in JSON lines; unknown payment fields with these
/// names are dropped so no key appears twice.
const ADDED_FIELDS: [&str; 2] = ["latency_ms", "line"];

fn json_line(payment: &Payment, latency: Option<Duration>, line: &str) -> String {
    let mut payment = payment.clone();
    for field in ADDED_FIELDS {
        payment.extra.remove(field);
    }
    // `to_json` writes an object that always has `order_id`, so appending `,"key":value`
    // before its closing brace keeps valid JSON and the wire order of the fields.
    let json = String::from_utf8_lossy(&payment.to_json()).into_owned();
    let mut out = json.strip_suffix('}').unwrap_or("{").to_owned();
    // Writing to a String cannot fail.
    if let Some(latency) = latency {
        let _ = write!(out, ",\"latency_ms\":{}", Value::from(millis(latency)));
    }
    let _ = write!(out, ",\"line\":{}}}", Value::from(line));
    out
}

/// Milliseconds with microsecond precision, without float noise (`12.345`, not
/// `12.345000000000001`).
fn millis(latency: Duration) -> f64 {
    (latency.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::UNIX_EPOCH;

    use shop_domain::{Amount, Decision, FailureReason, Order};

    use super::*;

    fn at(millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(millis)
    }

    /// Created at …05.678Z, processed at …05.690Z.
    fn payment(decision: Decision) -> Payment {
        let order = Order::new(
            1002,
            37,
            Amount::from_cents(19_999),
            "2025-01-02T03:04:05.678Z".into(),
        );
        Payment::for_order(&order, &decision, "2025-01-02T03:04:05.690Z".into())
    }

    #[test]
    fn latency_counts_from_order_creation_then_from_processing() {
        let now = at(1_735_787_045_700);
        let mut payment = payment(Decision::Success);
        assert_eq!(latency(&payment, now), Some(Duration::from_millis(22)));
        payment.order_created_at = None;
        assert_eq!(latency(&payment, now), Some(Duration::from_millis(10)));
        payment.order_created_at = Some("garbage".into());
        assert_eq!(latency(&payment, now), Some(Duration::from_millis(10)));
        payment.processed_at = None;
        assert_eq!(latency(&payment, now), None);
    }

    #[test]
    fn text_lines_are_the_domains_lines() {
        let failed = payment(Decision::Failure(FailureReason::CardDeclined));
        assert_eq!(
            render(&failed, Some(Duration::from_millis(12)), LogFormat::Text),
            "❌ Payment Failed for Order 1002 (card_declined) · user 37 · $199.99 · 12 ms"
        );
        let seed =
            Payment::parse(br#"{"order_id": 1001, "status": "payment_successful"}"#).unwrap();
        assert_eq!(
            render(&seed, None, LogFormat::Text),
            "✅ Payment Successful for Order 1001"
        );
    }

    #[test]
    fn json_lines_carry_the_payment_latency_and_text_line_in_wire_order() {
        let failed = payment(Decision::Failure(FailureReason::CardDeclined));
        let json = render(
            &failed,
            Some(Duration::from_micros(12_345)),
            LogFormat::Json,
        );
        assert!(!json.contains('\n'));
        assert!(
            json.starts_with(r#"{"order_id":1002,"user_id":37,"amount":199.99,"#),
            "{json}"
        );
        let value: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["status"], "payment_failed");
        assert_eq!(value["reason"], "card_declined");
        assert_eq!(value["latency_ms"], 12.345);
        assert_eq!(
            value["line"],
            "❌ Payment Failed for Order 1002 (card_declined) · user 37 · $199.99 · 12 ms"
        );
    }

    #[test]
    fn json_lines_of_seed_payments_leave_latency_out_and_never_repeat_a_key() {
        let seed = Payment::parse(
            br#"{"order_id": 1001, "status": "payment_successful", "line": "spoof", "note": "kept"}"#,
        )
        .unwrap();
        let json = render(&seed, None, LogFormat::Json);
        assert_eq!(
            json,
            r#"{"order_id":1001,"status":"payment_successful","note":"kept","line":"✅ Payment Successful for Order 1001"}"#
        );
    }
}
