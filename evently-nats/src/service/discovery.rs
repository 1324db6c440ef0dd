//! Discovery: a service's running instances and their health, from the
//! NATS services API.

use std::time::Duration;

use async_nats::service;
use bytes::Bytes;
use futures::StreamExt;
use serde::de::DeserializeOwned;

use super::ServeError;

/// One running instance of a service, as discovery finds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// The instance's id.
    pub id: String,
    /// The service's version on it.
    pub version: String,
    /// Its endpoints: (name, subject).
    pub endpoints: Vec<(String, String)>,
    /// Requests it has handled, over all endpoints.
    pub requests: usize,
    /// Of those, the ones answered with an error.
    pub errors: usize,
    /// Time spent handling them.
    pub processing_time: Duration,
}

/// Finds the running instances of the service `name` and their health
/// (`$SRV.INFO.<name>` and `$SRV.STATS.<name>`, answers collected for
/// `wait`). An empty list: no instance answered.
pub async fn discover(
    client: &async_nats::Client,
    name: &str,
    wait: Duration,
) -> Result<Vec<Instance>, ServeError> {
    let infos: Vec<service::Info> = gather(client, &format!("$SRV.INFO.{name}"), wait).await?;
    let stats: Vec<service::Stats> = gather(client, &format!("$SRV.STATS.{name}"), wait).await?;
    let mut instances: Vec<Instance> = infos
        .into_iter()
        .map(|info| {
            let mine = stats.iter().find(|s| s.id == info.id);
            Instance {
                id: info.id.clone(),
                version: info.version,
                endpoints: info
                    .endpoints
                    .into_iter()
                    .map(|e| (e.name, e.subject))
                    .collect(),
                requests: mine.map_or(0, |s| s.endpoints.iter().map(|e| e.requests).sum()),
                errors: mine.map_or(0, |s| s.endpoints.iter().map(|e| e.errors).sum()),
                processing_time: mine.map_or(Duration::ZERO, |s| {
                    s.endpoints.iter().map(|e| e.processing_time).sum()
                }),
            }
        })
        .collect();
    instances.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(instances)
}

/// Sends an empty request to `subject` and decodes every reply that comes
/// within `wait`.
async fn gather<T: DeserializeOwned>(
    client: &async_nats::Client,
    subject: &str,
    wait: Duration,
) -> Result<Vec<T>, ServeError> {
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| ServeError(e.to_string()))?;
    client
        .publish_with_reply(subject.to_owned(), inbox, Bytes::new())
        .await
        .map_err(|e| ServeError(e.to_string()))?;
    client
        .flush()
        .await
        .map_err(|e| ServeError(e.to_string()))?;
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, replies.next()).await {
        match serde_json::from_slice(&message.payload) {
            Ok(value) => out.push(value),
            Err(e) => tracing::debug!(error = %e, subject, "an unreadable discovery reply"),
        }
    }
    Ok(out)
}
