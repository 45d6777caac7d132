//! Orders and payments as they travel on Kafka, and the validation of incoming messages.
//!
//! The wire format is the seed demo's JSON, extended: every seed field keeps its name,
//! type and values, new fields are added, and fields this version does not know are kept
//! (`extra`) so a message passes through unchanged. [`Order::parse`] and
//! [`Payment::parse`] are the validated entry points for bytes from a topic; a message
//! they reject is never fatal to a service, it goes to the dead-letter topic with the
//! error's [`InvalidMessage::kind`] and text in its headers. The serde impls are plain
//! shape conversions without range checks, for tests and tooling.

use std::fmt;
use std::ops::RangeInclusive;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::decision::{Decision, FailureReason};
use crate::json::ObjectWriter;

/// The largest message value accepted. Orders and payments are a few hundred bytes; the
/// limit bounds the work and memory a single bad or hostile message can cause.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// User ids the seed generates (`random.randint(1, 100)`); orders outside are invalid.
pub const USER_IDS: RangeInclusive<u32> = 1..=100;

/// Money in whole cents, so amounts add, compare and print exactly.
///
/// On the wire it is a JSON number in dollars with at most two decimals (`199.99`), as
/// the seed's `round(random.uniform(10.0, 500.0), 2)` produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Amount(u32);

impl Amount {
    /// The smallest valid order amount, $10.00.
    pub const MIN_ORDER: Amount = Amount(1_000);
    /// The largest valid order amount, $500.00.
    pub const MAX_ORDER: Amount = Amount(50_000);

    /// The amount of `cents` cents.
    pub const fn from_cents(cents: u32) -> Amount {
        Amount(cents)
    }

    /// The amount in cents.
    pub const fn cents(self) -> u32 {
        self.0
    }

    /// The amount in dollars, the wire form. The division yields the double nearest to
    /// the exact decimal, which serde_json prints back as that decimal (`199.99`).
    pub fn dollars(self) -> f64 {
        f64::from(self.0) / 100.0
    }

    /// The amount of `dollars`, if it is non-negative, fits and has at most two decimals.
    pub fn from_dollars(dollars: f64) -> Option<Amount> {
        amount_from_dollars(dollars).ok()
    }

    /// Whether this is a valid order amount ($10.00 to $500.00).
    pub fn is_valid_order_amount(self) -> bool {
        (Amount::MIN_ORDER..=Amount::MAX_ORDER).contains(&self)
    }
}

/// Why a number is not an [`Amount`]; the two map to different error kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AmountProblem {
    OutOfRange,
    TooPrecise,
}

/// Tolerance, in cents, for binary floating point: 199.99 × 100 is 19998.999999999996.
const CENT_TOLERANCE: f64 = 1e-6;

fn amount_from_dollars(dollars: f64) -> Result<Amount, AmountProblem> {
    if !dollars.is_finite() || dollars < 0.0 {
        return Err(AmountProblem::OutOfRange);
    }
    let cents = dollars * 100.0;
    let rounded = cents.round();
    if (cents - rounded).abs() > CENT_TOLERANCE {
        return Err(AmountProblem::TooPrecise);
    }
    if rounded > f64::from(u32::MAX) {
        return Err(AmountProblem::OutOfRange);
    }
    // In range and integral by the checks above, so the cast is exact.
    Ok(Amount(rounded as u32))
}

impl fmt::Display for Amount {
    /// `$199.99`, as people read prices.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${}.{:02}", self.0 / 100, self.0 % 100)
    }
}

impl From<Amount> for Value {
    fn from(amount: Amount) -> Value {
        Value::from(amount.dollars())
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.dollars())
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Amount, D::Error> {
        let dollars = f64::deserialize(deserializer)?;
        amount_from_dollars(dollars).map_err(|_| {
            serde::de::Error::custom(format!(
                "{dollars} is not an amount: expected a non-negative number with at most two decimals"
            ))
        })
    }
}

/// The status of an order. The seed only ever produced `"created"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// The order was placed and awaits payment.
    Created,
}

impl OrderStatus {
    /// The wire name, identical to the serde form.
    pub fn as_str(&self) -> &'static str {
        match self {
            OrderStatus::Created => "created",
        }
    }
}

/// The outcome recorded in a payment, with the seed's exact wire strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PaymentStatus {
    #[serde(rename = "payment_successful")]
    Successful,
    #[serde(rename = "payment_failed")]
    Failed,
}

impl PaymentStatus {
    /// The wire name, identical to the serde form.
    pub fn as_str(&self) -> &'static str {
        match self {
            PaymentStatus::Successful => "payment_successful",
            PaymentStatus::Failed => "payment_failed",
        }
    }

    fn from_wire(name: &str) -> Option<PaymentStatus> {
        [PaymentStatus::Successful, PaymentStatus::Failed]
            .into_iter()
            .find(|status| status.as_str() == name)
    }
}

impl From<&Decision> for PaymentStatus {
    fn from(decision: &Decision) -> PaymentStatus {
        match decision {
            Decision::Success => PaymentStatus::Successful,
            Decision::Failure(_) => PaymentStatus::Failed,
        }
    }
}

/// An order placed by order-service (topic `orders`, key = `order_id` in decimal).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    /// Unique across generators and restarts (see [`crate::ids`]).
    pub order_id: u64,
    /// In [`USER_IDS`].
    pub user_id: u32,
    /// Between [`Amount::MIN_ORDER`] and [`Amount::MAX_ORDER`].
    pub amount: Amount,
    pub status: OrderStatus,
    /// When the order was placed (RFC 3339). Absent in seed-era orders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// Fields this version does not know, kept so they pass through unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The field names of [`Order`], in wire order.
const ORDER_FIELDS: [&str; 5] = ["order_id", "user_id", "amount", "status", "created_at"];

impl Order {
    /// A freshly created order with no extra fields.
    pub fn new(order_id: u64, user_id: u32, amount: Amount, created_at: String) -> Order {
        Order {
            order_id,
            user_id,
            amount,
            status: OrderStatus::Created,
            created_at: Some(created_at),
            extra: Map::new(),
        }
    }

    /// Parses and validates an order from a message value.
    ///
    /// Checks, in this order: size, UTF-8, JSON, that it is an object, then each field's
    /// presence, type and range. `created_at` may be missing (seed orders lack it).
    pub fn parse(bytes: &[u8]) -> Result<Order, InvalidMessage> {
        let mut fields = Fields::from_bytes(bytes)?;
        let order_id = unsigned("order_id", &fields.required("order_id")?)?;
        let user_id = user_id(&fields.required("user_id")?)?;
        let amount = order_amount(&fields.required("amount")?)?;
        let status = order_status(&fields.required("status")?)?;
        let created_at = fields
            .optional("created_at")
            .map(|v| string("created_at", v))
            .transpose()?;
        Ok(Order {
            order_id,
            user_id,
            amount,
            status,
            created_at,
            extra: fields.into_extra(),
        })
    }

    /// The message key: the order id in decimal, so all events of an order share a
    /// partition.
    pub fn key(&self) -> String {
        self.order_id.to_string()
    }

    /// The message value: compact JSON with the seed's fields first, in the seed's order.
    pub fn to_json(&self) -> Vec<u8> {
        ObjectWriter::new()
            .field("order_id", self.order_id)
            .field("user_id", self.user_id)
            .field("amount", self.amount)
            .field("status", self.status.as_str())
            .optional("created_at", self.created_at.as_deref())
            .extra(&self.extra, &ORDER_FIELDS)
            .finish()
    }
}

/// The result of a payment (topic `payments`, key = `order_id` in decimal).
///
/// Seed-era payments carry only `order_id` and `status`; every other field is optional
/// so they still parse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payment {
    pub order_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<Amount>,
    pub status: PaymentStatus,
    /// Why the payment failed; absent on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<FailureReason>,
    /// When the payment was decided (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processed_at: Option<String>,
    /// The order's `created_at`, carried along so the notification can show the
    /// end-to-end latency without a lookup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_created_at: Option<String>,
    /// Fields this version does not know, kept so they pass through unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The field names of [`Payment`], in wire order.
const PAYMENT_FIELDS: [&str; 7] = [
    "order_id",
    "user_id",
    "amount",
    "status",
    "reason",
    "processed_at",
    "order_created_at",
];

impl Payment {
    /// The payment for `order` as decided by `decision`, processed at `processed_at`
    /// (RFC 3339). The order's unknown fields stay with the order.
    pub fn for_order(order: &Order, decision: &Decision, processed_at: String) -> Payment {
        Payment {
            order_id: order.order_id,
            user_id: Some(order.user_id),
            amount: Some(order.amount),
            status: PaymentStatus::from(decision),
            reason: decision.reason(),
            processed_at: Some(processed_at),
            order_created_at: order.created_at.clone(),
            extra: Map::new(),
        }
    }

    /// Parses and validates a payment from a message value.
    ///
    /// Only `order_id` and `status` are required. Optional fields are checked for type
    /// (and `reason` for a known value) but not for the order ranges: payment-service
    /// validated the order, and a notification should report what was decided.
    /// `null` counts as absent for optional fields.
    pub fn parse(bytes: &[u8]) -> Result<Payment, InvalidMessage> {
        let mut fields = Fields::from_bytes(bytes)?;
        let order_id = unsigned("order_id", &fields.required("order_id")?)?;
        let user_id = fields
            .optional("user_id")
            .map(|v| unsigned_u32("user_id", &v))
            .transpose()?;
        let amount = fields
            .optional("amount")
            .map(|v| amount("amount", &v))
            .transpose()?;
        let status = payment_status(&fields.required("status")?)?;
        let reason = fields
            .optional("reason")
            .map(|v| failure_reason(&v))
            .transpose()?;
        let processed_at = fields
            .optional("processed_at")
            .map(|v| string("processed_at", v))
            .transpose()?;
        let order_created_at = fields
            .optional("order_created_at")
            .map(|v| string("order_created_at", v))
            .transpose()?;
        Ok(Payment {
            order_id,
            user_id,
            amount,
            status,
            reason,
            processed_at,
            order_created_at,
            extra: fields.into_extra(),
        })
    }

    /// Whether the payment went through.
    pub fn is_successful(&self) -> bool {
        self.status == PaymentStatus::Successful
    }

    /// The message key: the order id in decimal, like the order's.
    pub fn key(&self) -> String {
        self.order_id.to_string()
    }

    /// The message value: compact JSON with the seed's fields first.
    pub fn to_json(&self) -> Vec<u8> {
        ObjectWriter::new()
            .field("order_id", self.order_id)
            .optional("user_id", self.user_id)
            .optional("amount", self.amount)
            .field("status", self.status.as_str())
            .optional("reason", self.reason.map(|reason| reason.as_str()))
            .optional("processed_at", self.processed_at.as_deref())
            .optional("order_created_at", self.order_created_at.as_deref())
            .extra(&self.extra, &PAYMENT_FIELDS)
            .finish()
    }
}

/// Why a message value is not a valid order or payment.
///
/// The `Display` text names the problem and the offending input; it goes into the
/// dead-letter header and the log. [`InvalidMessage::kind`] is the short code for
/// metrics labels.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMessage {
    #[error("message is {size} bytes, more than the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("message is not UTF-8: invalid bytes at offset {valid_up_to}")]
    NotUtf8 { valid_up_to: usize },
    #[error("message is not JSON: {0}")]
    NotJson(String),
    #[error("message is not a JSON object: got {found}")]
    NotAnObject { found: String },
    #[error("message has no \"{0}\" field")]
    MissingField(&'static str),
    #[error("field \"{field}\" has the wrong type: {detail}")]
    WrongType { field: &'static str, detail: String },
    #[error("field \"{field}\" is {value}, allowed: {allowed}")]
    OutOfRange {
        field: &'static str,
        value: String,
        allowed: &'static str,
    },
}

impl InvalidMessage {
    /// Every value [`InvalidMessage::kind`] returns, so metrics can pre-register them.
    pub const KINDS: [&'static str; 6] = [
        "too_large",
        "not_utf8",
        "not_json",
        "missing_field",
        "wrong_type",
        "out_of_range",
    ];

    /// A stable short code for the kind of problem, for metrics labels and the
    /// `x-shopstream-error-kind` header.
    pub fn kind(&self) -> &'static str {
        match self {
            InvalidMessage::TooLarge { .. } => "too_large",
            InvalidMessage::NotUtf8 { .. } => "not_utf8",
            InvalidMessage::NotJson(_) => "not_json",
            InvalidMessage::MissingField(_) => "missing_field",
            // A top-level array or string is JSON of the wrong type.
            InvalidMessage::NotAnObject { .. } | InvalidMessage::WrongType { .. } => "wrong_type",
            InvalidMessage::OutOfRange { .. } => "out_of_range",
        }
    }
}

/// The fields of a message's JSON object, taken out one by one as they are validated;
/// what remains are the unknown fields.
struct Fields(Map<String, Value>);

impl Fields {
    fn from_bytes(bytes: &[u8]) -> Result<Fields, InvalidMessage> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(InvalidMessage::TooLarge {
                size: bytes.len(),
                max: MAX_MESSAGE_BYTES,
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|e| InvalidMessage::NotUtf8 {
            valid_up_to: e.valid_up_to(),
        })?;
        match serde_json::from_str(text) {
            Ok(Value::Object(map)) => Ok(Fields(map)),
            Ok(other) => Err(InvalidMessage::NotAnObject {
                found: describe(&other),
            }),
            Err(e) => Err(InvalidMessage::NotJson(e.to_string())),
        }
    }

    /// The field's value; `null` is returned as is and fails the type check.
    fn required(&mut self, name: &'static str) -> Result<Value, InvalidMessage> {
        self.0
            .remove(name)
            .ok_or(InvalidMessage::MissingField(name))
    }

    /// The field's value, with `null` treated as absent.
    fn optional(&mut self, name: &str) -> Option<Value> {
        self.0.remove(name).filter(|value| !value.is_null())
    }

    fn into_extra(self) -> Map<String, Value> {
        self.0
    }
}

/// A JSON value as it appears in the input, shortened so error texts stay header-sized.
fn describe(value: &Value) -> String {
    const MAX_CHARS: usize = 64;
    let text = value.to_string();
    match text.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

fn wrong_type(field: &'static str, expected: &str, value: &Value) -> InvalidMessage {
    InvalidMessage::WrongType {
        field,
        detail: format!("expected {expected}, got {}", describe(value)),
    }
}

fn out_of_range(field: &'static str, value: &Value, allowed: &'static str) -> InvalidMessage {
    InvalidMessage::OutOfRange {
        field,
        value: describe(value),
        allowed,
    }
}

/// A JSON integer ≥ 0. Negative integers are out of range; fractions are the wrong type.
fn unsigned(field: &'static str, value: &Value) -> Result<u64, InvalidMessage> {
    match value.as_u64() {
        Some(n) => Ok(n),
        // `as_u64` failed, so an `i64` here is negative.
        None if value.is_i64() => Err(out_of_range(field, value, "a non-negative integer")),
        None => Err(wrong_type(field, "a non-negative integer", value)),
    }
}

fn unsigned_u32(field: &'static str, value: &Value) -> Result<u32, InvalidMessage> {
    let n = unsigned(field, value)?;
    u32::try_from(n).map_err(|_| out_of_range(field, value, "0..=4294967295"))
}

fn user_id(value: &Value) -> Result<u32, InvalidMessage> {
    const ALLOWED: &str = "1..=100";
    match unsigned("user_id", value) {
        Ok(id) => u32::try_from(id)
            .ok()
            .filter(|id| USER_IDS.contains(id))
            .ok_or_else(|| out_of_range("user_id", value, ALLOWED)),
        Err(InvalidMessage::OutOfRange { .. }) => Err(out_of_range("user_id", value, ALLOWED)),
        Err(e) => Err(e),
    }
}

fn amount(field: &'static str, value: &Value) -> Result<Amount, InvalidMessage> {
    const EXPECTED: &str = "a number with at most two decimals";
    let dollars = value
        .as_f64()
        .ok_or_else(|| wrong_type(field, EXPECTED, value))?;
    amount_from_dollars(dollars).map_err(|problem| match problem {
        AmountProblem::TooPrecise => wrong_type(field, EXPECTED, value),
        AmountProblem::OutOfRange => out_of_range(field, value, "0.00..=42949672.95"),
    })
}

fn order_amount(value: &Value) -> Result<Amount, InvalidMessage> {
    const ALLOWED: &str = "10.00..=500.00";
    let amount = amount("amount", value).map_err(|e| match e {
        InvalidMessage::OutOfRange { .. } => out_of_range("amount", value, ALLOWED),
        other => other,
    })?;
    if amount.is_valid_order_amount() {
        Ok(amount)
    } else {
        Err(out_of_range("amount", value, ALLOWED))
    }
}

fn string(field: &'static str, value: Value) -> Result<String, InvalidMessage> {
    match value {
        Value::String(s) => Ok(s),
        other => Err(wrong_type(field, "a string", &other)),
    }
}

fn order_status(value: &Value) -> Result<OrderStatus, InvalidMessage> {
    match value.as_str() {
        Some("created") => Ok(OrderStatus::Created),
        Some(_) => Err(out_of_range("status", value, "\"created\"")),
        None => Err(wrong_type("status", "a string", value)),
    }
}

fn payment_status(value: &Value) -> Result<PaymentStatus, InvalidMessage> {
    match value.as_str() {
        Some(name) => PaymentStatus::from_wire(name).ok_or_else(|| {
            out_of_range(
                "status",
                value,
                "\"payment_successful\" or \"payment_failed\"",
            )
        }),
        None => Err(wrong_type("status", "a string", value)),
    }
}

fn failure_reason(value: &Value) -> Result<FailureReason, InvalidMessage> {
    const ALLOWED: &str =
        "\"card_declined\", \"insufficient_funds\", \"fraud_suspected\" or \"expired_card\"";
    match value.as_str() {
        Some(name) => {
            FailureReason::from_wire(name).ok_or_else(|| out_of_range("reason", value, ALLOWED))
        }
        None => Err(wrong_type("reason", "a string", value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_ORDER: &[u8] =
        br#"{"order_id": 1001, "user_id": 37, "amount": 199.99, "status": "created"}"#;
    const SEED_PAYMENT: &[u8] = br#"{"order_id": 1001, "status": "payment_successful"}"#;

    fn order() -> Order {
        Order::new(
            1001,
            37,
            Amount::from_cents(19_999),
            "2025-01-02T03:04:05.678Z".into(),
        )
    }

    fn order_json(field: &str, value: &str) -> Vec<u8> {
        let mut object: Map<String, Value> = serde_json::from_slice(SEED_ORDER).unwrap();
        if value.is_empty() {
            object.remove(field);
        } else {
            object.insert(field.into(), serde_json::from_str(value).unwrap());
        }
        serde_json::to_vec(&object).unwrap()
    }

    fn order_error(field: &str, value: &str) -> InvalidMessage {
        Order::parse(&order_json(field, value)).unwrap_err()
    }

    #[test]
    fn seed_order_parses_without_created_at() {
        let parsed = Order::parse(SEED_ORDER).unwrap();
        assert_eq!(parsed.order_id, 1001);
        assert_eq!(parsed.user_id, 37);
        assert_eq!(parsed.amount, Amount::from_cents(19_999));
        assert_eq!(parsed.status, OrderStatus::Created);
        assert_eq!(parsed.created_at, None);
        assert!(parsed.extra.is_empty());
    }

    #[test]
    fn seed_payment_parses_with_only_order_id_and_status() {
        let parsed = Payment::parse(SEED_PAYMENT).unwrap();
        assert_eq!(parsed.order_id, 1001);
        assert!(parsed.is_successful());
        assert_eq!(
            (parsed.user_id, parsed.amount, parsed.reason),
            (None, None, None)
        );
        assert_eq!(Payment::parse(&parsed.to_json()).unwrap(), parsed);
    }

    #[test]
    fn order_json_keeps_the_seed_fields_first_and_readable() {
        assert_eq!(
            String::from_utf8(order().to_json()).unwrap(),
            r#"{"order_id":1001,"user_id":37,"amount":199.99,"status":"created","created_at":"2025-01-02T03:04:05.678Z"}"#
        );
    }

    #[test]
    fn order_round_trips_with_unknown_fields() {
        let mut original = order();
        original
            .extra
            .insert("coupon".into(), Value::from("SPRING"));
        let parsed = Order::parse(&original.to_json()).unwrap();
        assert_eq!(parsed, original);
        assert_eq!(parsed.key(), "1001");
    }

    #[test]
    fn payment_round_trips() {
        for decision in [
            Decision::Success,
            Decision::Failure(FailureReason::FraudSuspected),
        ] {
            let payment =
                Payment::for_order(&order(), &decision, "2025-01-02T03:04:05.690Z".into());
            assert_eq!(Payment::parse(&payment.to_json()).unwrap(), payment);
        }
    }

    #[test]
    fn hand_written_json_matches_serde_shape() {
        let mut original = order();
        original
            .extra
            .insert("nested".into(), serde_json::json!({"a": [1, 2.5, null]}));
        let ours: Value = serde_json::from_slice(&original.to_json()).unwrap();
        assert_eq!(ours, serde_json::to_value(&original).unwrap());
        let payment = Payment::for_order(&original, &Decision::Success, "t".into());
        let ours: Value = serde_json::from_slice(&payment.to_json()).unwrap();
        assert_eq!(ours, serde_json::to_value(&payment).unwrap());
    }

    #[test]
    fn unknown_fields_never_duplicate_known_ones() {
        let mut tampered = order();
        tampered
            .extra
            .insert("order_id".into(), Value::from("shadow"));
        let text = String::from_utf8(tampered.to_json()).unwrap();
        assert_eq!(text.matches("order_id").count(), 1, "{text}");
    }

    #[test]
    fn python_consumer_sees_seed_types_in_our_payments() {
        let decision = Decision::Failure(FailureReason::CardDeclined);
        let payment = Payment::for_order(&order(), &decision, "2025-01-02T03:04:05.690Z".into());
        // What `json.loads(message.value)` gives a seed-era consumer.
        let seen: Value = serde_json::from_slice(&payment.to_json()).unwrap();
        assert!(seen["order_id"].is_u64());
        assert_eq!(seen["order_id"], 1001);
        assert_eq!(seen["status"], "payment_failed");
        assert_eq!(seen["user_id"], 37);
        assert_eq!(seen["amount"].as_f64(), Some(199.99));
        assert_eq!(seen["reason"], "card_declined");
        let success = Payment::for_order(&order(), &Decision::Success, "t".into());
        let seen: Value = serde_json::from_slice(&success.to_json()).unwrap();
        assert_eq!(seen["status"], "payment_successful");
        assert!(seen.get("reason").is_none());
    }

    #[test]
    fn amounts_print_and_serialise_with_two_decimals() {
        for (cents, json, shown) in [
            (19_999, "199.99", "$199.99"),
            (1_000, "10.0", "$10.00"),
            (50_000, "500.0", "$500.00"),
            (1_005, "10.05", "$10.05"),
            (1_010, "10.1", "$10.10"),
        ] {
            let amount = Amount::from_cents(cents);
            assert_eq!(serde_json::to_string(&amount).unwrap(), json);
            assert_eq!(amount.to_string(), shown);
            assert_eq!(serde_json::from_str::<Amount>(json).unwrap(), amount);
        }
    }

    #[test]
    fn every_two_decimal_order_amount_survives_the_float_round_trip() {
        for cents in Amount::MIN_ORDER.cents()..=Amount::MAX_ORDER.cents() {
            let json = Value::from(Amount::from_cents(cents)).to_string();
            let back: Amount = serde_json::from_str(&json).unwrap();
            assert_eq!(back.cents(), cents, "{json}");
        }
    }

    #[test]
    fn amounts_with_more_than_two_decimals_are_refused() {
        assert_eq!(Amount::from_dollars(1.234), None);
        assert_eq!(Amount::from_dollars(-1.0), None);
        assert_eq!(Amount::from_dollars(f64::NAN), None);
        assert_eq!(Amount::from_dollars(12.0), Some(Amount::from_cents(1_200)));
        assert!(serde_json::from_str::<Amount>("1.234").is_err());
        assert_eq!(order_error("amount", "100.125").kind(), "wrong_type");
    }

    #[test]
    fn invalid_bytes_are_rejected_with_the_right_kind() {
        let too_large = vec![b' '; 1024 * 1024];
        for (bytes, kind) in [
            (&b"{\"order_id\": 1001,"[..], "not_json"),
            (b"", "not_json"),
            (b"\xff\xfe{}", "not_utf8"),
            (&too_large[..], "too_large"),
            (b"[1001, 37]", "wrong_type"),
            (b"\"created\"", "wrong_type"),
        ] {
            let error = Order::parse(bytes).unwrap_err();
            assert_eq!(error.kind(), kind, "{error}");
            assert_eq!(Payment::parse(bytes).unwrap_err().kind(), kind);
        }
    }

    #[test]
    fn invalid_order_fields_are_rejected_with_the_right_kind() {
        for (field, value, kind) in [
            ("order_id", r#""abc""#, "wrong_type"),
            ("order_id", "1001.5", "wrong_type"),
            ("order_id", "-1", "out_of_range"),
            ("order_id", "", "missing_field"),
            ("user_id", "0", "out_of_range"),
            ("user_id", "101", "out_of_range"),
            ("user_id", "-3", "out_of_range"),
            ("user_id", "null", "wrong_type"),
            ("user_id", "", "missing_field"),
            ("amount", "9.99", "out_of_range"),
            ("amount", "500.01", "out_of_range"),
            ("amount", "-20", "out_of_range"),
            ("amount", r#""199.99""#, "wrong_type"),
            ("amount", "", "missing_field"),
            ("status", r#""shipped""#, "out_of_range"),
            ("status", "1", "wrong_type"),
            ("status", "", "missing_field"),
            ("created_at", "12", "wrong_type"),
        ] {
            let error = order_error(field, value);
            assert_eq!(error.kind(), kind, "{field} = {value:?}: {error}");
        }
    }

    #[test]
    fn boundary_values_are_valid_orders() {
        for (field, value) in [
            ("user_id", "1"),
            ("user_id", "100"),
            ("amount", "10"),
            ("amount", "500.00"),
        ] {
            assert!(
                Order::parse(&order_json(field, value)).is_ok(),
                "{field} = {value}"
            );
        }
    }

    #[test]
    fn errors_say_what_is_wrong_with_which_input() {
        let error = order_error("order_id", r#""abc""#);
        assert_eq!(
            error.to_string(),
            r#"field "order_id" has the wrong type: expected a non-negative integer, got "abc""#
        );
        let error = order_error("amount", "9.99");
        assert_eq!(
            error.to_string(),
            r#"field "amount" is 9.99, allowed: 10.00..=500.00"#
        );
        assert_eq!(
            order_error("user_id", "").to_string(),
            r#"message has no "user_id" field"#
        );
        let error = Order::parse(&vec![b' '; 1024 * 1024]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "message is 1048576 bytes, more than the 65536-byte limit"
        );
    }

    #[test]
    fn long_offending_values_are_shortened_in_errors() {
        let long = format!("\"{}\"", "x".repeat(10_000));
        let error = order_error("order_id", &long);
        assert!(error.to_string().len() < 200, "{error}");
    }

    #[test]
    fn invalid_payments_are_rejected_with_the_right_kind() {
        for (json, kind) in [
            (&br#"{"status": "payment_successful"}"#[..], "missing_field"),
            (br#"{"order_id": 1001}"#, "missing_field"),
            (br#"{"order_id": 1001, "status": "paid"}"#, "out_of_range"),
            (
                br#"{"order_id": 1001, "status": "payment_failed", "reason": "bored"}"#,
                "out_of_range",
            ),
            (
                br#"{"order_id": 1001, "status": "payment_failed", "reason": 3}"#,
                "wrong_type",
            ),
            (
                br#"{"order_id": 1001, "status": "payment_successful", "amount": "1"}"#,
                "wrong_type",
            ),
            (
                br#"{"order_id": 1001, "status": "payment_successful", "user_id": 1.5}"#,
                "wrong_type",
            ),
        ] {
            let error = Payment::parse(json).unwrap_err();
            assert_eq!(
                error.kind(),
                kind,
                "{}: {error}",
                String::from_utf8_lossy(json)
            );
        }
    }

    #[test]
    fn null_optional_payment_fields_count_as_absent() {
        let parsed = Payment::parse(
            br#"{"order_id": 1001, "status": "payment_successful", "user_id": null, "reason": null}"#,
        )
        .unwrap();
        assert_eq!((parsed.user_id, parsed.reason), (None, None));
    }

    #[test]
    fn every_kind_is_listed() {
        let errors = [
            InvalidMessage::TooLarge { size: 1, max: 0 },
            InvalidMessage::NotUtf8 { valid_up_to: 0 },
            InvalidMessage::NotJson(String::new()),
            InvalidMessage::MissingField("x"),
            InvalidMessage::WrongType {
                field: "x",
                detail: String::new(),
            },
            InvalidMessage::OutOfRange {
                field: "x",
                value: String::new(),
                allowed: "",
            },
        ];
        for (error, kind) in errors.iter().zip(InvalidMessage::KINDS) {
            assert_eq!(error.kind(), kind);
        }
    }
}
