//! Counting what AWS bills: every SQS and SNS request the bus sends, each HTTP attempt (retries
//! included), by operation. An SDK interceptor counts each attempt just before it goes out, into
//! two places: a map the bench reads ([`Requests::snapshot`]) and the Prometheus family a service
//! registers for `/metrics` ([`Requests::metric`]).

use crate::observe::metrics::OperationLabels;
use aws_sdk_sqs::config::ConfigBag;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The SQS and SNS requests a bus (and every clone of it) has sent, by operation.
#[derive(Clone, Debug, Default)]
pub struct Requests {
    by_operation: Arc<Mutex<BTreeMap<String, u64>>>,
    metric: Family<OperationLabels, Counter>,
}

impl Requests {
    /// Requests so far, by `Service.Operation` (e.g. `SQS.ReceiveMessage`).
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.by_operation.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// All requests so far.
    pub fn total(&self) -> u64 {
        self.snapshot().values().sum()
    }

    /// The Prometheus family (`saga_bus_requests_total{operation}`) a service registers.
    pub fn metric(&self) -> Family<OperationLabels, Counter> {
        self.metric.clone()
    }

    fn count(&self, operation: String) {
        self.metric
            .get_or_create(&OperationLabels {
                operation: operation.clone(),
            })
            .inc();
        if let Ok(mut map) = self.by_operation.lock() {
            *map.entry(operation).or_default() += 1;
        }
    }
}

impl Intercept for Requests {
    fn name(&self) -> &'static str {
        "BusRequests"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = cfg
            .load::<Metadata>()
            .map_or_else(|| "unknown".to_owned(), |m| format!("{}.{}", m.service(), m.name()));
        self.count(operation);
        Ok(())
    }
}
