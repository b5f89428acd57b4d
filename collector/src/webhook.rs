//! The alert webhook: every [`AlertChange`] is POSTed as JSON to one URL, in order, from a
//! tokio task fed by a bounded queue. The collector only offers changes to the queue and never
//! waits: a full queue drops the newest change and counts it. A failed POST is retried with
//! backoff (0.5 s doubling to 10 s) until it succeeds, so a receiver that is down and comes back
//! gets every change that fit the queue, each once.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::mpsc;

use crate::rules::AlertChange;

/// Changes the queue holds when the configuration does not say.
pub const DEFAULT_QUEUE: usize = 1000;
/// The first retry waits this long; each next one twice as long, up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait between retries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long one POST may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of the webhook.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The URL does not parse.
    #[error("webhook URL: expected http://HOST[:PORT]/PATH")]
    Url(#[source] url::ParseError),
    /// The URL is not plain HTTP.
    #[error("webhook URL: scheme {0:?} is not supported (plain http only: this build has no TLS)")]
    Scheme(String),
    /// The queue was given no room.
    #[error("webhook-queue must hold at least one change")]
    EmptyQueue,
    /// The HTTP client could not be built.
    #[error("building the webhook's HTTP client")]
    Client(#[source] reqwest::Error),
}

/// The webhook's URL. Displayed without user, password or query, which may carry a token.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl(reqwest::Url);

impl WebhookUrl {
    /// Parses an `http://` URL.
    pub fn parse(value: &str) -> Result<Self, WebhookError> {
        let url = reqwest::Url::parse(value).map_err(WebhookError::Url)?;
        if url.scheme() != "http" {
            return Err(WebhookError::Scheme(url.scheme().to_owned()));
        }
        Ok(Self(url))
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = self.0.host_str().unwrap_or_default();
        match self.0.port() {
            Some(port) => write!(f, "{}://{host}:{port}{}", self.0.scheme(), self.0.path()),
            None => write!(f, "{}://{host}{}", self.0.scheme(), self.0.path()),
        }
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookUrl({self})")
    }
}

/// What the webhook did, for `/metrics`.
#[derive(Debug, Default)]
pub struct WebhookStats {
    sent: AtomicU64,
    failed_attempts: AtomicU64,
    rejected: AtomicU64,
    dropped: AtomicU64,
    warned_full: AtomicBool,
}

impl WebhookStats {
    /// Changes the receiver accepted (2xx).
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// POSTs that failed and were retried (no connection, timeout, 5xx, 429).
    pub fn failed_attempts(&self) -> u64 {
        self.failed_attempts.load(Ordering::Relaxed)
    }

    /// Changes the receiver refused with a 4xx other than 429: not retried.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Changes dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The collector's end of the queue: [`WebhookQueue::offer`] never blocks.
#[derive(Clone, Debug)]
pub struct WebhookQueue {
    sender: mpsc::Sender<AlertChange>,
    stats: Arc<WebhookStats>,
}

impl WebhookQueue {
    /// Queues `change` for the webhook; drops it (and counts it) when the queue is full.
    pub fn offer(&self, change: AlertChange) {
        if self.sender.try_send(change).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            if !self.stats.warned_full.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "the webhook queue is full: alert changes are dropped \
                     (wgtel_webhook_dropped_total counts them)"
                );
            }
        }
    }
}

/// Starts the delivery task (on the current tokio runtime) for `url` with room for `capacity`
/// changes; the queue to offer changes to, and the task's record.
pub fn start(
    url: WebhookUrl,
    capacity: usize,
) -> Result<(WebhookQueue, Arc<WebhookStats>), WebhookError> {
    if capacity == 0 {
        return Err(WebhookError::EmptyQueue);
    }
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(WebhookError::Client)?;
    let (sender, receiver) = mpsc::channel(capacity);
    let stats = Arc::new(WebhookStats::default());
    tokio::spawn(deliver(client, url, receiver, Arc::clone(&stats)));
    Ok((WebhookQueue { sender, stats: Arc::clone(&stats) }, stats))
}

/// How one POST ended.
enum Outcome {
    Sent,
    Retry(String),
    Rejected(reqwest::StatusCode),
}

/// POSTs each queued change until it is accepted or refused, in order.
async fn deliver(
    client: reqwest::Client,
    url: WebhookUrl,
    mut receiver: mpsc::Receiver<AlertChange>,
    stats: Arc<WebhookStats>,
) {
    let mut failing = false;
    while let Some(change) = receiver.recv().await {
        let body = match serde_json::to_vec(&change) {
            Ok(body) => body,
            Err(error) => {
                log::warn!("webhook: cannot encode alert change {}: {error}", change.sequence);
                continue;
            }
        };
        let mut backoff = FIRST_BACKOFF;
        loop {
            match post(&client, &url, body.clone()).await {
                Outcome::Sent => {
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                    if failing {
                        log::info!("webhook {url}: delivering again");
                        failing = false;
                    }
                    break;
                }
                Outcome::Rejected(status) => {
                    stats.rejected.fetch_add(1, Ordering::Relaxed);
                    log::warn!(
                        "webhook {url} refused alert change {} with {status}: not retried",
                        change.sequence
                    );
                    break;
                }
                Outcome::Retry(reason) => {
                    stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    if !failing {
                        log::warn!("webhook {url}: {reason}; retrying with backoff up to 10 s");
                        failing = true;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

async fn post(client: &reqwest::Client, url: &WebhookUrl, body: Vec<u8>) -> Outcome {
    let response = client
        .post(url.0.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    match response {
        Ok(response) if response.status().is_success() => Outcome::Sent,
        Ok(response)
            if response.status().is_client_error()
                && response.status() != reqwest::StatusCode::TOO_MANY_REQUESTS =>
        {
            Outcome::Rejected(response.status())
        }
        Ok(response) => Outcome::Retry(format!("answered {}", response.status())),
        // reqwest's errors name the URL with its query: say only what kind of failure it was.
        Err(error) if error.is_timeout() => Outcome::Retry("timed out".into()),
        Err(error) if error.is_connect() => Outcome::Retry("cannot connect".into()),
        Err(_) => Outcome::Retry("request failed".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_plain_http_and_shown_without_query_or_password() {
        let url = WebhookUrl::parse("http://user:secret@hooks.example:8080/alerts?token=s3cr3t")
            .expect("a URL");
        assert_eq!(url.to_string(), "http://hooks.example:8080/alerts");
        assert!(!format!("{url:?}").contains("s3cr3t"));
        assert!(matches!(WebhookUrl::parse("https://x/"), Err(WebhookError::Scheme(_))));
        assert!(matches!(WebhookUrl::parse("not a url"), Err(WebhookError::Url(_))));
    }

    #[test]
    fn a_full_queue_drops_the_newest_change_and_counts_it() {
        let (sender, mut receiver) = mpsc::channel(2);
        let stats = Arc::new(WebhookStats::default());
        let queue = WebhookQueue { sender, stats: Arc::clone(&stats) };
        let change = |sequence| AlertChange {
            sequence,
            status: crate::rules::AlertStatus::Firing,
            at: 1.0,
            alert: crate::rules::Alert {
                rule: crate::rules::Rule::CpuSaturated,
                interface: None,
                peer: None,
                name: None,
                since: 1.0,
                value: 0.95,
                detail: String::new(),
            },
        };
        for sequence in 1..=4 {
            queue.offer(change(sequence));
        }
        assert_eq!(stats.dropped(), 2);
        let kept: Vec<u64> =
            std::iter::from_fn(|| receiver.try_recv().ok()).map(|c| c.sequence).collect();
        assert_eq!(kept, [1, 2], "the oldest stay, in order");
    }
}
