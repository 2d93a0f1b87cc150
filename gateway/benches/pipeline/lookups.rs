//! An operator lookup at idle against what it costs on the bus: one SQS hop (the query) plus one
//! reply hop, measured in the same run on the same stack. Self-contained, for the bench to call:
//! `lookups::measure(&system, samples).await` with a `System` at rest (nothing else in flight).

use std::time::{Duration, Instant};
use testkit::{OPERATOR_TOKEN, System};
use utility::messaging::bus::Outgoing;

/// Medians, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct LookupLatency {
    /// `GET /api/customers/{id}/points` through the gateway, the transaction-api and back.
    pub lookup_ms: f64,
    /// One message sent, then received by a waiting long poll (and deleted): one hop.
    pub hop_ms: f64,
    /// The first lookup after the services started, kept out of the median: it alone pays
    /// what happens once per process (the responder's first statements on its connection, the
    /// gateway's reply poller starting, new connections to the bus).
    pub first_ms: f64,
}

impl LookupLatency {
    /// The lookup against the two hops it is made of (the target: at most 1.5).
    pub fn ratio(&self) -> f64 {
        self.lookup_ms / (2.0 * self.hop_ms)
    }
}

/// The bench's median (the mean of the middle two for an even count), in milliseconds.
fn median_ms(samples: &[Duration]) -> f64 {
    super::median(samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect())
}

/// The operator's client, on a thread and a runtime of its own. An operator's browser or script
/// is not one of the services' tasks; in the bench's runtime (two workers, the three services
/// in it) its read of the answer would wait for a worker behind the services' own work after a
/// reply (their deletes and next receives), which on a loaded machine added more to the
/// lookup's time than the gateway spent between the reply and the answer.
struct Operator {
    requests: Option<std::sync::mpsc::Sender<Request>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A lookup to make: the URL, and where its time goes.
type Request = (String, tokio::sync::oneshot::Sender<Duration>);

impl Operator {
    fn start() -> Self {
        let (requests, incoming) = std::sync::mpsc::channel::<Request>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("operator runtime");
            let http = reqwest::Client::builder()
                .pool_idle_timeout(Duration::from_secs(5))
                .build()
                .expect("HTTP client");
            for (n, (url, answer)) in incoming.into_iter().enumerate() {
                let took = runtime.block_on(async {
                    let started = Instant::now();
                    let response = http
                        .get(&url)
                        .bearer_auth(OPERATOR_TOKEN)
                        .send()
                        .await
                        .expect("gateway answers");
                    let took = started.elapsed();
                    assert_eq!(response.status().as_u16(), 200, "lookup {n}");
                    took
                });
                let _ = answer.send(took);
            }
        });
        Self {
            requests: Some(requests),
            thread: Some(thread),
        }
    }

    /// One lookup, timed until the gateway's answer is in.
    async fn lookup(&self, url: &str) -> Duration {
        let (answer, took) = tokio::sync::oneshot::channel();
        let requests = self.requests.as_ref().expect("operator running");
        requests.send((url.to_owned(), answer)).expect("operator thread");
        took.await.expect("lookup answered (see the operator thread's panic)")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One hop on `queue`: from the send call to the waiting long poll returning the message.
async fn hop(system: &System, queue: &str, correlation: &str, n: usize) -> Duration {
    let message = Outgoing {
        id: format!("hop-{n}"),
        message_type: "Hop".to_owned(),
        correlation_id: correlation.to_owned(),
        body: "{}".to_owned(),
        traceparent: None,
        extra_attributes: Vec::new(),
    };
    let receiving = system.bus.receive(queue, 20);
    let started = Instant::now();
    let (received, sent) = tokio::join!(receiving, async {
        // The long poll is waiting before the message goes out.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let at = Instant::now();
        system.bus.send_batch(queue, &[message]).await.expect("send");
        at
    });
    let received = received.expect("receive");
    let arrived = started.elapsed() - sent.duration_since(started);
    let receipts: Vec<&str> = received.iter().map(|r| r.receipt_handle.as_str()).collect();
    system.bus.delete_batch(queue, &receipts).await.expect("delete");
    arrived
}

/// `samples` lookups one after another, then `samples` hops on a queue nobody else reads (the
/// replies' dead-letter queue of the same stack), interleaved so the emulator's drift hits both.
/// One lookup and one hop go first, untimed for the medians: the target is the p50 at idle, and
/// in a smoke run of two samples the first lookup after start would be half of it.
pub async fn measure(system: &System, samples: usize) -> LookupLatency {
    let customer = uuid::Uuid::now_v7().to_string();
    let url = system.url(&format!("/api/customers/{customer}/points"));
    let queue = system.queue_url("GatewayRepliesDlqUrl");
    let operator = Operator::start();
    let first = operator.lookup(&url).await;
    hop(system, &queue, &customer, 0).await;
    let (mut lookups, mut hops) = (Vec::with_capacity(samples), Vec::with_capacity(samples));
    for n in 1..=samples {
        lookups.push(operator.lookup(&url).await);
        hops.push(hop(system, &queue, &customer, n).await);
    }
    LookupLatency {
        lookup_ms: median_ms(&lookups),
        hop_ms: median_ms(&hops),
        first_ms: first.as_secs_f64() * 1000.0,
    }
}
