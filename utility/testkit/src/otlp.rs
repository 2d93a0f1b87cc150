//! An OTLP/HTTP (JSON) receiver in the harness's process, for tests of what the services export.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use serde_json::Value;
use std::sync::{Arc, Mutex};

/// Spans received, flattened: one object per span with its service's name under `service`.
#[derive(Clone, Default)]
pub struct Collector(Arc<Mutex<Vec<Value>>>);

impl Collector {
    pub fn spans(&self) -> Vec<Value> {
        self.0.lock().unwrap().clone()
    }

    /// Serves `/v1/traces` on a loopback port; returns the endpoint to export to.
    pub(crate) async fn serve(&self) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(self.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((endpoint, task))
    }
}

async fn receive(State(collector): State<Collector>, body: Bytes) -> &'static str {
    let Ok(export) = serde_json::from_slice::<Value>(&body) else {
        return "{}";
    };
    let mut spans = collector.0.lock().unwrap();
    for resource in export["resourceSpans"].as_array().into_iter().flatten() {
        let service = resource["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["key"] == "service.name")
            .and_then(|a| a["value"]["stringValue"].as_str())
            .unwrap_or("")
            .to_owned();
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                let mut span = span.clone();
                span["service"] = Value::String(service.clone());
                spans.push(span);
            }
        }
    }
    "{}"
}
