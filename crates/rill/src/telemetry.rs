//! Logging and tracing for the `rill` command: human-readable logs on stderr filtered by
//! `RILL_LOG` (default `warn`), and, when `--otlp-endpoint` / `RILL_OTLP_ENDPOINT` is given,
//! every request's span (and the events inside it) exported to an OpenTelemetry collector over
//! OTLP/HTTP (protobuf), batched on a background thread. The returned guard flushes the batch
//! on exit.

use anyhow::{Context, Result};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Flushes and stops the span exporter when dropped.
pub struct TelemetryGuard(Option<SdkTracerProvider>);

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("rill: flushing OpenTelemetry spans failed: {e}");
            }
        }
    }
}

/// Installs the global subscriber.
pub fn init(otlp_endpoint: Option<&str>) -> Result<TelemetryGuard> {
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(
            EnvFilter::try_from_env("RILL_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
        );
    let Some(endpoint) = otlp_endpoint else {
        tracing_subscriber::registry().with(fmt).init();
        return Ok(TelemetryGuard(None));
    };
    let url = format!(
        "{}/v1/traces",
        endpoint
            .trim_end_matches('/')
            .trim_end_matches("/v1/traces")
    );
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url.clone())
        .with_headers(Default::default())
        .build()
        .with_context(|| format!("OTLP exporter for {url}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("rill")
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("rill"))
        .with_filter(
            Targets::new()
                .with_target("rill_server", LevelFilter::INFO)
                .with_target("rill_scheduler", LevelFilter::INFO),
        );
    tracing_subscriber::registry().with(fmt).with(otel).init();
    Ok(TelemetryGuard(Some(provider)))
}
