//! A Stripe-compatible test gateway that the daemon's black-box tests start in-process, so charging,
//! idempotent retries, declines, lost answers and signed webhooks can be exercised without the network.
//!
//! It speaks Stripe's wire format: form-encoded requests with bracket notation, `Authorization: Bearer`,
//! full JSON objects (every field async-stripe's strict response types need), `Idempotency-Key` replay
//! with `Idempotent-Replayed: true`, HTTP 402 `card_error` with `decline_code` and the failed
//! PaymentIntent, `Request-Id` on every answer, and `Stripe-Signature: t=..,v1=..` for webhooks.
//!
//! The server runs on its own thread and Tokio runtime, so it keeps answering even when a test blocks
//! its own runtime (waiting on a child process, for example). Dropping the handle stops it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::serve::{IncomingStream, Listener};
use hmac::{Hmac, Mac};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// The API version stamped on events when no request has told us one (async-stripe 1.0.0-rc.10's).
const DEFAULT_API_VERSION: &str = "2026-09-30.endive";

/// How an injected failure behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailMode {
    /// Wait this long before answering (after the work for `fail_next_after_charge`; before dropping
    /// the connection without doing the work for `fail_next_before`). A client whose timeout is
    /// shorter sees a timeout.
    Timeout(Duration),
    /// Answer HTTP 500 with an `api_error`.
    ServerError,
    /// Close the connection without any HTTP answer.
    Disconnect,
    /// Answer HTTP 429 `rate_limit_error`.
    RateLimited,
    /// Answer HTTP 400 `invalid_request_error` (`parameter_invalid_integer` on `amount`): the
    /// request itself is refused.
    Rejected,
}

impl FailMode {
    /// The answer this failure gives instead of the real one, if it gives one.
    fn answer(self, request_id: &str) -> Option<Answer> {
        match self {
            FailMode::ServerError => Some(Answer::new(500, &api_error_body())),
            FailMode::RateLimited => Some(Answer::new(
                429,
                &ApiError::plain(
                    429,
                    "invalid_request_error",
                    "Too many requests hit the API too quickly. We recommend an exponential \
                     backoff of your requests.",
                )
                .with("code", json!("rate_limit"))
                .body(request_id),
            )),
            FailMode::Rejected => Some(Answer::new(
                400,
                &ApiError::invalid(
                    400,
                    Some("parameter_invalid_integer"),
                    "Invalid integer: the amount is not one this account can charge.",
                    Some("amount"),
                )
                .body(request_id),
            )),
            FailMode::Timeout(_) | FailMode::Disconnect => None,
        }
    }
}

/// A failure for one request: instead of the work (`Before`) or after it, instead of its answer
/// (`After`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Before(FailMode),
    After(FailMode),
}

/// One request as the gateway received it (recorded before authentication and failure injection).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    /// The path without the query string, e.g. `/v1/payment_intents`.
    pub path: String,
    pub idempotency_key: Option<String>,
    /// Decoded form parameters (POST body) or query parameters (GET), in the order sent,
    /// with bracket keys kept as sent: `metadata[invoice_id]`, `expand[0]`.
    pub params: Vec<(String, String)>,
}

/// Handle on a running gateway. Cheap accessors; dropping it stops the server.
pub struct StripeGateway {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl StripeGateway {
    /// Binds 127.0.0.1 on a free port and starts serving on a dedicated thread.
    pub async fn start() -> StripeGateway {
        let shared = Arc::new(Shared {
            webhook_secret: format!("whsec_{}", random_alnum(32)),
            state: Mutex::new(GatewayState::default()),
        });
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let server_shared = shared.clone();
        std::thread::Builder::new()
            .name("stripe-gateway".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("build stripe gateway runtime");
                runtime.block_on(async move {
                    let tcp = TcpListener::bind("127.0.0.1:0")
                        .await
                        .expect("bind stripe gateway");
                    let addr = tcp.local_addr().expect("stripe gateway address");
                    let app = Router::new().fallback(handle).with_state(server_shared);
                    let service = app.into_make_service_with_connect_info::<ConnCtl>();
                    let _ = ready_tx.send(addr);
                    tokio::select! {
                        _ = axum::serve(GatewayListener { inner: tcp }, service) => {}
                        _ = shutdown_rx => {}
                    }
                });
                runtime.shutdown_background();
            })
            .expect("spawn stripe gateway thread");
        let addr = ready_rx.await.expect("stripe gateway failed to start");
        StripeGateway {
            shared,
            addr,
            shutdown: Some(shutdown_tx),
        }
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash. async-stripe accepts it with or without one
    /// (it parses the base as a URI and sends requests to `{base}v1{path}`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The `whsec_...` secret this gateway signs webhook events with.
    pub fn webhook_secret(&self) -> String {
        self.shared.webhook_secret.clone()
    }

    /// The `Stripe-Signature` header value for `body` sent at `timestamp` (unix seconds):
    /// `t={timestamp},v1={hex(HMAC-SHA256(secret, "{timestamp}.{body}"))}`.
    pub fn sign(&self, body: &str, timestamp: i64) -> String {
        sign_payload(&self.shared.webhook_secret, body, timestamp)
    }

    /// Every PaymentIntent created, in creation order, as it is now.
    pub fn payment_intents(&self) -> Vec<Value> {
        self.shared.lock().payment_intents.clone()
    }

    pub fn payment_intent_count(&self) -> usize {
        self.shared.lock().payment_intents.len()
    }

    /// Every Refund created, in creation order.
    pub fn refunds(&self) -> Vec<Value> {
        self.shared.lock().refunds.clone()
    }

    /// Every request received, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// Delay added to every request after its work is done and before it is answered.
    pub fn set_latency(&self, d: Duration) {
        self.shared.lock().latency = d;
    }

    /// Arms a failure for the next charge request (`POST /v1/payment_intents` with `confirm=true`, or
    /// `POST /v1/payment_intents/{id}/confirm`): the charge really happens and its real result is stored
    /// under the request's Idempotency-Key (a retry with that key replays it), then the client gets
    /// the failure instead of the result.
    pub fn fail_next_after_charge(&self, mode: FailMode) {
        self.shared.lock().fail_after = Some(mode);
    }

    /// Arms a failure for the next charge request that happens instead of the work: nothing is charged
    /// and nothing is stored under the Idempotency-Key. `Timeout(d)` waits `d`, then drops the
    /// connection.
    pub fn fail_next_before(&self, mode: FailMode) {
        self.shared.lock().fail_before = Some(mode);
    }

    /// Failures for the next refund requests (`POST /v1/refunds`), one per request in order
    /// (`None`: that one goes through).
    pub fn queue_refund_faults(&self, faults: Vec<Option<Fault>>) {
        self.shared.lock().refund_faults = faults.into();
    }

    /// An outage of the money endpoints (PaymentIntents, refunds, their search) until cleared with
    /// None: every such request fails with `mode` before any work is done.
    pub fn set_outage(&self, mode: Option<FailMode>) {
        self.shared.lock().outage = mode;
    }

    /// A full Stripe Event JSON for `object`. When `object` was created through this gateway, `request`
    /// names the creating request and its idempotency key, as Stripe does.
    pub fn event_json(&self, event_type: &str, object: Value) -> String {
        let state = self.shared.lock();
        let origin = object
            .get("id")
            .and_then(Value::as_str)
            .and_then(|id| state.origins.get(id))
            .cloned();
        let (request_id, idempotency_key) = match origin {
            Some(o) => (o.request_id, o.idempotency_key),
            None => (new_id("req"), None),
        };
        let api_version = state
            .api_version
            .clone()
            .unwrap_or_else(|| DEFAULT_API_VERSION.into());
        drop(state);
        json!({
            "id": new_id("evt"),
            "object": "event",
            "api_version": api_version,
            "created": now(),
            "data": { "object": object },
            "livemode": false,
            "pending_webhooks": 1,
            "request": { "id": request_id, "idempotency_key": idempotency_key },
            "type": event_type,
        })
        .to_string()
    }
}

impl Drop for StripeGateway {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// HMAC-SHA256 Stripe signature over `"{timestamp}.{body}"`, keyed with the whole `whsec_...` string.
fn sign_payload(secret: &str, body: &str, timestamp: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac takes any key");
    mac.update(format!("{timestamp}.{body}").as_bytes());
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

struct Shared {
    webhook_secret: String,
    state: Mutex<GatewayState>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, GatewayState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Default)]
struct GatewayState {
    latency: Duration,
    fail_before: Option<FailMode>,
    fail_after: Option<FailMode>,
    outage: Option<FailMode>,
    refund_faults: std::collections::VecDeque<Option<Fault>>,
    api_version: Option<String>,
    requests: Vec<RecordedRequest>,
    customers: Vec<Value>,
    payment_methods: HashMap<String, StoredPaymentMethod>,
    payment_intents: Vec<Value>,
    charges: HashMap<String, Value>,
    refunds: Vec<Value>,
    setup_intents: Vec<Value>,
    idempotency: HashMap<String, StoredResult>,
    origins: HashMap<String, Origin>,
}

struct StoredPaymentMethod {
    object: Value,
    card: &'static TestCard,
    /// Detached payment methods cannot be used again, as at Stripe.
    detached: bool,
}

struct StoredResult {
    method: String,
    path: String,
    params: Vec<(String, String)>,
    status: u16,
    body: String,
    request_id: String,
}

#[derive(Clone)]
struct Origin {
    request_id: String,
    idempotency_key: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Test cards
// ---------------------------------------------------------------------------------------------

struct TestCard {
    token: &'static str,
    number: &'static str,
    brand: &'static str,
    funding: &'static str,
    decline: Option<Decline>,
}

struct Decline {
    code: &'static str,
    decline_code: &'static str,
    message: &'static str,
    advice_code: Option<&'static str>,
    param: Option<&'static str>,
}

const fn card(token: &'static str, number: &'static str, brand: &'static str) -> TestCard {
    TestCard {
        token,
        number,
        brand,
        funding: "credit",
        decline: None,
    }
}

const fn declined(
    token: &'static str,
    number: &'static str,
    decline_code: &'static str,
    message: &'static str,
    advice_code: Option<&'static str>,
) -> TestCard {
    TestCard {
        token,
        number,
        brand: "visa",
        funding: "credit",
        decline: Some(Decline {
            code: "card_declined",
            decline_code,
            message,
            advice_code,
            param: None,
        }),
    }
}

const DECLINED: &str = "Your card was declined.";

static TEST_CARDS: &[TestCard] = &[
    card("pm_card_visa", "4242424242424242", "visa"),
    TestCard {
        funding: "debit",
        ..card("pm_card_visa_debit", "4000056655665556", "visa")
    },
    card("pm_card_mastercard", "5555555555554444", "mastercard"),
    card("pm_card_amex", "378282246310005", "amex"),
    declined(
        "pm_card_chargeDeclinedInsufficientFunds",
        "4000000000009995",
        "insufficient_funds",
        "Your card has insufficient funds.",
        Some("try_again_later"),
    ),
    declined(
        "pm_card_chargeCustomerFail",
        "4000000000000341",
        "generic_decline",
        DECLINED,
        None,
    ),
    declined(
        "pm_card_chargeDeclined",
        "4000000000000002",
        "generic_decline",
        DECLINED,
        None,
    ),
    declined(
        "pm_card_visa_chargeDeclinedLostCard",
        "4000000000009987",
        "lost_card",
        DECLINED,
        Some("do_not_try_again"),
    ),
    declined(
        "pm_card_visa_chargeDeclinedStolenCard",
        "4000000000009979",
        "stolen_card",
        DECLINED,
        Some("do_not_try_again"),
    ),
    declined(
        "pm_card_chargeDeclinedFraudulent",
        "4000000000000019",
        "fraudulent",
        DECLINED,
        Some("do_not_try_again"),
    ),
    TestCard {
        token: "pm_card_chargeDeclinedExpiredCard",
        number: "4000000000000069",
        brand: "visa",
        funding: "credit",
        decline: Some(Decline {
            code: "expired_card",
            decline_code: "expired_card",
            message: "Your card has expired.",
            advice_code: Some("confirm_card_data"),
            param: Some("exp_month"),
        }),
    },
    TestCard {
        token: "pm_card_chargeDeclinedIncorrectCvc",
        number: "4000000000000127",
        brand: "visa",
        funding: "credit",
        decline: Some(Decline {
            code: "incorrect_cvc",
            decline_code: "incorrect_cvc",
            message: "Your card's security code is incorrect.",
            advice_code: Some("confirm_card_data"),
            param: Some("cvc"),
        }),
    },
    TestCard {
        token: "pm_card_chargeDeclinedProcessingError",
        number: "4000000000000119",
        brand: "visa",
        funding: "credit",
        decline: Some(Decline {
            code: "processing_error",
            decline_code: "processing_error",
            message: "An error occurred while processing your card. Try again in a little bit.",
            advice_code: Some("try_again_later"),
            param: None,
        }),
    },
];

/// The test card a test token names: `pm_card_visa` style, or `pm_card_<number>`.
fn test_card(token: &str) -> Option<&'static TestCard> {
    TEST_CARDS.iter().find(|c| {
        c.token == token
            || token
                .strip_prefix("pm_card_")
                .is_some_and(|n| n == c.number)
    })
}

// ---------------------------------------------------------------------------------------------
// HTTP plumbing: a listener whose connections a handler can drop on purpose
// ---------------------------------------------------------------------------------------------

struct GatewayListener {
    inner: TcpListener,
}

/// Per-connection handle given to handlers through `ConnectInfo`; setting `kill` makes the
/// connection fail its next write, so hyper closes it without sending an answer.
#[derive(Clone, Debug)]
struct ConnCtl {
    kill: Arc<AtomicBool>,
}

struct GatewayIo {
    inner: TcpStream,
    kill: Arc<AtomicBool>,
}

impl Listener for GatewayListener {
    type Io = GatewayIo;
    type Addr = ConnCtl;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let kill = Arc::new(AtomicBool::new(false));
                    return (
                        GatewayIo {
                            inner: stream,
                            kill: kill.clone(),
                        },
                        ConnCtl { kill },
                    );
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()?;
        Ok(ConnCtl {
            kill: Arc::new(AtomicBool::new(false)),
        })
    }
}

impl Connected<IncomingStream<'_, GatewayListener>> for ConnCtl {
    fn connect_info(stream: IncomingStream<'_, GatewayListener>) -> Self {
        stream.remote_addr().clone()
    }
}

fn injected_reset() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        "stripe gateway: injected disconnect",
    )
}

impl AsyncRead for GatewayIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.kill.load(Ordering::SeqCst) {
            return Poll::Ready(Err(injected_reset()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for GatewayIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.kill.load(Ordering::SeqCst) {
            return Poll::Ready(Err(injected_reset()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.kill.load(Ordering::SeqCst) {
            return Poll::Ready(Err(injected_reset()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What the processing task decided to do with the connection.
enum Outcome {
    Answer(Answer),
    Disconnect,
}

struct Answer {
    status: u16,
    body: String,
    replayed_from: Option<String>,
}

impl Answer {
    fn new(status: u16, body: &Value) -> Self {
        Answer {
            status,
            body: body.to_string(),
            replayed_from: None,
        }
    }
}

struct Incoming {
    method: Method,
    path: String,
    params: Vec<(String, String)>,
    headers: HeaderMap,
    request_id: String,
    idempotency_key: Option<String>,
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnCtl>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method == Method::GET && uri.path().starts_with("/v3") {
        // The stand-in Stripe.js, as a page would load it (`portal.stripe_js_url`).
        return Response::builder()
            .header("content-type", "text/javascript; charset=utf-8")
            .header("access-control-allow-origin", "*")
            .body(Body::from(STRIPE_JS))
            .expect("valid response");
    }
    if method == Method::OPTIONS {
        // CORS preflight, answered as Stripe's API does for browsers.
        return Response::builder()
            .status(StatusCode::NO_CONTENT)
            .header("access-control-allow-origin", "*")
            .header("access-control-allow-methods", "GET, POST, DELETE")
            .header(
                "access-control-allow-headers",
                "authorization, content-type, stripe-version",
            )
            .body(Body::empty())
            .expect("valid response");
    }
    let params = if method == Method::GET || method == Method::DELETE {
        parse_form(uri.query().unwrap_or(""))
    } else {
        parse_form(&String::from_utf8_lossy(&body))
    };
    let idempotency_key = header(&headers, "idempotency-key");
    let request_id = new_id_len("req", 14);
    {
        let mut state = shared.lock();
        state.requests.push(RecordedRequest {
            method: method.to_string(),
            path: uri.path().to_string(),
            idempotency_key: idempotency_key.clone(),
            params: params.clone(),
        });
        if let Some(version) = header(&headers, "stripe-version") {
            state.api_version = Some(version);
        }
    }
    let incoming = Incoming {
        method,
        path: uri.path().to_string(),
        params,
        headers,
        request_id: request_id.clone(),
        idempotency_key: idempotency_key.clone(),
    };
    // The work runs in its own task so that a client giving up (timeout, disconnect) never cancels
    // it halfway: like Stripe, the gateway finishes what it started.
    let outcome = tokio::spawn(process(shared, incoming))
        .await
        .unwrap_or_else(|_| Outcome::Answer(Answer::new(500, &api_error_body())));
    match outcome {
        Outcome::Disconnect => {
            conn.kill.store(true, Ordering::SeqCst);
            Response::new(Body::empty())
        }
        Outcome::Answer(answer) => {
            let mut builder = Response::builder()
                .status(
                    StatusCode::from_u16(answer.status)
                        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                )
                .header("content-type", "application/json")
                .header("access-control-allow-origin", "*")
                .header("request-id", request_id)
                .header("stripe-version", DEFAULT_API_VERSION)
                .header("cache-control", "no-cache, no-store");
            if let Some(key) = idempotency_key {
                builder = builder.header("idempotency-key", key);
            }
            if let Some(original) = answer.replayed_from {
                builder = builder
                    .header("idempotent-replayed", "true")
                    .header("original-request", original);
            }
            if (400..500).contains(&answer.status) && answer.status != 409 && answer.status != 429 {
                builder = builder.header("stripe-should-retry", "false");
            }
            builder
                .body(Body::from(answer.body))
                .expect("valid response")
        }
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn process(shared: Arc<Shared>, req: Incoming) -> Outcome {
    if let Err(err) = check_auth(&req.headers)
        && !publishable_setup_request(&req)
    {
        return Outcome::Answer(Answer::new(401, &err.body(&req.request_id)));
    }
    let charge = is_charge_request(&req.method, &req.path, &req.params);
    let refund = req.method == Method::POST && req.path == "/v1/refunds";
    let (before, refund_after) = {
        let mut state = shared.lock();
        let money =
            req.path.starts_with("/v1/payment_intents") || req.path.starts_with("/v1/refunds");
        let refund_fault = if refund {
            state.refund_faults.pop_front().flatten()
        } else {
            None
        };
        let before = match state.outage {
            Some(mode) if money => Some(mode),
            _ if charge => state.fail_before.take(),
            _ => match refund_fault {
                Some(Fault::Before(mode)) => Some(mode),
                _ => None,
            },
        };
        let after = match refund_fault {
            Some(Fault::After(mode)) => Some(mode),
            _ => None,
        };
        (before, after)
    };
    match before {
        None => {}
        Some(FailMode::Disconnect) => return Outcome::Disconnect,
        Some(FailMode::Timeout(d)) => {
            tokio::time::sleep(d).await;
            return Outcome::Disconnect;
        }
        Some(mode) => {
            if let Some(answer) = mode.answer(&req.request_id) {
                return Outcome::Answer(answer);
            }
        }
    }

    let (answer, after, latency) = {
        let mut state = shared.lock();
        let answer = run_idempotent(&mut state, &req);
        let after = if charge {
            state.fail_after.take()
        } else {
            refund_after
        };
        (answer, after, state.latency)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match after {
        None => Outcome::Answer(answer),
        Some(FailMode::Disconnect) => Outcome::Disconnect,
        Some(FailMode::Timeout(d)) => {
            tokio::time::sleep(d).await;
            Outcome::Answer(answer)
        }
        Some(mode) => Outcome::Answer(mode.answer(&req.request_id).unwrap_or(answer)),
    }
}

fn is_charge_request(method: &Method, path: &str, params: &[(String, String)]) -> bool {
    if method != Method::POST {
        return false;
    }
    let segments: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
    match segments.as_slice() {
        ["payment_intents"] => param(params, "confirm") == Some("true"),
        ["payment_intents", _, "confirm"] => true,
        _ => false,
    }
}

/// What a browser's Stripe.js may do with a publishable key (`key=pk_...` in the body, no
/// Authorization header): confirm a SetupIntent it holds the client secret of.
fn publishable_setup_request(req: &Incoming) -> bool {
    req.method == Method::POST
        && req.path.starts_with("/v1/setup_intents/")
        && req.path.ends_with("/confirm")
        && param(&req.params, "key").is_some_and(|k| k.starts_with("pk_"))
}

fn check_auth(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(auth) = header(headers, "authorization") else {
        return Err(ApiError::plain(
            401,
            "invalid_request_error",
            "You did not provide an API key. You need to provide your API key in the Authorization \
             header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See \
             https://stripe.com/docs/api#authentication for details, or we can help at \
             https://support.stripe.com/.",
        ));
    };
    let key = auth.strip_prefix("Bearer ").unwrap_or("").trim();
    if key.starts_with("sk_") || key.starts_with("rk_") {
        return Ok(());
    }
    let chars: Vec<char> = key.chars().collect();
    let head: String = chars.iter().take(8).collect();
    let tail: String = chars[chars.len().saturating_sub(4)..].iter().collect();
    Err(ApiError::plain(
        401,
        "invalid_request_error",
        &format!("Invalid API Key provided: {head}****{tail}"),
    ))
}

/// Idempotency as Stripe does it, and stricter: a key seen before with the same endpoint and the same
/// parameters *in the same order* replays the stored answer; anything else is an
/// `idempotency_error`. (Stripe compares the parameters; strict emulators compare the request byte
/// for byte, so a client must resend exactly what it sent.) Only answers of requests that ran (2xx
/// and 402 card errors) are stored; validation errors are not.
fn run_idempotent(state: &mut GatewayState, req: &Incoming) -> Answer {
    let key = match &req.idempotency_key {
        Some(key) if req.method == Method::POST => key.clone(),
        _ => return execute(state, req),
    };
    let sent = req.params.clone();
    let method = req.method.to_string();
    if let Some(stored) = state.idempotency.get(&key) {
        if stored.method != method || stored.path != req.path {
            let message = format!(
                "Keys for idempotent requests can only be used for the same endpoint they were first \
                 used for ('{} {}' vs '{} {}'). Try using a key other than '{key}' if you meant to \
                 execute a different request.",
                stored.method, stored.path, method, req.path
            );
            return Answer::new(
                400,
                &ApiError::plain(400, "idempotency_error", &message).body(&req.request_id),
            );
        }
        if stored.params != sent {
            let message = format!(
                "Keys for idempotent requests can only be used with the same parameters they were \
                 first used with. Try using a key other than '{key}' if you meant to execute a \
                 different request."
            );
            return Answer::new(
                400,
                &ApiError::plain(400, "idempotency_error", &message).body(&req.request_id),
            );
        }
        return Answer {
            status: stored.status,
            body: stored.body.clone(),
            replayed_from: Some(stored.request_id.clone()),
        };
    }
    let answer = execute(state, req);
    if (200..300).contains(&answer.status) || answer.status == 402 {
        state.idempotency.insert(
            key,
            StoredResult {
                method,
                path: req.path.clone(),
                params: sent,
                status: answer.status,
                body: answer.body.clone(),
                request_id: req.request_id.clone(),
            },
        );
    }
    answer
}

fn execute(state: &mut GatewayState, req: &Incoming) -> Answer {
    let ctx = Ctx {
        request_id: &req.request_id,
        idempotency_key: req.idempotency_key.as_deref(),
        params: &req.params,
        now: now(),
    };
    match route(state, &ctx, &req.method, &req.path) {
        Ok((status, body)) => Answer::new(status, &body),
        Err(err) => Answer::new(err.status, &err.body(&req.request_id)),
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

struct ApiError {
    status: u16,
    fields: Map<String, Value>,
}

impl ApiError {
    fn plain(status: u16, kind: &str, message: &str) -> Self {
        let mut fields = Map::new();
        fields.insert("message".into(), json!(message));
        fields.insert("type".into(), json!(kind));
        ApiError { status, fields }
    }

    fn invalid(status: u16, code: Option<&str>, message: &str, param: Option<&str>) -> Self {
        let mut err = ApiError::plain(status, "invalid_request_error", message);
        if let Some(code) = code {
            err = err
                .with("code", json!(code))
                .with("doc_url", json!(doc_url(code)));
        }
        if let Some(param) = param {
            err = err.with("param", json!(param));
        }
        err
    }

    fn missing(param: &str) -> Self {
        ApiError::invalid(
            400,
            Some("parameter_missing"),
            &format!("Missing required param: {param}."),
            Some(param),
        )
    }

    fn no_such(status: u16, what: &str, id: &str, param: &str) -> Self {
        ApiError::invalid(
            status,
            Some("resource_missing"),
            &format!("No such {what}: '{id}'"),
            Some(param),
        )
    }

    fn with(mut self, key: &str, value: Value) -> Self {
        self.fields.insert(key.into(), value);
        self
    }

    fn body(&self, request_id: &str) -> Value {
        let mut fields = self.fields.clone();
        fields.insert(
            "request_log_url".into(),
            json!(format!(
                "https://dashboard.stripe.com/test/logs/{request_id}?t={}",
                now()
            )),
        );
        json!({ "error": fields })
    }
}

fn doc_url(code: &str) -> String {
    format!(
        "https://stripe.com/docs/error-codes/{}",
        code.replace('_', "-")
    )
}

fn api_error_body() -> Value {
    json!({ "error": {
        "message": "An unknown error occurred. We've already been notified of the problem, but if you \
                    need any help, you can reach out to support: https://support.stripe.com/",
        "type": "api_error",
    }})
}

type Reply = Result<(u16, Value), ApiError>;

// ---------------------------------------------------------------------------------------------
// Routing and parameters
// ---------------------------------------------------------------------------------------------

struct Ctx<'a> {
    request_id: &'a str,
    idempotency_key: Option<&'a str>,
    params: &'a [(String, String)],
    now: i64,
}

impl Ctx<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        param(self.params, name)
    }

    /// `prefix[key]=value` pairs, e.g. `metadata[invoice_id]`.
    fn map(&self, prefix: &str) -> Vec<(String, String)> {
        self.params
            .iter()
            .filter_map(|(k, v)| {
                let inner = k
                    .strip_prefix(prefix)?
                    .strip_prefix('[')?
                    .strip_suffix(']')?;
                Some((inner.to_string(), v.clone()))
            })
            .collect()
    }

    /// `prefix[0]=a&prefix[1]=b` or `prefix[]=a` values, in order.
    fn list(&self, prefix: &str) -> Vec<String> {
        self.map(prefix).into_iter().map(|(_, v)| v).collect()
    }

    fn expand(&self) -> Vec<String> {
        self.list("expand")
    }

    fn origin(&self) -> Origin {
        Origin {
            request_id: self.request_id.to_string(),
            idempotency_key: self.idempotency_key.map(str::to_string),
        }
    }

    /// Refuses any parameter whose top-level name is not among the space-separated `allowed`
    /// (Stripe's `parameter_unknown`).
    fn only(&self, allowed: &str) -> Result<(), ApiError> {
        for (key, _) in self.params {
            let top = key.split('[').next().unwrap_or(key);
            if !allowed.split_whitespace().any(|a| a == top) {
                return Err(ApiError::invalid(
                    400,
                    Some("parameter_unknown"),
                    &format!("Received unknown parameter: {key}"),
                    Some(key),
                ));
            }
        }
        Ok(())
    }

    fn metadata(&self) -> Result<Map<String, Value>, ApiError> {
        let mut out = Map::new();
        for (k, v) in self.map("metadata") {
            if k.chars().count() > 40 {
                return Err(ApiError::invalid(
                    400,
                    None,
                    "Metadata keys can have up to 40 characters.",
                    Some(&format!("metadata[{k}]")),
                ));
            }
            if v.chars().count() > 500 {
                return Err(ApiError::invalid(
                    400,
                    None,
                    "Metadata values can have up to 500 characters.",
                    Some(&format!("metadata[{k}]")),
                ));
            }
            if !v.is_empty() {
                out.insert(k, json!(v));
            }
        }
        Ok(out)
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(other) => Err(ApiError::invalid(
                400,
                Some("parameter_invalid_boolean"),
                &format!("Invalid boolean: {other}"),
                Some(name),
            )),
        }
    }

    fn limit(&self) -> Result<usize, ApiError> {
        match self.get("limit") {
            None => Ok(10),
            Some(raw) => match raw.parse::<usize>() {
                Ok(n) if (1..=100).contains(&n) => Ok(n),
                _ => Err(ApiError::invalid(
                    400,
                    Some("parameter_invalid_integer"),
                    "This value must be between 1 and 100.",
                    Some("limit"),
                )),
            },
        }
    }
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

const EXPAND_ONLY: &str = "expand";
const LIST_PARAMS: &str = "customer created ending_before expand limit starting_after";

fn route(state: &mut GatewayState, ctx: &Ctx<'_>, method: &Method, path: &str) -> Reply {
    let Some(rest) = path.strip_prefix("/v1/") else {
        return Err(unrecognized(method, path));
    };
    let segments: Vec<&str> = rest.split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["balance"]) => {
            ctx.only(EXPAND_ONLY)?;
            let amounts = json!([{"amount": 0, "currency": "usd", "source_types": {"card": 0}}]);
            Ok((
                200,
                json!({"object": "balance", "available": amounts, "pending": amounts,
                       "livemode": false}),
            ))
        }
        ("POST", ["customers"]) => create_customer(state, ctx),
        ("GET", ["customers"]) => {
            ctx.only("email created ending_before expand limit starting_after")?;
            let email = ctx.get("email");
            let items: Vec<Value> = state
                .customers
                .iter()
                .filter(|c| email.is_none_or(|e| c["email"] == e))
                .cloned()
                .collect();
            list_page(ctx, items, "/v1/customers")
        }
        ("GET", ["customers", id]) => {
            ctx.only(EXPAND_ONLY)?;
            let customer = find_customer(state, id)
                .ok_or_else(|| ApiError::no_such(404, "customer", id, "id"))?;
            Ok((200, customer.clone()))
        }
        ("POST", ["customers", id]) => update_customer(state, ctx, id),
        ("GET", ["customers", id, "payment_methods"]) => {
            ctx.only("type allow_redisplay ending_before expand limit starting_after")?;
            find_customer(state, id)
                .ok_or_else(|| ApiError::no_such(404, "customer", id, "customer"))?;
            let items = customer_payment_methods(state, id);
            list_page(ctx, items, &format!("/v1/customers/{id}/payment_methods"))
        }
        ("GET", ["payment_methods"]) => {
            ctx.only("customer type ending_before expand limit starting_after")?;
            let customer = ctx
                .get("customer")
                .ok_or_else(|| ApiError::missing("customer"))?;
            let items = customer_payment_methods(state, customer);
            list_page(ctx, items, "/v1/payment_methods")
        }
        ("GET", ["payment_methods", id]) => {
            ctx.only(EXPAND_ONLY)?;
            let pm = state
                .payment_methods
                .get(*id)
                .ok_or_else(|| ApiError::no_such(404, "PaymentMethod", id, "payment_method"))?;
            Ok((200, pm.object.clone()))
        }
        ("POST", ["payment_methods", id, "attach"]) => attach_payment_method(state, ctx, id),
        ("POST", ["payment_methods", id, "detach"]) => detach_payment_method(state, ctx, id),
        ("POST", ["payment_intents"]) => create_payment_intent(state, ctx),
        ("GET", ["payment_intents"]) => {
            ctx.only(LIST_PARAMS)?;
            let customer = ctx.get("customer");
            let items: Vec<Value> = state
                .payment_intents
                .iter()
                .rev()
                .filter(|pi| customer.is_none_or(|c| pi["customer"] == c))
                .map(|pi| expand(state, pi.clone(), &ctx.expand(), "data."))
                .collect();
            list_page(ctx, items, "/v1/payment_intents")
        }
        ("GET", ["payment_intents", "search"]) => search_payment_intents(state, ctx),
        ("GET", ["payment_intents", id]) => {
            ctx.only("client_secret expand")?;
            let pi = find_payment_intent(state, id)?;
            Ok((200, expand(state, pi.clone(), &ctx.expand(), "")))
        }
        ("POST", ["payment_intents", id, "confirm"]) => confirm_payment_intent(state, ctx, id),
        ("POST", ["payment_intents", id, "cancel"]) => cancel_payment_intent(state, ctx, id),
        ("GET", ["charges", id]) => {
            ctx.only(EXPAND_ONLY)?;
            let charge = state
                .charges
                .get(*id)
                .ok_or_else(|| ApiError::no_such(404, "charge", id, "id"))?;
            Ok((200, expand(state, charge.clone(), &ctx.expand(), "")))
        }
        ("POST", ["refunds"]) => create_refund(state, ctx),
        ("POST", ["setup_intents"]) => create_setup_intent(state, ctx),
        ("GET", ["setup_intents", id]) => {
            ctx.only("client_secret expand")?;
            let si = state
                .setup_intents
                .iter()
                .find(|s| s["id"] == *id)
                .ok_or_else(|| ApiError::no_such(404, "setupintent", id, "intent"))?;
            Ok((200, si.clone()))
        }
        ("POST", ["setup_intents", id, "confirm"]) => confirm_setup_intent(state, ctx, id),
        ("GET", ["refunds"]) => {
            ctx.only(
                "charge payment_intent created ending_before expand limit \
             starting_after",
            )?;
            let (charge, pi) = (ctx.get("charge"), ctx.get("payment_intent"));
            let items: Vec<Value> = state
                .refunds
                .iter()
                .rev()
                .filter(|r| {
                    charge.is_none_or(|c| r["charge"] == c)
                        && pi.is_none_or(|p| r["payment_intent"] == p)
                })
                .cloned()
                .collect();
            list_page(ctx, items, "/v1/refunds")
        }
        ("GET", ["refunds", id]) => {
            ctx.only(EXPAND_ONLY)?;
            let refund = state
                .refunds
                .iter()
                .find(|r| r["id"] == *id)
                .ok_or_else(|| ApiError::no_such(404, "refund", id, "id"))?;
            Ok((200, refund.clone()))
        }
        _ => Err(unrecognized(method, path)),
    }
}

fn unrecognized(method: &Method, path: &str) -> ApiError {
    ApiError::plain(
        404,
        "invalid_request_error",
        &format!(
            "Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs or we can \
             help at https://support.stripe.com/."
        ),
    )
}

/// A `list` object page, newest first as given, honouring `limit` and `starting_after`.
fn list_page(ctx: &Ctx<'_>, items: Vec<Value>, url: &str) -> Reply {
    let limit = ctx.limit()?;
    let start = match ctx.get("starting_after") {
        Some(after) => items
            .iter()
            .position(|i| i["id"] == after)
            .map(|p| p + 1)
            .unwrap_or(items.len()),
        None => 0,
    };
    let page: Vec<Value> = items.iter().skip(start).take(limit).cloned().collect();
    let has_more = start + page.len() < items.len();
    Ok((
        200,
        json!({ "object": "list", "data": page, "has_more": has_more, "url": url }),
    ))
}

// ---------------------------------------------------------------------------------------------
// Customers
// ---------------------------------------------------------------------------------------------

const CUSTOMER_PARAMS: &str = "address balance business_name cash_balance description email expand \
     individual_name invoice_prefix invoice_settings metadata name \
     next_invoice_sequence payment_method phone preferred_locales shipping \
     source tax tax_exempt tax_id_data test_clock validate";

fn find_customer<'a>(state: &'a GatewayState, id: &str) -> Option<&'a Value> {
    state.customers.iter().find(|c| c["id"] == id)
}

fn create_customer(state: &mut GatewayState, ctx: &Ctx<'_>) -> Reply {
    ctx.only(CUSTOMER_PARAMS)?;
    let id = new_id_len("cus", 14);
    let customer = json!({
        "id": id,
        "object": "customer",
        "address": null,
        "balance": 0,
        "created": ctx.now,
        "currency": null,
        "customer_account": null,
        "default_source": null,
        "delinquent": false,
        "description": ctx.get("description"),
        "discount": null,
        "email": ctx.get("email"),
        "invoice_prefix": random_alnum(8).to_uppercase(),
        "invoice_settings": {
            "custom_fields": null,
            "default_payment_method": ctx.get("invoice_settings[default_payment_method]"),
            "footer": null,
            "rendering_options": null,
        },
        "livemode": false,
        "metadata": ctx.metadata()?,
        "name": ctx.get("name"),
        "next_invoice_sequence": 1,
        "phone": ctx.get("phone"),
        "preferred_locales": [],
        "shipping": null,
        "tax_exempt": "none",
        "test_clock": null,
    });
    state.origins.insert(id, ctx.origin());
    state.customers.push(customer.clone());
    Ok((200, customer))
}

fn update_customer(state: &mut GatewayState, ctx: &Ctx<'_>, id: &str) -> Reply {
    ctx.only(&format!("{CUSTOMER_PARAMS} default_source"))?;
    if let Some(pm) = ctx
        .get("invoice_settings[default_payment_method]")
        .filter(|pm| !pm.is_empty())
    {
        let attached = state
            .payment_methods
            .get(pm)
            .is_some_and(|p| p.object["customer"] == id);
        if !attached {
            return Err(ApiError::invalid(
                400,
                Some("resource_missing"),
                &format!("No such PaymentMethod: '{pm}'"),
                Some("invoice_settings[default_payment_method]"),
            ));
        }
    }
    let metadata = ctx.map("metadata");
    let customer = state
        .customers
        .iter_mut()
        .find(|c| c["id"] == id)
        .ok_or_else(|| ApiError::no_such(404, "customer", id, "id"))?;
    for field in ["email", "name", "description", "phone"] {
        if let Some(v) = ctx.get(field) {
            customer[field] = if v.is_empty() { Value::Null } else { json!(v) };
        }
    }
    if let Some(pm) = ctx.get("invoice_settings[default_payment_method]") {
        customer["invoice_settings"]["default_payment_method"] = if pm.is_empty() {
            Value::Null
        } else {
            json!(pm)
        };
    }
    for (k, v) in metadata {
        let map = customer["metadata"]
            .as_object_mut()
            .expect("metadata object");
        if v.is_empty() {
            map.remove(&k);
        } else {
            map.insert(k, json!(v));
        }
    }
    Ok((200, customer.clone()))
}

// ---------------------------------------------------------------------------------------------
// Payment methods
// ---------------------------------------------------------------------------------------------

fn fingerprint(number: &str) -> String {
    let digest = Sha256::digest(format!("settled-test-card:{number}").as_bytes());
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    digest
        .iter()
        .take(16)
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

fn exp_year() -> i64 {
    use chrono::Datelike;
    i64::from(chrono::Utc::now().year()) + 3
}

fn last4(card: &TestCard) -> &'static str {
    &card.number[card.number.len() - 4..]
}

fn card_payment_method(id: &str, card: &TestCard, customer: Option<&str>, created: i64) -> Value {
    json!({
        "id": id,
        "object": "payment_method",
        "allow_redisplay": "unspecified",
        "billing_details": empty_billing_details(),
        "card": {
            "brand": card.brand,
            "checks": { "address_line1_check": null, "address_postal_code_check": null, "cvc_check": "unchecked" },
            "country": "US",
            "display_brand": card.brand,
            "exp_month": 12,
            "exp_year": exp_year(),
            "fingerprint": fingerprint(card.number),
            "funding": card.funding,
            "generated_from": null,
            "last4": last4(card),
            "networks": { "available": [card.brand], "preferred": null },
            "regulated_status": "unregulated",
            "three_d_secure_usage": { "supported": true },
            "wallet": null,
        },
        "created": created,
        "customer": customer,
        "customer_account": null,
        "livemode": false,
        "metadata": {},
        "radar_options": {},
        "type": "card",
    })
}

fn customer_payment_methods(state: &GatewayState, customer: &str) -> Vec<Value> {
    let mut items: Vec<&StoredPaymentMethod> = state
        .payment_methods
        .values()
        .filter(|p| p.object["customer"] == customer)
        .collect();
    items.sort_by_key(|p| std::cmp::Reverse(p.object["created"].as_i64().unwrap_or(0)));
    items.into_iter().map(|p| p.object.clone()).collect()
}

fn attach_payment_method(state: &mut GatewayState, ctx: &Ctx<'_>, pm_id: &str) -> Reply {
    ctx.only("customer customer_account expand")?;
    let customer = ctx
        .get("customer")
        .ok_or_else(|| ApiError::missing("customer"))?;
    if find_customer(state, customer).is_none() {
        return Err(ApiError::no_such(400, "customer", customer, "customer"));
    }
    if let Some(card) = test_card(pm_id) {
        // Like Stripe, attaching a test token creates a fresh PaymentMethod each time.
        let id = new_id("pm");
        let object = card_payment_method(&id, card, Some(customer), ctx.now);
        state.origins.insert(id.clone(), ctx.origin());
        state.payment_methods.insert(
            id,
            StoredPaymentMethod {
                object: object.clone(),
                card,
                detached: false,
            },
        );
        return Ok((200, object));
    }
    let pm = state
        .payment_methods
        .get_mut(pm_id)
        .ok_or_else(|| ApiError::no_such(404, "PaymentMethod", pm_id, "payment_method"))?;
    if pm.detached {
        return Err(ApiError::invalid(
            400,
            None,
            "This PaymentMethod was previously used without being attached to a Customer or was detached \
             from a Customer, and may not be used again.",
            Some("payment_method"),
        ));
    }
    match pm.object["customer"].as_str() {
        Some(current) if current == customer => Ok((200, pm.object.clone())),
        Some(_) => Err(ApiError::invalid(
            400,
            None,
            "The payment method you provided has already been attached to a customer.",
            Some("payment_method"),
        )),
        None => {
            pm.object["customer"] = json!(customer);
            Ok((200, pm.object.clone()))
        }
    }
}

fn detach_payment_method(state: &mut GatewayState, ctx: &Ctx<'_>, pm_id: &str) -> Reply {
    ctx.only(EXPAND_ONLY)?;
    let pm = state
        .payment_methods
        .get_mut(pm_id)
        .ok_or_else(|| ApiError::no_such(404, "PaymentMethod", pm_id, "payment_method"))?;
    if pm.object["customer"].is_null() {
        return Err(ApiError::invalid(
            400,
            Some("payment_method_unexpected_state"),
            "The payment method you provided is not attached to a customer so detachment is impossible.",
            None,
        ));
    }
    pm.object["customer"] = Value::Null;
    pm.detached = true;
    Ok((200, pm.object.clone()))
}

// ---------------------------------------------------------------------------------------------
// PaymentIntents and charges
// ---------------------------------------------------------------------------------------------

const PAYMENT_INTENT_PARAMS: &str = "allowed_payment_method_types amount amount_details \
     application_fee_amount automatic_payment_methods capture_method \
     confirm confirmation_method confirmation_token currency customer \
     customer_account description error_on_requires_action \
     excluded_payment_method_types expand hooks mandate mandate_data \
     metadata off_session on_behalf_of payment_details payment_method \
     payment_method_configuration payment_method_data \
     payment_method_options payment_method_types radar_options \
     receipt_email return_url setup_future_usage shipping \
     statement_descriptor statement_descriptor_suffix transfer_data \
     transfer_group use_stripe_sdk";

const CONFIRM_PARAMS: &str = "allowed_payment_method_types amount_details amount_to_confirm \
     capture_method confirmation_token error_on_requires_action \
     excluded_payment_method_types expand hooks mandate mandate_data \
     off_session payment_details payment_method payment_method_data \
     payment_method_options radar_options receipt_email return_url \
     setup_future_usage shipping use_stripe_sdk";

fn find_payment_intent<'a>(state: &'a GatewayState, id: &str) -> Result<&'a Value, ApiError> {
    state
        .payment_intents
        .iter()
        .find(|pi| pi["id"] == id)
        .ok_or_else(|| ApiError::no_such(404, "payment_intent", id, "intent"))
}

fn parse_amount(raw: Option<&str>) -> Result<i64, ApiError> {
    let raw = raw.ok_or_else(|| ApiError::missing("amount"))?;
    let amount: i64 = raw.parse().map_err(|_| {
        ApiError::invalid(
            400,
            Some("parameter_invalid_integer"),
            &format!("Invalid integer: {raw}"),
            Some("amount"),
        )
    })?;
    if amount < 1 {
        return Err(ApiError::invalid(
            400,
            Some("parameter_invalid_integer"),
            "This value must be greater than or equal to 1.",
            Some("amount"),
        ));
    }
    if amount > 99_999_999 {
        return Err(ApiError::invalid(
            400,
            Some("amount_too_large"),
            "Amount must be no more than 99999999 in the smallest currency unit.",
            Some("amount"),
        ));
    }
    Ok(amount)
}

fn parse_currency(raw: Option<&str>) -> Result<String, ApiError> {
    let raw = raw.ok_or_else(|| ApiError::missing("currency"))?;
    if raw.len() != 3 || !raw.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(ApiError::invalid(
            400,
            Some("parameter_invalid_string"),
            &format!(
                "Invalid currency: {}. Stripe currently supports ISO 4217 currency codes.",
                raw.to_lowercase()
            ),
            Some("currency"),
        ));
    }
    Ok(raw.to_lowercase())
}

/// Resolves `payment_method` for a charge: a PaymentMethod attached to `customer`, or (without a
/// customer) a test token, which becomes a fresh unattached PaymentMethod.
fn resolve_payment_method(
    state: &mut GatewayState,
    ctx: &Ctx<'_>,
    pm_id: &str,
    customer: Option<&str>,
) -> Result<String, ApiError> {
    if let Some(card) = test_card(pm_id) {
        if let Some(customer) = customer {
            return Err(ApiError::invalid(
                400,
                None,
                &format!(
                    "The provided PaymentMethod ({pm_id}) is not attached to the customer {customer}. \
                     Attach it to the customer first."
                ),
                Some("payment_method"),
            ));
        }
        let id = new_id("pm");
        let object = card_payment_method(&id, card, None, ctx.now);
        state.payment_methods.insert(
            id.clone(),
            StoredPaymentMethod {
                object,
                card,
                detached: false,
            },
        );
        return Ok(id);
    }
    let pm = state
        .payment_methods
        .get(pm_id)
        .ok_or_else(|| ApiError::no_such(400, "PaymentMethod", pm_id, "payment_method"))?;
    if pm.detached {
        return Err(ApiError::invalid(
            400,
            None,
            "The provided PaymentMethod was previously used with a PaymentIntent without Customer \
             attachment, shared with a connected account without Customer attachment, or was detached \
             from a Customer. It may not be used again. To use a PaymentMethod multiple times, you must \
             attach it to a Customer first.",
            Some("payment_method"),
        ));
    }
    let owner = pm.object["customer"].as_str();
    match (owner, customer) {
        (Some(owner), Some(customer)) if owner == customer => Ok(pm_id.to_string()),
        (None, None) => Ok(pm_id.to_string()),
        (Some(owner), None) => Err(ApiError::invalid(
            400,
            None,
            &format!(
                "The provided PaymentMethod is attached to customer {owner}. Pass customer={owner} to use it."
            ),
            Some("payment_method"),
        )),
        (_, Some(customer)) => Err(ApiError::invalid(
            400,
            None,
            &format!(
                "The provided PaymentMethod ({pm_id}) does not belong to the customer {customer}."
            ),
            Some("payment_method"),
        )),
    }
}

fn create_payment_intent(state: &mut GatewayState, ctx: &Ctx<'_>) -> Reply {
    ctx.only(PAYMENT_INTENT_PARAMS)?;
    let amount = parse_amount(ctx.get("amount"))?;
    let currency = parse_currency(ctx.get("currency"))?;
    // Stripe counts ISK and UGX in hundredths it does not charge: the amount must divide by 100.
    if ["isk", "ugx"].contains(&currency.as_str()) && amount % 100 != 0 {
        return Err(ApiError::invalid(
            400,
            Some("amount_not_divisible"),
            "Amounts in this currency must be evenly divisible by 100.",
            Some("amount"),
        ));
    }
    let confirm = ctx.bool("confirm")?.unwrap_or(false);
    let off_session = ctx.get("off_session");
    if off_session.is_some() && !confirm {
        return Err(ApiError::invalid(
            400,
            None,
            "You can only set `off_session` when `confirm` is true.",
            Some("off_session"),
        ));
    }
    if let Some(value) = off_session
        && !["true", "false", "one_off", "recurring"].contains(&value)
    {
        return Err(ApiError::invalid(
            400,
            None,
            &format!("Invalid off_session: {value}"),
            Some("off_session"),
        ));
    }
    let customer = ctx.get("customer").filter(|c| !c.is_empty());
    if let Some(customer) = customer
        && find_customer(state, customer).is_none()
    {
        return Err(ApiError::no_such(400, "customer", customer, "customer"));
    }
    let metadata = ctx.metadata()?;
    let capture_method = ctx.get("capture_method").unwrap_or("automatic_async");
    if !["automatic", "automatic_async", "manual"].contains(&capture_method) {
        return Err(ApiError::invalid(
            400,
            None,
            "Invalid capture_method: must be one of automatic, automatic_async, or manual",
            Some("capture_method"),
        ));
    }
    let payment_method = match ctx.get("payment_method").filter(|p| !p.is_empty()) {
        Some(pm) => Some(resolve_payment_method(state, ctx, pm, customer)?),
        None => None,
    };
    if confirm && payment_method.is_none() {
        return Err(ApiError::invalid(
            400,
            Some("payment_intent_unexpected_state"),
            "You cannot confirm this PaymentIntent because it's missing a payment method. You can either \
             update the PaymentIntent with a payment method and then confirm it again, or confirm it \
             again directly with a payment method.",
            None,
        ));
    }
    let mut types = ctx.list("payment_method_types");
    types.extend(ctx.list("allowed_payment_method_types"));
    if types.is_empty() {
        types.push("card".into());
    }
    let id = new_id("pi");
    let status = if payment_method.is_some() {
        "requires_confirmation"
    } else {
        "requires_payment_method"
    };
    let pi = json!({
        "id": id,
        "object": "payment_intent",
        "amount": amount,
        "amount_capturable": 0,
        "amount_details": { "tip": {} },
        "amount_received": 0,
        "application": null,
        "application_fee_amount": null,
        "automatic_payment_methods": null,
        "canceled_at": null,
        "cancellation_reason": null,
        "capture_method": capture_method,
        "client_secret": format!("{id}_secret_{}", random_alnum(25)),
        "confirmation_method": ctx.get("confirmation_method").unwrap_or("automatic"),
        "created": ctx.now,
        "currency": currency,
        "customer": customer,
        "customer_account": null,
        "description": ctx.get("description"),
        "excluded_payment_method_types": null,
        "last_payment_error": null,
        "latest_charge": null,
        "livemode": false,
        "metadata": metadata,
        "next_action": null,
        "on_behalf_of": null,
        "payment_method": payment_method,
        "payment_method_configuration_details": null,
        "payment_method_options": {
            "card": {
                "installments": null,
                "mandate_options": null,
                "network": null,
                "request_three_d_secure": "automatic",
            }
        },
        "payment_method_types": types,
        "processing": null,
        "receipt_email": ctx.get("receipt_email"),
        "review": null,
        "setup_future_usage": ctx.get("setup_future_usage"),
        "shipping": null,
        "source": null,
        "statement_descriptor": ctx.get("statement_descriptor"),
        "statement_descriptor_suffix": ctx.get("statement_descriptor_suffix"),
        "status": status,
        "transfer_data": null,
        "transfer_group": ctx.get("transfer_group"),
    });
    state.origins.insert(id.clone(), ctx.origin());
    state.payment_intents.push(pi);
    let index = state.payment_intents.len() - 1;
    if confirm {
        return run_charge(state, ctx, index);
    }
    Ok((
        200,
        expand(
            state,
            state.payment_intents[index].clone(),
            &ctx.expand(),
            "",
        ),
    ))
}

fn confirm_payment_intent(state: &mut GatewayState, ctx: &Ctx<'_>, id: &str) -> Reply {
    ctx.only(CONFIRM_PARAMS)?;
    find_payment_intent(state, id)?;
    let index = state
        .payment_intents
        .iter()
        .position(|pi| pi["id"] == id)
        .expect("found above");
    let pi = &state.payment_intents[index];
    let status = pi["status"].as_str().unwrap_or_default().to_string();
    if !["requires_payment_method", "requires_confirmation"].contains(&status.as_str()) {
        return Err(ApiError::invalid(
            400,
            Some("payment_intent_unexpected_state"),
            &format!(
                "This PaymentIntent's status is {status}, but it must be requires_payment_method or \
                 requires_confirmation to be confirmed."
            ),
            None,
        )
        .with("payment_intent", pi.clone()));
    }
    let customer = pi["customer"].as_str().map(str::to_string);
    let payment_method = match ctx.get("payment_method").filter(|p| !p.is_empty()) {
        Some(pm) => Some(resolve_payment_method(state, ctx, pm, customer.as_deref())?),
        None => state.payment_intents[index]["payment_method"]
            .as_str()
            .map(str::to_string),
    };
    let Some(payment_method) = payment_method else {
        return Err(ApiError::invalid(
            400,
            Some("payment_intent_unexpected_state"),
            "You cannot confirm this PaymentIntent because it's missing a payment method.",
            None,
        ));
    };
    state.payment_intents[index]["payment_method"] = json!(payment_method);
    run_charge(state, ctx, index)
}

fn cancel_payment_intent(state: &mut GatewayState, ctx: &Ctx<'_>, id: &str) -> Reply {
    ctx.only("cancellation_reason expand")?;
    find_payment_intent(state, id)?;
    let pi = state
        .payment_intents
        .iter_mut()
        .find(|pi| pi["id"] == id)
        .expect("found above");
    let status = pi["status"].as_str().unwrap_or_default().to_string();
    if ["succeeded", "canceled", "processing"].contains(&status.as_str()) {
        return Err(ApiError::invalid(
            400,
            Some("payment_intent_unexpected_state"),
            &format!(
                "You cannot cancel this PaymentIntent because it has a status of {status}. Only a \
                 PaymentIntent with one of the following statuses may be canceled: \
                 requires_payment_method, requires_capture, requires_confirmation, requires_action."
            ),
            None,
        ));
    }
    pi["status"] = json!("canceled");
    pi["canceled_at"] = json!(ctx.now);
    pi["cancellation_reason"] = ctx
        .get("cancellation_reason")
        .map_or(Value::Null, |r| json!(r));
    Ok((200, pi.clone()))
}

/// Charges the PaymentIntent at `index` with its payment method: success answers 200 with the
/// succeeded PaymentIntent; a decline answers 402 `card_error` carrying the failed PaymentIntent.
fn run_charge(state: &mut GatewayState, ctx: &Ctx<'_>, index: usize) -> Reply {
    let pi = state.payment_intents[index].clone();
    let pm_id = pi["payment_method"]
        .as_str()
        .expect("charge needs a payment method")
        .to_string();
    let stored = state
        .payment_methods
        .get(&pm_id)
        .expect("payment method resolved");
    let (card, pm_object) = (stored.card, stored.object.clone());
    let amount = pi["amount"].as_i64().unwrap_or(0);
    let charge_id = new_id("ch");
    let charge = charge_object(&charge_id, &pi, card, &pm_id, ctx.now);
    state.origins.insert(charge_id.clone(), ctx.origin());
    state.charges.insert(charge_id.clone(), charge);

    let updated = &mut state.payment_intents[index];
    updated["latest_charge"] = json!(charge_id);
    match &card.decline {
        None => {
            updated["status"] = json!("succeeded");
            updated["amount_received"] = json!(amount);
            updated["last_payment_error"] = Value::Null;
            let pi = updated.clone();
            Ok((200, expand(state, pi, &ctx.expand(), "")))
        }
        Some(decline) => {
            let mut error = Map::new();
            if let Some(advice) = decline.advice_code {
                error.insert("advice_code".into(), json!(advice));
            }
            error.insert("charge".into(), json!(charge_id));
            error.insert("code".into(), json!(decline.code));
            error.insert("decline_code".into(), json!(decline.decline_code));
            error.insert("doc_url".into(), json!(doc_url(decline.code)));
            error.insert("message".into(), json!(decline.message));
            if let Some(param) = decline.param {
                error.insert("param".into(), json!(param));
            }
            error.insert("payment_method".into(), pm_object.clone());
            error.insert("type".into(), json!("card_error"));
            updated["status"] = json!("requires_payment_method");
            updated["payment_method"] = Value::Null;
            updated["last_payment_error"] = Value::Object(error.clone());
            let pi = updated.clone();
            let mut err = ApiError {
                status: 402,
                fields: error,
            };
            err.fields.insert("payment_intent".into(), pi);
            Err(err)
        }
    }
}

fn charge_object(id: &str, pi: &Value, card: &TestCard, pm_id: &str, created: i64) -> Value {
    let amount = pi["amount"].as_i64().unwrap_or(0);
    let succeeded = card.decline.is_none();
    let outcome = match &card.decline {
        None => json!({
            "advice_code": null,
            "network_advice_code": null,
            "network_decline_code": null,
            "network_status": "approved_by_network",
            "reason": null,
            "risk_level": "normal",
            "risk_score": 22,
            "seller_message": "Payment complete.",
            "type": "authorized",
        }),
        Some(d) => json!({
            "advice_code": d.advice_code,
            "network_advice_code": null,
            "network_decline_code": null,
            "network_status": "declined_by_network",
            "reason": d.decline_code,
            "risk_level": "normal",
            "risk_score": 22,
            "seller_message": if d.decline_code == "generic_decline" {
                "The bank did not return any further details with this decline.".to_string()
            } else {
                format!("The bank returned the decline code `{}`.", d.decline_code)
            },
            "type": "issuer_declined",
        }),
    };
    let head = json!({
        "id": id,
        "object": "charge",
        "amount": amount,
        "amount_captured": if succeeded { amount } else { 0 },
        "amount_refunded": 0,
        "application": null,
        "application_fee": null,
        "application_fee_amount": null,
        "balance_transaction": if succeeded { json!(new_id("txn")) } else { Value::Null },
        "billing_details": empty_billing_details(),
        "calculated_statement_descriptor": "SETTLED TEST",
        "captured": succeeded,
        "created": created,
        "currency": pi["currency"],
        "customer": pi["customer"],
        "description": pi["description"],
        "destination": null,
        "dispute": null,
        "disputed": false,
    });
    let rest = json!({
        "failure_balance_transaction": null,
        "failure_code": card.decline.as_ref().map(|d| d.code),
        "failure_message": card.decline.as_ref().map(|d| d.message),
        "fraud_details": {},
        "livemode": false,
        "metadata": pi["metadata"],
        "on_behalf_of": null,
        "outcome": outcome,
        "paid": succeeded,
        "payment_intent": pi["id"],
        "payment_method": pm_id,
        "payment_method_details": card_details(card, amount, succeeded),
        "radar_options": {},
        "receipt_email": pi["receipt_email"],
        "receipt_number": null,
        "receipt_url": format!("https://pay.stripe.com/receipts/payment/{}", random_alnum(40)),
        "refunded": false,
        "review": null,
        "shipping": null,
        "source": null,
        "source_transfer": null,
        "statement_descriptor": pi["statement_descriptor"],
        "statement_descriptor_suffix": pi["statement_descriptor_suffix"],
        "status": if succeeded { "succeeded" } else { "failed" },
        "transfer_data": null,
        "transfer_group": null,
    });
    merge(head, rest)
}

/// `a` with `b`'s fields added (json! objects beyond ~40 keys exceed the default macro recursion limit).
fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

fn empty_billing_details() -> Value {
    json!({
        "address": {
            "city": null, "country": null, "line1": null, "line2": null, "postal_code": null, "state": null,
        },
        "email": null,
        "name": null,
        "phone": null,
        "tax_id": null,
    })
}

fn card_details(card: &TestCard, amount: i64, succeeded: bool) -> Value {
    json!({
        "card": {
            "amount_authorized": if succeeded { json!(amount) } else { Value::Null },
            "authorization_code": if succeeded { json!("123456") } else { Value::Null },
            "brand": card.brand,
            "checks": { "address_line1_check": null, "address_postal_code_check": null, "cvc_check": null },
            "country": "US",
            "exp_month": 12,
            "exp_year": exp_year(),
            "extended_authorization": { "status": "disabled" },
            "fingerprint": fingerprint(card.number),
            "funding": card.funding,
            "incremental_authorization": { "status": "unavailable" },
            "installments": null,
            "last4": last4(card),
            "mandate": null,
            "multicapture": { "status": "unavailable" },
            "network": card.brand,
            "network_token": { "used": false },
            "network_transaction_id": random_digits(15),
            "overcapture": { "maximum_amount_capturable": amount, "status": "unavailable" },
            "regulated_status": "unregulated",
            "three_d_secure": null,
            "wallet": null,
        },
        "type": "card",
    })
}

/// Replaces id strings by their objects for each `expand` path (`latest_charge`, `customer`,
/// `payment_method`, `payment_intent`; list endpoints use a `data.` prefix).
fn expand(state: &GatewayState, mut object: Value, paths: &[String], prefix: &str) -> Value {
    for path in paths {
        let Some(path) = path.strip_prefix(prefix) else {
            continue;
        };
        expand_path(state, &mut object, &path.split('.').collect::<Vec<_>>());
    }
    object
}

fn expand_path(state: &GatewayState, object: &mut Value, path: &[&str]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Some(field) = object.get_mut(*first) else {
        return;
    };
    if let Some(found) = field.as_str().and_then(|id| lookup(state, id)) {
        *field = found;
    }
    expand_path(state, field, rest);
}

fn lookup(state: &GatewayState, id: &str) -> Option<Value> {
    let prefix = id.split('_').next()?;
    match prefix {
        "ch" => state.charges.get(id).cloned(),
        "pm" => state.payment_methods.get(id).map(|p| p.object.clone()),
        "cus" => find_customer(state, id).cloned(),
        "pi" => state
            .payment_intents
            .iter()
            .find(|p| p["id"] == id)
            .cloned(),
        "re" => state.refunds.iter().find(|r| r["id"] == id).cloned(),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Search
// ---------------------------------------------------------------------------------------------

#[derive(Debug, PartialEq)]
struct Clause {
    negated: bool,
    field: String,
    /// For `metadata['key']`.
    metadata_key: Option<String>,
    op: String,
    value: String,
}

/// Parses the subset of Stripe's search query language the daemon needs:
/// `field:'value'`, `metadata['key']:'value'`, numeric `amount>100`, `-` negation, joined by
/// `AND` or `OR` (not both). Returns the clauses and whether they are OR-ed.
fn parse_search_query(query: &str) -> Result<(Vec<Clause>, bool), String> {
    let mut clauses = Vec::new();
    let mut joiners = Vec::new();
    let chars: Vec<char> = query.chars().collect();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= chars.len() {
            break;
        }
        if !clauses.is_empty() {
            let word: String = chars[i..]
                .iter()
                .take_while(|c| !c.is_whitespace())
                .collect();
            if word != "AND" && word != "OR" {
                return Err(format!("Expected AND or OR at position {i} of the query"));
            }
            joiners.push(word.clone());
            i += word.len();
            skip_ws(&mut i);
        }
        let negated = chars.get(i) == Some(&'-');
        if negated {
            i += 1;
        }
        let field: String = chars[i..]
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || **c == '_' || **c == '.')
            .collect();
        if field.is_empty() {
            return Err(format!(
                "Expected a field name at position {i} of the query"
            ));
        }
        i += field.chars().count();
        let mut metadata_key = None;
        if chars.get(i) == Some(&'[') {
            i += 1;
            let (key, next) = quoted(&chars, i)?;
            i = next;
            if chars.get(i) != Some(&']') {
                return Err("Expected ] after the metadata key".into());
            }
            i += 1;
            metadata_key = Some(key);
        }
        let op: String = chars[i..]
            .iter()
            .take_while(|c| matches!(c, ':' | '<' | '>' | '='))
            .collect();
        if ![":", ">", "<", ">=", "<="].contains(&op.as_str()) {
            return Err(format!("Expected an operator after {field}"));
        }
        i += op.len();
        let value = if matches!(chars.get(i), Some('\'') | Some('"')) {
            let (v, next) = quoted(&chars, i)?;
            i = next;
            v
        } else {
            let v: String = chars[i..]
                .iter()
                .take_while(|c| !c.is_whitespace())
                .collect();
            i += v.chars().count();
            v
        };
        clauses.push(Clause {
            negated,
            field,
            metadata_key,
            op,
            value,
        });
    }
    if clauses.is_empty() {
        return Err("The search query is empty.".into());
    }
    if joiners.iter().any(|j| j == "AND") && joiners.iter().any(|j| j == "OR") {
        return Err("A search query cannot combine AND and OR.".into());
    }
    Ok((clauses, joiners.first().is_some_and(|j| j == "OR")))
}

fn quoted(chars: &[char], start: usize) -> Result<(String, usize), String> {
    let quote = *chars.get(start).ok_or("Expected a quoted string")?;
    if quote != '\'' && quote != '"' {
        return Err("Expected a quoted string".into());
    }
    let mut out = String::new();
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if i + 1 < chars.len() => {
                out.push(chars[i + 1]);
                i += 2;
            }
            c if c == quote => return Ok((out, i + 1)),
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Err("Unterminated quoted string in the search query".into())
}

fn clause_matches(pi: &Value, clause: &Clause) -> Result<bool, String> {
    let actual = match (clause.field.as_str(), &clause.metadata_key) {
        ("metadata", Some(key)) => pi["metadata"].get(key).cloned().unwrap_or(Value::Null),
        ("amount" | "created" | "currency" | "customer" | "status", None) => {
            pi[clause.field.as_str()].clone()
        }
        _ => {
            return Err(format!(
                "Field `{}` is an unsupported search field for resource `payment_intents`. See \
                 http://stripe.com/docs/search#query-fields-for-payment-intents for a list of supported fields.",
                clause.field
            ));
        }
    };
    let hit = match clause.op.as_str() {
        ":" => match &actual {
            Value::String(s) => s == &clause.value,
            Value::Number(n) => n.to_string() == clause.value,
            _ => clause.value == "null",
        },
        op => {
            let (Some(a), Ok(v)) = (actual.as_i64(), clause.value.parse::<i64>()) else {
                return Err(format!(
                    "Field `{}` does not support the {op} operator.",
                    clause.field
                ));
            };
            match op {
                ">" => a > v,
                "<" => a < v,
                ">=" => a >= v,
                _ => a <= v,
            }
        }
    };
    Ok(hit != clause.negated)
}

fn search_payment_intents(state: &GatewayState, ctx: &Ctx<'_>) -> Reply {
    ctx.only("query limit page expand")?;
    let query = ctx.get("query").ok_or_else(|| ApiError::missing("query"))?;
    let bad_query = |message: String| ApiError::invalid(400, None, &message, Some("query"));
    let (clauses, any) = parse_search_query(query).map_err(bad_query)?;
    let mut hits = Vec::new();
    for pi in state.payment_intents.iter().rev() {
        let mut results = Vec::with_capacity(clauses.len());
        for clause in &clauses {
            results.push(clause_matches(pi, clause).map_err(bad_query)?);
        }
        let hit = if any {
            results.iter().any(|r| *r)
        } else {
            results.iter().all(|r| *r)
        };
        if hit {
            hits.push(expand(state, pi.clone(), &ctx.expand(), "data."));
        }
    }
    let limit = ctx.limit()?;
    let offset = match ctx.get("page") {
        Some(page) => page
            .strip_prefix("page_")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| ApiError::invalid(400, None, "Invalid page token.", Some("page")))?,
        None => 0,
    };
    let data: Vec<Value> = hits.iter().skip(offset).take(limit).cloned().collect();
    let has_more = offset + data.len() < hits.len();
    let next_page = has_more.then(|| format!("page_{}", offset + data.len()));
    Ok((
        200,
        json!({
            "object": "search_result",
            "data": data,
            "has_more": has_more,
            "next_page": next_page,
            "url": "/v1/payment_intents/search",
        }),
    ))
}

// ---------------------------------------------------------------------------------------------
// Refunds
// ---------------------------------------------------------------------------------------------

fn create_refund(state: &mut GatewayState, ctx: &Ctx<'_>) -> Reply {
    ctx.only(
        "amount charge currency customer expand instructions_email metadata \
             origin payment_intent reason refund_application_fee reverse_transfer",
    )?;
    let charge_id = match (ctx.get("charge"), ctx.get("payment_intent")) {
        (Some(charge), _) => {
            if !state.charges.contains_key(charge) {
                return Err(ApiError::no_such(400, "charge", charge, "charge"));
            }
            charge.to_string()
        }
        (None, Some(pi_id)) => {
            let pi = state
                .payment_intents
                .iter()
                .find(|p| p["id"] == pi_id)
                .ok_or_else(|| ApiError::no_such(400, "payment_intent", pi_id, "payment_intent"))?;
            match (pi["status"].as_str(), pi["latest_charge"].as_str()) {
                (Some("succeeded"), Some(charge)) => charge.to_string(),
                _ => {
                    return Err(ApiError::invalid(
                        400,
                        Some("charge_not_refundable"),
                        &format!(
                            "This PaymentIntent ({pi_id}) does not have a successful charge to refund."
                        ),
                        Some("payment_intent"),
                    ));
                }
            }
        }
        (None, None) => {
            return Err(ApiError::invalid(
                400,
                Some("parameter_missing"),
                "One of the following params should be provided for this request: payment_intent or charge.",
                None,
            ));
        }
    };
    if let Some(reason) = ctx.get("reason")
        && !["duplicate", "fraudulent", "requested_by_customer"].contains(&reason)
    {
        return Err(ApiError::invalid(
            400,
            None,
            "Invalid reason: must be one of duplicate, fraudulent, or requested_by_customer",
            Some("reason"),
        ));
    }
    let metadata = ctx.metadata()?;
    let charge = state.charges.get_mut(&charge_id).expect("charge checked");
    if charge["status"] != "succeeded" {
        return Err(ApiError::invalid(
            400,
            Some("charge_not_refundable"),
            &format!("Charge {charge_id} has not succeeded and cannot be refunded."),
            Some("charge"),
        ));
    }
    let captured = charge["amount_captured"].as_i64().unwrap_or(0);
    let refunded = charge["amount_refunded"].as_i64().unwrap_or(0);
    let remaining = captured - refunded;
    if remaining <= 0 {
        return Err(ApiError::invalid(
            400,
            Some("charge_already_refunded"),
            &format!("Charge {charge_id} has already been refunded."),
            None,
        ));
    }
    let amount = match ctx.get("amount") {
        Some(raw) => parse_amount(Some(raw))?,
        None => remaining,
    };
    if amount > remaining {
        return Err(ApiError::invalid(
            400,
            Some("amount_too_large"),
            &format!(
                "Refund amount ({amount}) is greater than unrefunded amount on charge ({remaining})"
            ),
            Some("amount"),
        ));
    }
    charge["amount_refunded"] = json!(refunded + amount);
    charge["refunded"] = json!(refunded + amount == captured);
    let id = new_id("re");
    let refund = json!({
        "id": id,
        "object": "refund",
        "amount": amount,
        "balance_transaction": new_id("txn"),
        "charge": charge_id,
        "created": ctx.now,
        "currency": charge["currency"],
        "destination_details": {
            "card": {
                "reference": null,
                "reference_status": "pending",
                "reference_type": "acquirer_reference_number",
                "type": "refund",
            },
            "type": "card",
        },
        "metadata": metadata,
        "payment_intent": charge["payment_intent"],
        "reason": ctx.get("reason"),
        "receipt_number": null,
        "source_transfer_reversal": null,
        "status": "succeeded",
        "transfer_reversal": null,
    });
    state.origins.insert(id, ctx.origin());
    state.refunds.push(refund.clone());
    Ok((200, refund))
}

// ---------------------------------------------------------------------------------------------
// SetupIntents: saving a card from the customer's browser
// ---------------------------------------------------------------------------------------------

/// The stand-in Stripe.js served at `/v3/`.
const STRIPE_JS: &str = include_str!("stripe_js_stand_in.js");

fn create_setup_intent(state: &mut GatewayState, ctx: &Ctx<'_>) -> Reply {
    ctx.only(
        "automatic_payment_methods confirm customer description expand metadata \
         payment_method payment_method_options payment_method_types usage",
    )?;
    let customer = ctx.get("customer");
    if let Some(c) = customer
        && find_customer(state, c).is_none()
    {
        return Err(ApiError::no_such(400, "customer", c, "customer"));
    }
    let usage = ctx.get("usage").unwrap_or("off_session");
    if usage != "off_session" && usage != "on_session" {
        return Err(ApiError::invalid(
            400,
            Some("parameter_invalid_string"),
            "Invalid usage.",
            Some("usage"),
        ));
    }
    let types = ctx.list("payment_method_types");
    let id = new_id("seti");
    let si = json!({
        "id": id,
        "object": "setup_intent",
        "application": null,
        "automatic_payment_methods": null,
        "cancellation_reason": null,
        "client_secret": format!("{id}_secret_{}", random_alnum(24)),
        "created": ctx.now,
        "customer": customer,
        "customer_account": null,
        "description": ctx.get("description"),
        "excluded_payment_method_types": null,
        "flow_directions": null,
        "last_setup_error": null,
        "latest_attempt": null,
        "livemode": false,
        "mandate": null,
        "metadata": ctx.metadata()?,
        "next_action": null,
        "on_behalf_of": null,
        "payment_method": null,
        "payment_method_configuration_details": null,
        "payment_method_options": { "card": { "mandate_options": null, "network": null,
                                              "request_three_d_secure": "automatic" } },
        "payment_method_types": if types.is_empty() { vec!["card".to_string()] } else { types },
        "single_use_mandate": null,
        "status": "requires_payment_method",
        "usage": usage,
    });
    state.origins.insert(id, ctx.origin());
    state.setup_intents.push(si.clone());
    Ok((200, si))
}

/// The browser's confirmation (Stripe.js): the card goes into a new PaymentMethod attached to the
/// SetupIntent's customer; a declining test card is a 402 card error, as at Stripe.
fn confirm_setup_intent(state: &mut GatewayState, ctx: &Ctx<'_>, id: &str) -> Reply {
    ctx.only(
        "client_secret expand key payment_method payment_method_data return_url use_stripe_sdk",
    )?;
    let index = state
        .setup_intents
        .iter()
        .position(|s| s["id"] == id)
        .ok_or_else(|| ApiError::no_such(404, "setupintent", id, "intent"))?;
    let si = state.setup_intents[index].clone();
    if ctx.get("key").is_some() && ctx.get("client_secret") != si["client_secret"].as_str() {
        return Err(ApiError::invalid(
            400,
            Some("resource_missing"),
            &format!("No such setupintent: '{id}'"),
            Some("intent"),
        ));
    }
    if si["status"] == "succeeded" {
        return Err(ApiError::invalid(
            400,
            Some("setup_intent_unexpected_state"),
            "You cannot confirm this SetupIntent because it has already succeeded.",
            None,
        ));
    }
    let number = ctx.get("payment_method_data[card][number]").unwrap_or("");
    let card = TEST_CARDS
        .iter()
        .find(|c| c.number == number)
        .ok_or_else(|| {
            ApiError::plain(402, "card_error", "Your card number is incorrect.")
                .with("code", json!("incorrect_number"))
                .with("param", json!("number"))
        })?;
    if let Some(d) = &card.decline {
        return Err(ApiError::plain(402, "card_error", d.message)
            .with("code", json!(d.code))
            .with("decline_code", json!(d.decline_code)));
    }
    let pm_id = new_id("pm");
    let customer = si["customer"].as_str().map(str::to_string);
    let object = card_payment_method(&pm_id, card, customer.as_deref(), ctx.now);
    state.payment_methods.insert(
        pm_id.clone(),
        StoredPaymentMethod {
            object,
            card,
            detached: false,
        },
    );
    let si = &mut state.setup_intents[index];
    si["status"] = json!("succeeded");
    si["payment_method"] = json!(pm_id);
    Ok((200, si.clone()))
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn random_alnum(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn random_digits(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect()
}

fn new_id(prefix: &str) -> String {
    new_id_len(prefix, 24)
}

fn new_id_len(prefix: &str, len: usize) -> String {
    format!("{prefix}_{}", random_alnum(len))
}

/// Decodes `application/x-www-form-urlencoded` (also used for query strings): `&`-separated pairs,
/// `+` as space, `%XX` escapes; keys keep Stripe's bracket notation as sent (`metadata[invoice_id]`).
fn parse_form(input: &str) -> Vec<(String, String)> {
    input
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_stripe_form_bodies() {
        let params = parse_form(
            "amount=1999&metadata%5Binvoice_id%5D=in_1&expand[0]=latest_charge&description=a+b%2Bc%",
        );
        assert_eq!(
            params,
            vec![
                ("amount".to_string(), "1999".to_string()),
                ("metadata[invoice_id]".to_string(), "in_1".to_string()),
                ("expand[0]".to_string(), "latest_charge".to_string()),
                ("description".to_string(), "a b+c%".to_string()),
            ]
        );
        assert_eq!(percent_decode("%E2%82%AC%2"), "€%2");
    }

    #[test]
    fn signs_like_stripe() {
        let header = sign_payload("whsec_test", "{}", 1_700_000_000);
        let mut mac = Hmac::<Sha256>::new_from_slice(b"whsec_test").unwrap();
        mac.update(b"1700000000.{}");
        assert_eq!(
            header,
            format!(
                "t=1700000000,v1={}",
                hex::encode(mac.finalize().into_bytes())
            )
        );
    }

    #[test]
    fn parses_search_queries() {
        let (clauses, any) =
            parse_search_query("metadata['invoice_id']:'in_x' AND -status:\"canceled\"").unwrap();
        assert!(!any);
        assert_eq!(clauses[0].metadata_key.as_deref(), Some("invoice_id"));
        assert_eq!(clauses[0].value, "in_x");
        assert!(clauses[1].negated);
        assert!(parse_search_query("amount>1 AND status:'x' OR currency:'usd'").is_err());
        let pi = json!({"metadata": {"invoice_id": "in_x"}, "status": "succeeded", "amount": 500});
        assert!(clause_matches(&pi, &clauses[0]).unwrap());
        assert!(clause_matches(&pi, &clauses[1]).unwrap());
        let (amount, _) = parse_search_query("amount>=500").unwrap();
        assert!(clause_matches(&pi, &amount[0]).unwrap());
    }

    #[test]
    fn knows_the_test_cards() {
        assert_eq!(
            test_card("pm_card_4000000000000341").unwrap().token,
            "pm_card_chargeCustomerFail"
        );
        assert_eq!(
            test_card("pm_card_4000000000009995").unwrap().token,
            "pm_card_chargeDeclinedInsufficientFunds"
        );
        assert_eq!(last4(test_card("pm_card_mastercard").unwrap()), "4444");
        assert!(test_card("pm_unknown").is_none());
    }
}
