//! OpenTelemetry traces (Tyk 5's `opentelemetry`): a server span per request an API answers,
//! continuing the client's W3C `traceparent`, with spans for the key lookup, the limits and
//! the upstream call; the upstream call's context goes upstream in `traceparent`. Spans are
//! exported over OTLP (gRPC or HTTP) by the SDK's batch processor, on a thread and runtime of
//! their own: off the request path, and free to finish an export when the node drops its
//! tracer (the SDK's shutdown waits for the processor, which would never run were it on the
//! runtime doing the waiting).
//!
//! The queue's bound is kept here, not by the SDK, so that what is dropped can be counted:
//! a span is pending from its end until its export is over, and a span that would exceed
//! `max_queue_size` pending spans is dropped (the SDK's own queue, as large, never fills).
//!
//! Spans are made with explicit times once each step is over (the pipeline notes when each
//! began and ended), so no span is carried through the pipeline's code.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanKind, Status, TraceContextExt, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
    SpanProcessor,
};

use crate::config::OpenTelemetryConfig;

/// The OpenTelemetry SDK's defaults, which Tyk keeps for a `span_batch_config` field left 0.
const DEFAULT_QUEUE: usize = 2048;
const DEFAULT_BATCH: usize = 512;
const DEFAULT_BATCH_TIMEOUT_SECS: u64 = 5;

/// The node's tracer. Dropped, it shuts the SDK down (exporting what is queued), then stops
/// the exporter's thread: fields drop in this order.
pub struct Tracing {
    _provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
    queue: Arc<SpanQueue>,
    _exporter_thread: tokio::sync::oneshot::Sender<()>,
}

/// Spans between their end and their export's end, and spans lost.
#[derive(Debug)]
struct SpanQueue {
    bound: usize,
    pending: AtomicUsize,
    /// Dropped because the queue was full, or because their export failed.
    dropped: AtomicU64,
}

/// The SDK's batch processor behind the queue's bound.
#[derive(Debug)]
struct BoundedProcessor<P> {
    queue: Arc<SpanQueue>,
    next: P,
}

impl<P: SpanProcessor> SpanProcessor for BoundedProcessor<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.next.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.queue.pending.fetch_add(1, Relaxed) >= self.queue.bound {
            self.queue.pending.fetch_sub(1, Relaxed);
            self.queue.dropped.fetch_add(1, Relaxed);
            return;
        }
        self.next.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.next.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.next.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.next.set_resource(resource);
    }
}

/// The OTLP exporter, releasing each batch's places in the queue once it is sent (or lost).
#[derive(Debug)]
struct ReleasingExporter<E> {
    queue: Arc<SpanQueue>,
    next: E,
}

impl<E: SpanExporter> SpanExporter for ReleasingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let count = batch.len();
        let sent = self.next.export(batch).await;
        self.queue.pending.fetch_sub(count, Relaxed);
        if sent.is_err() {
            self.queue.dropped.fetch_add(count as u64, Relaxed);
        }
        sent
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.next.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.next.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.next.set_resource(resource);
    }
}

/// When a pipeline step ran, for its span.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub began: SystemTime,
    pub ended: SystemTime,
}

/// One request's trace: its server span, begun when it was routed.
pub struct RequestTrace {
    span: opentelemetry_sdk::trace::Span,
    context: Context,
}

impl Tracing {
    /// Starts the exporter and the batch processor on a thread of their own.
    pub fn start(config: &OpenTelemetryConfig) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("otel-export".into())
            .spawn(move || {
                let _ = runtime.block_on(stopped);
            })
            .map_err(|e| e.to_string())?;
        // The exporter's client and the processor's task belong to that runtime.
        let _in_exporter_runtime = handle.enter();
        let timeout = Duration::from_secs(config.connection_timeout.max(1));
        let endpoint = config.endpoint.as_str();
        let exporter = match config.exporter.as_str() {
            "http" => {
                let mut url = if endpoint.contains("://") {
                    endpoint.to_owned()
                } else {
                    format!("http://{endpoint}")
                };
                // Tyk's (Go's) exporter posts to /v1/traces under a bare host:port.
                let path = url.split_once("://").map_or("", |(_, rest)| rest);
                if !path.contains('/') || path.ends_with('/') {
                    url = format!("{}/v1/traces", url.trim_end_matches('/'));
                }
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_endpoint(url)
                    .with_timeout(timeout)
                    .with_headers(config.headers.clone().into_iter().collect())
                    .build()
            }
            _ => {
                let url = if endpoint.contains("://") {
                    endpoint.to_owned()
                } else {
                    format!("http://{endpoint}")
                };
                let mut metadata = http::HeaderMap::new();
                for (name, value) in &config.headers {
                    let name = http::HeaderName::try_from(name.as_str())
                        .map_err(|_| format!("headers: {name:?} is not a header name"))?;
                    let value = http::HeaderValue::try_from(value.as_str()).map_err(|_| {
                        format!("headers: the value of {name} is not a header value")
                    })?;
                    metadata.insert(name, value);
                }
                opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(url)
                    .with_timeout(timeout)
                    .with_metadata(tonic::metadata::MetadataMap::from_headers(metadata))
                    .build()
            }
        }
        .map_err(|e| e.to_string())?;
        let batching = &config.span_batch_config;
        let or = |value: usize, default: usize| if value == 0 { default } else { value };
        let bound = or(batching.max_queue_size, DEFAULT_QUEUE);
        let (per_export, wait) = if config.span_processor_type == "simple" {
            (1, Duration::from_millis(1))
        } else {
            let timeout = match batching.batch_timeout {
                0 => DEFAULT_BATCH_TIMEOUT_SECS,
                secs => secs,
            };
            (
                or(batching.max_export_batch_size, DEFAULT_BATCH).min(bound),
                Duration::from_secs(timeout),
            )
        };
        let queue = Arc::new(SpanQueue {
            bound,
            pending: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        });
        let exporter = ReleasingExporter {
            queue: queue.clone(),
            next: exporter,
        };
        let processor = BoundedProcessor {
            queue: queue.clone(),
            next: BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio)
                .with_batch_config(
                    BatchConfigBuilder::default()
                        .with_max_queue_size(bound)
                        .with_max_export_batch_size(per_export)
                        .with_scheduled_delay(wait)
                        .build(),
                )
                .build(),
        };
        let sampling = &config.sampling;
        let sampler = match sampling.kind.as_str() {
            "AlwaysOff" => Sampler::AlwaysOff,
            "TraceIDRatioBased" => Sampler::TraceIdRatioBased(sampling.rate),
            _ => Sampler::AlwaysOn,
        };
        let sampler = if sampling.parent_based {
            Sampler::ParentBased(Box::new(sampler))
        } else {
            sampler
        };
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(config.resource_name.clone())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(sampler)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("tollgate");
        Ok(Self {
            _provider: provider,
            tracer,
            propagator: TraceContextPropagator::new(),
            queue,
            _exporter_thread: stop,
        })
    }

    /// Spans dropped so far: the queue was full, or the receiver did not take them.
    pub fn dropped_spans(&self) -> u64 {
        self.queue.dropped.load(Relaxed)
    }

    /// The request's server span, the client's `traceparent` (in `headers`) its parent.
    pub fn begin(&self, headers: &HeaderMap, method: &str, name: String) -> RequestTrace {
        let parent = self.propagator.extract(&HeaderExtractor(headers));
        let span = SpanBuilder::from_name(name)
            .with_kind(SpanKind::Server)
            .with_start_time(SystemTime::now())
            .with_attributes([KeyValue::new("http.request.method", method.to_owned())])
            .start_with_context(&self.tracer, &parent);
        let context = Context::new().with_remote_span_context(span.span_context().clone());
        RequestTrace { span, context }
    }

    /// The request's trace id, as 32 hex digits.
    pub fn trace_id(trace: &RequestTrace) -> String {
        trace.span.span_context().trace_id().to_string()
    }

    /// A finished step of the request, as a child of its span.
    pub fn step(&self, trace: &RequestTrace, name: &'static str, step: Step) {
        let mut span = SpanBuilder::from_name(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(step.began)
            .start_with_context(&self.tracer, &trace.context);
        span.end_with_timestamp(step.ended);
    }

    /// The upstream call's span, begun now; its context goes upstream in `traceparent`.
    pub fn upstream_call(
        &self,
        trace: &RequestTrace,
        target: &str,
        headers: &mut HeaderMap,
    ) -> opentelemetry_sdk::trace::Span {
        let span = SpanBuilder::from_name("upstream")
            .with_kind(SpanKind::Client)
            .with_attributes([KeyValue::new("server.address", target.to_owned())])
            .start_with_context(&self.tracer, &trace.context);
        let context = Context::new().with_remote_span_context(span.span_context().clone());
        self.propagator
            .inject_context(&context, &mut HeaderInjector(headers));
        span
    }

    /// Ends the request's span with what it answered.
    pub fn end(&self, mut trace: RequestTrace, api_id: &str, status: u16) {
        trace.span.set_attributes([
            KeyValue::new("tyk.api.id", api_id.to_owned()),
            KeyValue::new("http.response.status_code", i64::from(status)),
        ]);
        if status >= 500 {
            trace.span.set_status(Status::error(""));
        }
        trace.span.end();
    }
}
